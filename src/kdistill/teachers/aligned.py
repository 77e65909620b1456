"""A teacher with its own tokenizer: ``teacher.kind: aligned`` (cross-tokenizer KD).

Each micro-batch row (the student's tokens) is turned back into text, tokenised by the
teacher's tokenizer (:class:`~kdistill.data.alignment.TextAligner`) and run through the
teacher. At every student position whose token ends where a teacher token ends (same text
before it), the teacher's next-token distribution is the target, as

* ``objective: mapped``: the teacher's mass moved onto the student ids with the same bytes,
  the unmapped rest in the tail bucket (any divergence), or
* ``objective: uld``: the sorted probability vector (ULD; no shared strings needed).

Chat data (``chats``: each training example's messages, by ``example_index``): each model
renders the chat with its own template and only the messages' contents are aligned
(:func:`~kdistill.teachers.alignment.align_chat`); a row the student's template rendered
otherwise falls back to aligning its text.

Other positions get no soft target but keep their hard CE on the student's own tokens
(``valid_for="soft"``). Asked for hidden states (the chunked loss), the teacher hands over
its final hidden states at the aligned positions and its head: targets are then made a chunk
at a time and the ``(N, V_t)`` teacher logits never exist at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from kdistill.log import get_logger
from kdistill.losses.cross_vocab import (
    CrossVocabTeacher,
    SortedSignal,
    VocabMap,
    mapped_share,
)
from kdistill.models.vocab import map_vocab
from kdistill.signals import SparseSignal
from kdistill.teachers.alignment import RowAlignment, TextAligner, align_chat
from kdistill.teachers.base import EXAMPLE_INDEX, TeacherSignal, Want

log = get_logger(__name__)

SHARE_SAMPLE = 64  # aligned positions per batch the mapped share is measured on


@dataclass
class AlignStats:
    positions: int = 0  # student positions with a next token (the ones a target could be for)
    aligned: int = 0
    chat_rows: int = 0  # rows aligned by their messages, each model with its own template
    share_sum: float = 0.0
    share_n: int = 0

    def summary(self) -> dict:
        out = {
            "positions": self.positions,
            "aligned_positions": self.aligned,
            "aligned_share": self.aligned / self.positions if self.positions else None,
            "chat_rows_own_templates": self.chat_rows,
        }
        if self.share_n:
            out["mapped_share"] = self.share_sum / self.share_n
            out["mapped_share_positions"] = self.share_n
        return out


class AlignedTeacher:
    """``teacher.kind: aligned``: a frozen teacher model with its own tokenizer."""

    def __init__(
        self,
        model: torch.nn.Module,
        teacher_tokenizer,
        student_tokenizer,
        *,
        objective: str = "mapped",
        vocab_size: int,
        chats: list[list[dict]] | None = None,
    ):
        if objective not in ("mapped", "uld"):
            raise ValueError(f"teacher.objective must be mapped or uld, got {objective!r}")
        self.model = model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        self.t_tok, self.s_tok = teacher_tokenizer, student_tokenizer
        self.chats = chats
        self._chat_warned = False
        self.aligner = TextAligner(student_tokenizer, teacher_tokenizer)
        self.objective = objective
        self.vocab_size = vocab_size
        self.teacher_vocab = min(
            len(teacher_tokenizer), model.get_output_embeddings().weight.shape[0]
        )
        self.vmap = None
        if objective == "mapped":
            t2s = map_vocab(teacher_tokenizer, student_tokenizer)[: self.teacher_vocab]
            self.vmap = VocabMap.from_pairs(t2s, vocab_size)
        pad = teacher_tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else (teacher_tokenizer.eos_token_id or 0)
        self.stats = AlignStats()
        self._head_fp32: tuple | None = None

    def to(self, device) -> AlignedTeacher:
        self.model.to(device)
        self._head_fp32 = None
        if self.vmap is not None:
            self.vmap = self.vmap.to(device)
        return self

    def summary(self) -> dict:
        """What the run's summary records about the alignment."""
        return {"objective": self.objective, **self.stats.summary()}

    def _teacher_batch(self, batch):
        """Teacher ids ``(B, L_t)`` + mask, and the aligned ``(row, student pos, teacher pos)``."""
        ids = batch["input_ids"]
        mask = batch.get("attention_mask")
        mask = torch.ones_like(ids) if mask is None else mask
        index = batch.get(EXAMPLE_INDEX)
        rows, where = [], []
        for r in range(ids.shape[0]):
            pos = mask[r].nonzero().squeeze(-1).cpu()
            row = ids[r, pos].tolist()
            aligned = None
            if self.chats is not None and index is not None:
                aligned = self._chat_row(self.chats[int(index[r])], row)
            if aligned is None:
                aligned = self.aligner.align(row)
            rows.append(aligned.teacher_ids)
            n = len(pos)
            pairs = [(int(pos[i]), j) for i, j in aligned.pairs if i < n - 1]
            where.extend((r, p, j) for p, j in pairs)
            self.stats.positions += max(n - 1, 0)
            self.stats.aligned += len(pairs)
        length = max(1, max(len(t) for t in rows))
        t_ids = torch.full((len(rows), length), self.pad_id, dtype=torch.long)
        t_mask = torch.zeros((len(rows), length), dtype=torch.long)
        for r, t in enumerate(rows):
            t_ids[r, : len(t)] = torch.tensor(t, dtype=torch.long)
            t_mask[r, : len(t)] = 1
        index = torch.tensor(where, dtype=torch.long).reshape(-1, 3)
        return t_ids.to(ids.device), t_mask.to(ids.device), index.to(ids.device)

    def _chat_row(self, messages: list[dict], row: list[int]) -> RowAlignment | None:
        """The teacher's own rendering of the chat and the content-aligned pairs, or None when
        the row is not the student's rendering of these messages (then its text is aligned)."""
        try:
            s_ids, t_ids, pairs = align_chat(messages, self.s_tok, self.t_tok)
        except (ValueError, TypeError, KeyError) as exc:  # e.g. a base model without a template
            if not self._chat_warned:
                log.warning(f"chat rows aligned by their text: {str(exc).splitlines()[0][:120]}")
                self._chat_warned = True
            return None
        if s_ids[: len(row)] != row:
            return None
        pairs = [(i, j) for i, j in pairs if i < len(row)]
        self.stats.chat_rows += 1
        last = max((j for _, j in pairs), default=0)
        return RowAlignment(t_ids[: last + 1], pairs)

    def _head(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The teacher's head ``(V_t, H_t)`` (+ bias) in fp32, made once (not per chunk or
        step: for a bf16 262k-row head that is 0.7 GB of casting each time)."""
        if self._head_fp32 is None:
            head = self.model.get_output_embeddings()
            bias = getattr(head, "bias", None)
            self._head_fp32 = (
                head.weight[: self.teacher_vocab].float(),
                None if bias is None else bias[: self.teacher_vocab].float(),
            )
        return self._head_fp32

    def _cross(self, hidden: torch.Tensor) -> CrossVocabTeacher:
        weight, bias = self._head()
        cfg = getattr(self.model, "config", None)
        return CrossVocabTeacher(
            hidden,
            weight,
            self.objective,
            self.vocab_size,
            vmap=self.vmap,
            head_bias=bias,
            logit_scale=getattr(cfg, "logit_scale", None),
            softcap=getattr(cfg, "final_logit_softcapping", None),
        )

    def _measure_share(self, aligned: torch.Tensor) -> None:
        if self.vmap is None or aligned.shape[0] == 0:
            return
        step = max(1, aligned.shape[0] // SHARE_SAMPLE)
        sample = self._cross(aligned[::step][:SHARE_SAMPLE])
        share = mapped_share(sample.target(slice(None), 1.0))
        self.stats.share_sum += float(share.sum())
        self.stats.share_n += share.numel()

    @torch.no_grad()
    def signal(self, batch, *, want: Want) -> TeacherSignal:
        ids = batch["input_ids"]
        b, length = ids.shape
        t_ids, t_mask, index = self._teacher_batch(batch)
        out = self.model(
            input_ids=t_ids, attention_mask=t_mask, output_hidden_states=True, logits_to_keep=1
        )
        t_hidden = out.hidden_states[-1]
        rr, pp, jj = index.unbind(-1) if index.numel() else (index[:, 0],) * 3
        aligned = t_hidden[rr, jj].float()  # (M, H_t)
        self._measure_share(aligned)
        valid = torch.zeros((b, length), dtype=torch.bool, device=ids.device)
        valid[rr, pp] = True
        flat = rr * length + pp
        if want.form == "hidden":
            hidden = torch.zeros((b * length, aligned.shape[-1]), device=ids.device)
            hidden[flat] = aligned
            return TeacherSignal(cross=self._cross(hidden), valid=valid, valid_for="soft")
        return TeacherSignal(
            **self._dense_targets(aligned, flat, (b, length), want.kd_temperature),
            valid=valid,
            valid_for="soft",
        )

    def _dense_targets(self, aligned, flat, shape: tuple[int, int], temp: float) -> dict:
        """Targets at every position ``(B, L, ...)`` for the full-logit loss: made for the
        aligned rows a chunk at a time; elsewhere uniform (finite, and masked by ``valid``)."""
        cross = self._cross(aligned)
        rows, dev = shape[0] * shape[1], flat.device
        parts = [cross.target(slice(s, s + 128), temp) for s in range(0, aligned.shape[0], 128)]
        if self.objective == "mapped":
            k = self.vmap.k
            lp = torch.full((rows, k), -math.log(k + 1.0), device=dev)
            tail = torch.full((rows,), -math.log(k + 1.0), device=dev)
            if parts:
                lp[flat] = torch.cat([p.logprobs for p in parts])
                tail[flat] = torch.cat([p.log_tail for p in parts])
            ids = self.vmap.student_ids.to(dev).expand(*shape, k)
            sparse = SparseSignal(ids, lp.view(*shape, k), tail.view(shape), self.vocab_size, temp)
            return {"sparse": sparse}
        r = min(self.vocab_size, self.teacher_vocab)
        probs = torch.full((rows, r), 1.0 / r, device=dev)
        rest = torch.zeros((rows,), device=dev)
        if parts:
            probs[flat] = torch.cat([p.probs for p in parts])
            rest[flat] = torch.cat([p.rest for p in parts])
        return {"sorted": SortedSignal(probs.view(*shape, r), rest.view(shape), temp)}
