"""Bits per byte: LM quality that does not depend on the tokenizer. PURE module.

Every model scores the same character span (a held-out document, or its first ``max_chars``
characters) with its own tokenizer. The span is tokenized without special tokens; the
model's own start token (BOS, else EOS) is put in front as context and never counted. With
``n`` span tokens, positions ``1..n`` of ``[start] + tokens`` are predicted, through sliding
windows of at most ``window`` tokens (:func:`window_plan`: each token scored exactly once,
with at least ``window - stride`` tokens of context after the first window).

``bits = sum over the n tokens of -log2 p(token | context)``;
``bytes = the UTF-8 bytes the tokens cover`` (:func:`token_byte_counts`), which together are
exactly ``len(span.encode("utf-8"))``; ``bits per byte = bits / bytes``. A model that is
uniform over the 256 byte values of a byte-level tokenizer scores exactly 8.0.
"""

from __future__ import annotations

import math
from itertools import accumulate

LN2 = math.log(2.0)


def token_byte_counts(text: str, offsets: list[tuple[int, int]]) -> list[int]:
    """UTF-8 bytes covered by each token of ``text``, from the tokenizer's character
    ``offsets``: token ``i`` covers the text from the previous token's end to its own end
    (ends made non-decreasing; the last token ends at the end of ``text``), so tokens that
    split one character (byte-level BPE) or fold in a space are each counted once and the
    counts sum to ``len(text.encode())``."""
    if not offsets:
        return []
    # byte_at[c]: UTF-8 bytes of text[:c]
    byte_at = [0, *accumulate(len(ch.encode("utf-8")) for ch in text)]
    counts, prev = [], 0
    last = len(offsets) - 1
    for i, (_, end) in enumerate(offsets):
        end = len(text) if i == last else min(max(end, prev), len(text))
        counts.append(byte_at[end] - byte_at[prev])
        prev = end
    return counts


def window_plan(
    n_tokens: int, window: int, stride: int | None = None
) -> list[tuple[int, int, int]]:
    """``(start, end, first)`` windows over ``[start_token] + tokens`` (length ``n + 1``):
    run the model on positions ``start:end`` and score the predictions of positions
    ``first..end-1`` (each predicted from the logits at the position before it). Every
    position ``1..n`` is scored exactly once."""
    if window < 2:
        raise ValueError(f"window must be >= 2 tokens, got {window}")
    stride = max(1, window // 2) if stride is None else stride
    if not 1 <= stride < window:
        raise ValueError(f"stride must be in [1, window), got {stride} for window {window}")
    plan, first = [], 1
    while first <= n_tokens:
        end = min(window if not plan else first + stride, n_tokens + 1)
        start = max(0, end - window)
        plan.append((start, end, first))
        first = end
    return plan


def bits_per_byte(bits: float, n_bytes: int) -> float | None:
    return bits / n_bytes if n_bytes else None
