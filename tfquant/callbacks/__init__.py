"""Schedules: Keras callbacks that only assign quantizer variables between batches/epochs.

`PhaseAdaptation` (MPA, seed 002), `IntervalContraction` (MVQ, seed 000), `PartitionRounds`
(SLQ, seed 001) and `IncrementalLayers` (MLQ, seed 001); `GradualPruning` widens the zero
interval of snap-mode layers along Zhu & Gupta's polynomial schedule.
"""

from tfquant.callbacks.interval_contraction import IntervalContraction
from tfquant.callbacks.phase_adaptation import PhaseAdaptation
from tfquant.callbacks.pruning import GradualPruning
from tfquant.callbacks.rounds import IncrementalLayers, PartitionRounds

__all__ = [
    "PhaseAdaptation",
    "IntervalContraction",
    "PartitionRounds",
    "IncrementalLayers",
    "GradualPruning",
]
