"""String options as `(str, Enum)`: users write `"kmeans"`, typos get the list of valid names."""

import enum


class _Option(str, enum.Enum):
    @classmethod
    def parse(cls, value, argument):
        """Returns the member named by `value` or raises a ValueError naming `argument`."""
        if isinstance(value, cls):
            return value
        try:
            return cls(str(value).lower()) if isinstance(value, str) else cls(value)
        except ValueError:
            valid = ", ".join(repr(m.value) for m in cls)
            raise ValueError(
                f"{argument} must be one of {valid}. Received: {argument}={value!r}"
            ) from None

    def __str__(self):
        return self.value


class Division(_Option):
    """How a layer's weight range is divided into codebook centers (MPA seed 002, Sec. Division).

    `kmeans`: exact optimal 1-D k-means (Eq. 9). `linear`: centers evenly spaced between 0 and
    the mean of |min| and |max|, mirrored. `exponential`: the same maximum, halved repeatedly.
    `hessian_kmeans`: k-means weighted by the loss Hessian's diagonal (Choi et al., seed 003).
    `ecsq`: entropy-constrained scalar quantization (Choi et al.): uniform start, then a
    Lloyd-like iteration on distortion + λ · code length.
    """

    KMEANS = "kmeans"
    LINEAR = "linear"
    EXPONENTIAL = "exponential"
    HESSIAN_KMEANS = "hessian_kmeans"
    ECSQ = "ecsq"


class Mode(_Option):
    """How a multivalued quantizer treats weights that are not frozen.

    `auto` (the default): `snap` until a schedule (`tfq.callbacks.PhaseAdaptation`,
    `IntervalContraction`, `PartitionRounds`, `IncrementalLayers`) starts on the model; from
    then on `masked`, the mode the schedule needs.
    `snap`: every weight snaps to its nearest center from the first step (naive quantization,
    the baseline); a schedule refuses such a layer.
    `masked`: only weights in the frozen mask snap; the others pass through in full precision
    (used by the schedules, which grow the mask).
    """

    AUTO = "auto"
    SNAP = "snap"
    MASKED = "masked"


class TernaryMethod(_Option):
    """Ternary method: `twn` (Ternary Weight Networks, Li et al.) or `ttq` (Trained Ternary
    Quantization, Zhu et al.)."""

    TWN = "twn"
    TTQ = "ttq"


class Structure(_Option):
    """What `tfq.callbacks.GradualPruning` prunes: single weights by magnitude (`weight`), or
    whole output channels of Conv2D / DepthwiseConv2D and units of Dense by the L2 norm of
    their kernel slice (`channel`), which `tfq.shrink` then removes."""

    WEIGHT = "weight"
    CHANNEL = "channel"
