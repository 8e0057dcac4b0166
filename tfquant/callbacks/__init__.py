"""Schedules: Keras callbacks that only assign quantizer variables between batches/epochs.

The MPA / MVQ / SLQ / MLQ schedules land with the schedules issue; the quantizers already
carry the variables (centers, frozen mask) they assign.
"""

__all__ = []
