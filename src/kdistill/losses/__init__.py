"""PURE: divergences, sparse bucketing and the KD objective (sums + counts, one divide)."""

from kdistill.losses.divergences import DIVERGENCES, get_divergence
from kdistill.losses.objective import KDSums, combine, kd_loss, kd_sums

__all__ = ["DIVERGENCES", "KDSums", "combine", "get_divergence", "kd_loss", "kd_sums"]
