"""PURE: sparsify teacher distributions (top-k, sampled, top-p) and encode them compactly."""

from kdistill.softlabels.encoding import EncodedPositions, decode_positions, encode_positions
from kdistill.softlabels.sparsify import SparseRows, sampled_rows, signal_rows, topk_rows

__all__ = [
    "EncodedPositions",
    "SparseRows",
    "decode_positions",
    "encode_positions",
    "sampled_rows",
    "signal_rows",
    "topk_rows",
]
