"""Schedules: Keras callbacks that only assign quantizer variables between batches/epochs.

`PhaseAdaptation` (MPA, seed 002). The MVQ / SLQ / MLQ schedules are in progress.
"""

from tfquant.callbacks.phase_adaptation import PhaseAdaptation

__all__ = ["PhaseAdaptation"]
