"""Teacher signals: the one currency that teachers hand to losses.

PURE module: imports only torch, math and the standard library.

Two shapes of signal exist:

* :class:`DenseSignal` -- full log-probabilities ``(..., V)`` over the vocabulary.
* :class:`SparseSignal` -- kept token ids ``(..., K)``, their log-probabilities ``(..., K)``
  and the log of the probability mass *outside* the kept ids ``(...)`` (the "tail bucket").

Both record the temperature they were made at (``made_at_temperature``), so a loss can
re-temper them to the training ``kd_temperature``. All values are fp32 log-probabilities.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

NEG_INF = float("-inf")


def fp32_or_wider(x: torch.Tensor) -> torch.Tensor:
    """Soft-label math runs in fp32 (or fp64 when given fp64, e.g. for gradcheck)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _check_temperature(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}; pass e.g. {name}=1.0")


@dataclass(frozen=True)
class DenseSignal:
    """Full teacher log-probabilities.

    Attributes:
        logprobs: ``(..., V)`` fp32 log-probabilities, normalised over the last dim.
        made_at_temperature: the temperature ``T0`` the teacher logits were divided by.
    """

    logprobs: torch.Tensor
    made_at_temperature: float = 1.0

    def __post_init__(self) -> None:
        _check_temperature("made_at_temperature", self.made_at_temperature)

    @classmethod
    def from_logits(cls, logits: torch.Tensor, temperature: float = 1.0) -> DenseSignal:
        """Build from raw logits ``(..., V)``: ``log_softmax(logits / T)`` in fp32."""
        _check_temperature("temperature", temperature)
        return cls(
            torch.log_softmax(fp32_or_wider(logits) / temperature, dim=-1), float(temperature)
        )

    @property
    def vocab_size(self) -> int:
        return self.logprobs.shape[-1]

    def at_temperature(self, temperature: float) -> torch.Tensor:
        """Log-probs ``(..., V)`` re-tempered exactly from ``T0`` to ``temperature``.

        ``log p_T0 = z/T0 - c``, hence ``log_softmax(log p_T0 * T0 / T) = log_softmax(z / T)``.
        """
        _check_temperature("temperature", temperature)
        if temperature == self.made_at_temperature:
            return fp32_or_wider(self.logprobs)
        scaled = fp32_or_wider(self.logprobs) * (self.made_at_temperature / temperature)
        return torch.log_softmax(scaled, dim=-1)


@dataclass(frozen=True)
class SparseSignal:
    """A sparse teacher distribution: kept ids, their log-probs and the tail mass.

    Attributes:
        ids: ``(..., K)`` int64 token ids. A negative id marks an unused slot (its log-prob
            must be ``-inf``); kept ids within one position must be distinct.
        logprobs: ``(..., K)`` fp32 log-probabilities of the kept ids.
        log_tail: ``(...)`` fp32 log of the probability mass on all ids *not* kept
            (``-inf`` when the kept ids carry all the mass).
        vocab_size: V, the size of the full vocabulary.
        made_at_temperature: the temperature the teacher logits were divided by.
    """

    ids: torch.Tensor
    logprobs: torch.Tensor
    log_tail: torch.Tensor
    vocab_size: int
    made_at_temperature: float = 1.0

    def __post_init__(self) -> None:
        _check_temperature("made_at_temperature", self.made_at_temperature)
        if self.ids.shape != self.logprobs.shape:
            raise ValueError(
                f"SparseSignal ids {tuple(self.ids.shape)} and logprobs "
                f"{tuple(self.logprobs.shape)} must have the same shape"
            )
        if self.log_tail.shape != self.ids.shape[:-1]:
            raise ValueError(
                f"SparseSignal log_tail must have shape {tuple(self.ids.shape[:-1])}, "
                f"got {tuple(self.log_tail.shape)}"
            )
        if self.ids.shape[-1] > self.vocab_size:
            raise ValueError(
                f"SparseSignal keeps {self.ids.shape[-1]} ids but vocab_size is {self.vocab_size}"
            )

    @property
    def k(self) -> int:
        return self.ids.shape[-1]

    @classmethod
    def from_logprobs_topk(cls, logprobs: torch.Tensor, k: int, temperature: float = 1.0):
        """Keep the ``k`` most likely ids of dense log-probs ``(..., V)``; the rest is the tail."""
        vocab = logprobs.shape[-1]
        if not 1 <= k <= vocab:
            raise ValueError(f"k must be in [1, {vocab}], got {k}")
        lp = fp32_or_wider(logprobs)
        top_lp, top_ids = torch.topk(lp, k, dim=-1)
        if k == vocab:
            log_tail = torch.full(top_lp.shape[:-1], NEG_INF, dtype=top_lp.dtype)
        else:
            # exact: logsumexp over the dropped ids (1 - sum(kept) rounds to 0 when peaky)
            dropped = lp.scatter(-1, top_ids, NEG_INF)
            log_tail = torch.logsumexp(dropped, dim=-1)
        return cls(top_ids, top_lp, log_tail.to(top_lp.device), vocab, float(temperature))

    @classmethod
    def from_logits_topk(cls, logits: torch.Tensor, k: int, temperature: float = 1.0):
        """Top-``k`` sparse signal from raw logits ``(..., V)`` at ``temperature``."""
        _check_temperature("temperature", temperature)
        lp = torch.log_softmax(fp32_or_wider(logits) / temperature, dim=-1)
        return cls.from_logprobs_topk(lp, k, temperature)

    def to_dense(self) -> torch.Tensor:
        """Dense log-probs ``(..., V)``; the tail is spread uniformly over the ids not kept."""
        valid = self.ids >= 0
        dtype = fp32_or_wider(self.logprobs).dtype
        n_tail = (self.vocab_size - valid.sum(-1)).clamp_min(1).to(dtype)
        tail_each = fp32_or_wider(self.log_tail) - torch.log(n_tail)
        shape = (*self.ids.shape[:-1], self.vocab_size + 1)
        out = tail_each.unsqueeze(-1).expand(shape).clone()
        # unused slots (negative ids) are scattered into a spare column V, then dropped
        index = torch.where(valid, self.ids, torch.full_like(self.ids, self.vocab_size))
        out.scatter_(-1, index, fp32_or_wider(self.logprobs))
        return out[..., : self.vocab_size]

    def at_temperature(self, temperature: float) -> SparseSignal:
        """Re-temper from ``T0`` to ``temperature`` (``p -> p^(T0/T)``, renormalised).

        Kept ids are re-tempered exactly relative to one another. The tail's internal shape is
        unknown, so it is modelled as spread uniformly over the ``V - K`` ids not kept (the
        maximum-entropy assumption); with no tail (all mass kept) the result is exact.
        """
        _check_temperature("temperature", temperature)
        if temperature == self.made_at_temperature:
            return self
        a = self.made_at_temperature / temperature
        valid = self.ids >= 0
        n_tail = (self.vocab_size - valid.sum(-1)).to(fp32_or_wider(self.logprobs).dtype)
        kept = fp32_or_wider(self.logprobs) * a
        has_tail = (n_tail > 0) & torch.isfinite(self.log_tail)
        safe_n = n_tail.clamp_min(1.0)
        tail = torch.where(
            has_tail,
            (fp32_or_wider(self.log_tail) - torch.log(safe_n)) * a + torch.log(safe_n),
            NEG_INF,
        )
        log_z = torch.logsumexp(torch.cat([kept, tail.unsqueeze(-1)], dim=-1), dim=-1)
        return SparseSignal(
            self.ids,
            kept - log_z.unsqueeze(-1),
            tail - log_z,
            self.vocab_size,
            float(temperature),
        )


TeacherSignal = DenseSignal | SparseSignal
