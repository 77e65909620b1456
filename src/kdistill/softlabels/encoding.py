"""Compact encoding of CSR sparse targets (PURE: torch, math, stdlib).

Per position: ``lengths`` (1 byte), ``log_tail`` (fp16, 2 bytes; omitted for ``count8``).
Per kept id: the id in ``ceil(log2 V)`` bits (bit-packed), and a value:

* ``logprob8``  log-prob quantised to 8 bits on ``[-LOGPROB_FLOOR, 0]`` (step 0.078 nats);
* ``logprob16`` log-prob as fp16;
* ``count8``    the sample count (exact; ``sampled`` method, n <= 255).

Decoding renormalises kept ids + tail to sum to 1, so quantisation never yields an
unnormalised teacher.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from kdistill.softlabels.sparsify import SparseRows

LOGPROB_FLOOR = 20.0
VALUE_KINDS = ("logprob8", "logprob16", "count8")


def id_bits_for(vocab_size: int) -> int:
    return max(1, math.ceil(math.log2(vocab_size)))


def pack_bits(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack non-negative ints ``(M,)`` < 2**bits into a uint8 byte string."""
    shifts = torch.arange(bits, dtype=torch.int64)
    bitmat = ((values.long().unsqueeze(-1) >> shifts) & 1).reshape(-1)
    pad = (-bitmat.numel()) % 8
    if pad:
        bitmat = torch.cat([bitmat, torch.zeros(pad, dtype=torch.int64)])
    weights = 1 << torch.arange(8, dtype=torch.int64)
    return (bitmat.view(-1, 8) * weights).sum(-1).to(torch.uint8)


def unpack_bits(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: ``count`` int64 values."""
    shifts = torch.arange(8, dtype=torch.int64)
    bitmat = ((packed.long().unsqueeze(-1) >> shifts) & 1).reshape(-1)[: count * bits]
    weights = 1 << torch.arange(bits, dtype=torch.int64)
    return (bitmat.view(count, bits) * weights).sum(-1)


@dataclass
class EncodedPositions:
    lengths: torch.Tensor  # (P,) uint8
    ids: torch.Tensor  # packed uint8
    values: torch.Tensor  # (M,) uint8 | float16
    log_tail: torch.Tensor  # (P,) float16, empty for count8
    id_bits: int
    value_kind: str
    n_samples: int = 0

    def nbytes(self) -> int:
        return sum(
            t.numel() * t.element_size()
            for t in (self.lengths, self.ids, self.values, self.log_tail)
        )

    def tensors(self) -> dict[str, torch.Tensor]:
        return {
            "lengths": self.lengths,
            "ids": self.ids,
            "values": self.values,
            "log_tail": self.log_tail,
        }


def encode_positions(rows: SparseRows, vocab_size: int, value_kind: str) -> EncodedPositions:
    if value_kind not in VALUE_KINDS:
        raise ValueError(f"value encoding must be one of {', '.join(VALUE_KINDS)}")
    if rows.lengths.numel() and int(rows.lengths.max()) > 255:
        raise ValueError("at most 255 kept ids per position")
    bits = id_bits_for(vocab_size)
    if value_kind == "count8":
        if rows.counts is None:
            raise ValueError("count8 encoding needs sampled targets (method: sampled)")
        values = rows.counts.to(torch.uint8)
        tail = torch.empty(0, dtype=torch.float16)
    elif value_kind == "logprob8":
        q = (-rows.logprobs.float() / LOGPROB_FLOOR * 255).round().clamp(0, 255)
        values = q.to(torch.uint8)
        tail = rows.log_tail.to(torch.float16)
    else:
        values = rows.logprobs.float().clamp(min=-60000).to(torch.float16)
        tail = rows.log_tail.to(torch.float16)
    return EncodedPositions(
        rows.lengths.to(torch.uint8),
        pack_bits(rows.ids, bits),
        values,
        tail,
        bits,
        value_kind,
        int(rows.n_samples or 0),
    )


def decode_positions(enc: EncodedPositions) -> SparseRows:
    lengths = enc.lengths.long()
    m = int(lengths.sum())
    ids = unpack_bits(enc.ids, enc.id_bits, m)
    if enc.value_kind == "count8":
        counts = enc.values.long()
        n = enc.n_samples
        logp = torch.log(counts.float() / n)
        return SparseRows(lengths, ids, logp, torch.full(lengths.shape, float("-inf")), counts, n)
    if enc.value_kind == "logprob8":
        logp = -enc.values.float() * (LOGPROB_FLOOR / 255)
    else:
        logp = enc.values.float()
    tail = enc.log_tail.float()
    # renormalise each position: logsumexp over its kept ids and its tail
    rows_idx = torch.repeat_interleave(torch.arange(lengths.numel()), lengths)
    mx = torch.full((lengths.numel(),), float("-inf"))
    mx = mx.scatter_reduce(0, rows_idx, logp, "amax", include_self=True)
    mx = torch.maximum(mx, tail)
    z = torch.zeros(lengths.numel()).index_add_(0, rows_idx, (logp - mx[rows_idx]).exp())
    z = z + torch.where(torch.isfinite(tail), (tail - mx).exp(), torch.zeros_like(tail))
    log_z = mx + torch.log(z)
    # a position that kept nothing has no target (a served teacher's unscored position)
    tail = torch.where(lengths > 0, tail - log_z, torch.full_like(tail, float("-inf")))
    return SparseRows(lengths, ids, logp - log_z[rows_idx], tail)
