"""The Teacher protocol: every way of getting the teacher's knowledge is one object with one
method, ``signal(batch, want=...) -> TeacherSignal | None``.

The trainer asks its teacher once per micro-batch and never knows which kind it has: a model
in memory (:class:`~kdistill.teachers.model.ModelTeacher`), the on-disk store
(:class:`~kdistill.teachers.store.StoreTeacher`), recorded API log-probs
(:class:`~kdistill.teachers.recorded.RecordedTeacher`) or none (:class:`NoTeacher`, the
baseline). New kinds (a served scorer, an aligner across tokenizers, an assistant in a chain)
implement the same method; :func:`register_teacher_kind` makes them nameable in configs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

import torch

from kdistill.losses.cross_vocab import CrossVocabTeacher, SortedSignal
from kdistill.signals import SparseSignal

EXAMPLE_INDEX = "example_index"  # (B,) int64: which training examples the batch holds


@dataclass(frozen=True)
class Want:
    """What the loss asks of the teacher for one micro-batch.

    ``form``: ``"logits"`` for dense logits ``(B, L, V)``; ``"hidden"`` for the final hidden
    states ``(B, L, H)`` plus the output head, from which the chunked loss makes logits a
    chunk at a time. A teacher that only has sparse targets returns those whatever the form.
    ``layers``: indices into ``hidden_states`` wanted as well (intermediate-layer terms).
    ``kd_temperature``: the step's temperature, for targets that cannot be re-tempered once
    made (a teacher over another vocabulary builds them at it).
    """

    form: Literal["logits", "hidden"] = "logits"
    layers: tuple[int, ...] = ()
    kd_temperature: float = 1.0


@dataclass
class TeacherSignal:
    """What a teacher hands the loss for one micro-batch (each field optional).

    Attributes:
        logits: ``(B, L, V)`` raw logits (``want.form == "logits"``).
        hidden: ``(B, L, H)`` final hidden states (after the final norm), with
            ``head_weight`` ``(V, H)`` and ``head_bias`` ``(V,)`` or None.
        sparse: a :class:`SparseSignal` of shape ``(B, L, K)`` (store, recorded log-probs),
            made at its own temperature; row ``p`` targets the logits at position ``p``.
        layers: ``{k: (B, L, H)}`` hidden states asked for in ``want.layers``.
        valid: ``(B, L)`` bool, the positions the teacher gave a target for (a served scorer
            may miss some); None: all.
        valid_for: ``"all"``: the loss skips the other positions entirely; ``"soft"``: they
            keep their hard CE (a teacher over another tokenizer aligns only some positions,
            the student's own tokens are labels everywhere).
        cross: a teacher over another vocabulary as hidden states + head, one row per
            position ``(B * L, H_t)`` (``want.form == "hidden"``), targets made per chunk.
        sorted: ``(B, L, R)`` sorted teacher probabilities for ULD (another vocabulary).
    """

    logits: torch.Tensor | None = None
    hidden: torch.Tensor | None = None
    head_weight: torch.Tensor | None = None
    head_bias: torch.Tensor | None = None
    sparse: SparseSignal | None = None
    layers: dict[int, torch.Tensor] = field(default_factory=dict)
    valid: torch.Tensor | None = None
    valid_for: Literal["all", "soft"] = "all"
    cross: CrossVocabTeacher | None = None
    sorted: SortedSignal | None = None


@runtime_checkable
class Teacher(Protocol):
    def signal(self, batch: Mapping[str, torch.Tensor], *, want: Want) -> TeacherSignal | None:
        """The teacher's knowledge about ``batch`` (model inputs + ``example_index``)."""
        ...


class NoTeacher:
    """The no-teacher baseline: there is nothing to distil, only hard labels."""

    def signal(self, batch, *, want: Want) -> None:
        return None


def pad_sparse(
    rows: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    length: int,
    vocab_size: int,
    temperature: float,
) -> SparseSignal:
    """Per-example sparse targets ``(n_i, k_i)`` padded into one ``(B, length, K)`` signal:
    unused slots get id -1 and log-prob -inf, positions past an example's end a -inf tail."""
    b = len(rows)
    k = max(r[0].shape[-1] for r in rows)
    ids = torch.full((b, length, k), -1, dtype=torch.long)
    lp = torch.full((b, length, k), float("-inf"))
    tail = torch.full((b, length), float("-inf"))
    for r, (r_ids, r_lp, r_tail) in enumerate(rows):
        n, kk = r_ids.shape
        ids[r, :n, :kk] = r_ids
        lp[r, :n, :kk] = r_lp
        tail[r, :n] = r_tail
    return SparseSignal(ids, lp, tail, vocab_size, temperature)


def to_device(sig: SparseSignal, device) -> SparseSignal:
    """``sig`` on ``device`` (itself when it is there already)."""
    if sig.ids.device == device:
        return sig
    return SparseSignal(
        sig.ids.to(device),
        sig.logprobs.to(device),
        sig.log_tail.to(device),
        sig.vocab_size,
        sig.made_at_temperature,
    )


@dataclass(frozen=True)
class TeacherKind:
    """How to build one kind of teacher from the config's ``teacher`` section.

    ``factory(settings, *, model, tokenizer, dataset, vocab_size) -> Teacher``: ``settings``
    is the section as plain values; ``model`` the loaded teacher model (None unless
    ``needs_model``); ``dataset`` the training examples (indexed as ``example_index``).
    """

    factory: Callable[..., Teacher]
    needs_model: bool = False


TEACHER_KINDS: dict[str, TeacherKind] = {}


def register_teacher_kind(
    name: str, factory: Callable[..., Teacher], *, needs_model: bool = False
) -> None:
    """Make a teacher kind buildable by name (also from code outside kdistill); its settings
    are registered with :func:`kdistill.config.teacher_specs.register_teacher_spec`."""
    TEACHER_KINDS[name] = TeacherKind(factory, needs_model)


register_teacher_kind("none", lambda settings, **_: NoTeacher())
