"""Schedules: Keras callbacks that only assign quantizer variables between batches/epochs.

`PhaseAdaptation` (MPA, seed 002), `PartitionRounds` (SLQ, seed 001) and `IncrementalLayers`
(MLQ, seed 001). The MVQ interval contraction schedule is in progress.
"""

from tfquant.callbacks.phase_adaptation import PhaseAdaptation
from tfquant.callbacks.rounds import IncrementalLayers, PartitionRounds

__all__ = ["PhaseAdaptation", "PartitionRounds", "IncrementalLayers"]
