"""Agreement on text, across tokenizers. PURE module.

Teacher-forced top-1 agreement needs one tokenizer. On text any two models can be compared:
both continue the same prompts greedily, and the share of the first ``length`` characters
that match up to the first divergence is their agreement (a continuation that stops early is
compared as if padded with an end mark, so two that stop at the same place agree there).
"""

from __future__ import annotations

END = "\x00"


def prefix_agreement(reference: str, other: str, length: int) -> float:
    """Share of the first ``length`` characters of ``other`` equal to ``reference`` before
    the first difference (1.0: identical over ``length`` characters)."""
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    a = (reference[:length] + END * length)[:length]
    b = (other[:length] + END * length)[:length]
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n / length
