"""PURE: divergences, sparse bucketing, the KD objective (sums + counts, one divide) and its
memory-bounded chunked variant."""

from kdistill.losses.chunked import chunked_kd_loss
from kdistill.losses.divergences import DIVERGENCES, get_divergence
from kdistill.losses.objective import KDSums, combine, kd_loss, kd_sums

__all__ = [
    "DIVERGENCES",
    "KDSums",
    "chunked_kd_loss",
    "combine",
    "get_divergence",
    "kd_loss",
    "kd_sums",
]
