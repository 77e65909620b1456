"""Teacher generations as training examples, with the teacher's per-token top logprobs as a
sparse soft target where the backend returned them.

A served teacher names its tokens by their text (``" the"``), not by id, so the ids are
recovered through :class:`PieceMap` (the text of every id of the shared tokenizer; pieces two
ids share are left out). The soft target is attached only where the student's own
tokenisation of the completion is exactly the teacher's token sequence: then position ``p``'s
target is the distribution the teacher sampled token ``p + 1`` from. Where it is not (another
tokenizer, or the same one merging differently) and an ``align`` function is given, the two
token sequences are aligned by text (cross-tokenizer: positions where both end a token at the
same character get the teacher's next distribution there, its top pieces mapped to student
ids by string, the rest in the tail). Elsewhere (unaligned positions, the end-of-turn token,
prompt positions) the target is the label itself (one-hot), so the soft term there equals
cross-entropy on the teacher's token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from kdistill.data.examples import IGNORE_INDEX, BlockDataset, chat_example


class PieceMap:
    """Token text -> id for the ids whose text no other id shares."""

    def __init__(self, tokenizer):
        seen: dict[str, int | None] = {}
        self.texts = [tokenizer.decode([i]) for i in range(len(tokenizer))]
        for i, piece in enumerate(self.texts):
            seen[piece] = None if piece in seen else i
        self.ids = {p: i for p, i in seen.items() if i is not None}

    def get(self, piece: str) -> int | None:
        return self.ids.get(piece)

    def text(self, i: int) -> str:
        """The text of id ``i``, decoded alone."""
        return self.texts[i]


@dataclass
class SignalStats:
    """How much of the data carries the teacher's soft target (reported after building)."""

    records: int = 0
    records_with_signal: int = 0
    tokenisation_mismatch: int = 0
    records_aligned: int = 0  # tokenised differently, aligned by text instead
    positions_with_signal: int = 0
    unmapped_top_entries: int = 0
    notes: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (
            f"teacher logprobs: {self.records_with_signal}/{self.records} records, "
            f"{self.positions_with_signal} positions; {self.tokenisation_mismatch} records "
            f"tokenised differently ({self.records_aligned} of them aligned by text, the rest "
            f"hard target only), {self.unmapped_top_entries} top-k entries with no unique id "
            "(moved to the tail)"
        )


def top_to_sparse(
    top: list, pieces: PieceMap, stats: SignalStats | None = None
) -> tuple[list[int], list[float], float]:
    """``[[piece, logprob], ...]`` -> (ids, logprobs, log of the remaining mass)."""
    ids, lps = [], []
    for piece, lp in top:
        i = pieces.get(piece)
        if i is None or i in ids or lp is None or not math.isfinite(lp):
            if stats is not None:
                stats.unmapped_top_entries += 1
            continue
        ids.append(i)
        lps.append(float(lp))
    kept = sum(math.exp(x) for x in lps)
    rest = 1.0 - kept
    log_tail = math.log(rest) if rest > 1e-6 else float("-inf")
    if kept > 1.0 + 1e-3:
        # a server rounding above 1: renormalise the kept mass
        lps = [x - math.log(kept) for x in lps]
    return ids, lps, log_tail


def attach_signal(
    input_ids: list[int],
    labels: list[int],
    record: dict,
    pieces: PieceMap,
    stats: SignalStats,
    align=None,
) -> dict:
    """An item ``{input_ids, labels, teacher_ids, teacher_logprobs, teacher_log_tail}``.

    Row ``p`` of the teacher tensors is the target for the logits at position ``p`` (which
    predict token ``p + 1``), as in a teacher store. ``align(student_ids, teacher_tokens)``
    (optional) gives ``(i, j)`` pairs where student token ``i`` and teacher token ``j`` of
    the completion end at the same character, for completions tokenised differently.
    """
    n = len(input_ids)
    first = next((p for p, lab in enumerate(labels) if lab != IGNORE_INDEX), n)
    stats.records += 1
    tokens = record.get("teacher_tokens") or []
    tops = record.get("teacher_top_logprobs") or []
    mapped = [pieces.get(t) for t in tokens]
    rows: dict[int, tuple[list[int], list[float], float]] = {}
    if tokens and len(tops) == len(tokens):
        if input_ids[first : first + len(mapped)] == mapped[: n - first] and None not in mapped:
            for j, top in enumerate(tops[: n - first]):
                if first + j >= 1:
                    rows[first + j - 1] = top_to_sparse(top, pieces, stats)
            stats.records_with_signal += 1
            stats.positions_with_signal += len(rows)
        else:
            stats.tokenisation_mismatch += 1
            if align is not None:
                _aligned_rows(rows, input_ids[first:], first, tokens, tops, pieces, stats, align)
    k = max([len(r[0]) for r in rows.values()] + [1])
    inf = float("-inf")
    ids, lps, tail = [], [], [inf] * n  # filled as lists, made tensors once (fast)
    for p in range(n):
        if p in rows and rows[p][0]:
            r_ids, r_lps, r_tail = rows[p]
            ids.append(r_ids + [-1] * (k - len(r_ids)))
            lps.append(r_lps + [inf] * (k - len(r_lps)))
            tail[p] = r_tail
        else:  # the label itself (or token 0 where masked): a one-hot target
            target = labels[p + 1] if p + 1 < n else IGNORE_INDEX
            ids.append([target if target != IGNORE_INDEX else 0] + [-1] * (k - 1))
            lps.append([0.0] + [inf] * (k - 1))
    return {
        "input_ids": torch.tensor(input_ids),
        "labels": torch.tensor(labels),
        "teacher_ids": torch.tensor(ids, dtype=torch.long).reshape(n, k),
        "teacher_logprobs": torch.tensor(lps, dtype=torch.float32).reshape(n, k),
        "teacher_log_tail": torch.tensor(tail, dtype=torch.float32),
    }


def _aligned_rows(rows, completion_ids, first, tokens, tops, pieces, stats, align) -> None:
    """Rows for a completion the student tokenises differently: the teacher's distribution
    ``tops[j + 1]`` (after its token ``j``) is the target of the student row whose token ends
    where teacher token ``j`` ends; ``tops[0]`` (after the prompt) that of the last prompt
    row."""
    if first >= 1 and tops:
        rows[first - 1] = top_to_sparse(tops[0], pieces, stats)
    for i, j in align(completion_ids, tokens):
        if j + 1 < len(tops) and i + 1 < len(completion_ids):
            rows[first + i] = top_to_sparse(tops[j + 1], pieces, stats)
    if rows:
        stats.records_with_signal += 1
        stats.records_aligned += 1
        stats.positions_with_signal += len(rows)


def prompt_completion_example(
    tokenizer, prompt: str, completion: str, max_length: int, eos: bool
) -> tuple[list[int], list[int]]:
    """(input_ids, labels) for raw prompt + completion text, the prompt masked; EOS appended
    when the teacher stopped by itself."""
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    c = tokenizer(completion, add_special_tokens=False)["input_ids"]
    if eos and tokenizer.eos_token_id is not None:
        c = [*c, tokenizer.eos_token_id]
    full = (p + c)[:max_length]
    n_prompt = min(len(p), len(full))
    return full, [IGNORE_INDEX] * n_prompt + full[n_prompt:]


def generation_example(tokenizer, record: dict, max_length: int) -> tuple[list[int], list[int]]:
    if "messages" in record:
        return chat_example(tokenizer, record["messages"], max_length)
    return prompt_completion_example(
        tokenizer,
        record["prompt"],
        record["completion"],
        max_length,
        eos=record.get("finish_reason") == "stop",
    )


def generation_datasets(tokenizer, train: list[dict], held: list[dict], block_size: int):
    """(train, held-out) examples from generation records (hard targets: the teacher's text)."""
    tr = BlockDataset([generation_example(tokenizer, r, block_size) for r in train])
    ho = BlockDataset([generation_example(tokenizer, r, block_size) for r in held])
    return tr, ho
