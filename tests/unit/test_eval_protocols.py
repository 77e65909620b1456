"""The pure parts of the evaluation: bits-per-byte accounting, the interleaved speed
protocol, agreement on text, roles and per-pair verdict fields."""

from __future__ import annotations

import itertools

import pytest

from kdistill.eval.bits import token_byte_counts, window_plan
from kdistill.eval.derived import derive
from kdistill.eval.roles import SetupError, build_setup, setup_of
from kdistill.eval.speed import interleaved, summary
from kdistill.eval.text_agreement import prefix_agreement

TEXT = "Naïve café — 日本語 text, and emoji 🙂 at the end"


def _offsets_bytelevel(text: str) -> list[tuple[int, int]]:
    """Offsets as a byte-level tokenizer reports them: one token per UTF-8 byte, every byte
    of a multi-byte character carrying that character's (start, end)."""
    out = []
    for i, ch in enumerate(text):
        out += [(i, i + 1)] * len(ch.encode())
    return out


@pytest.mark.parametrize(
    "offsets",
    [
        [(i, i + 1) for i in range(len(TEXT))],  # one token per character
        _offsets_bytelevel(TEXT),  # one per byte, split characters
        [(0, 5), (5, 5), (4, 12), (14, 30), (30, len(TEXT))],  # overlaps, a gap, an empty one
        [(0, 3)],  # one token that under-reports its end: the last token ends the span
    ],
)
def test_token_bytes_sum_to_the_span(offsets):
    counts = token_byte_counts(TEXT, offsets)
    assert len(counts) == len(offsets) and min(counts) >= 0
    assert sum(counts) == len(TEXT.encode("utf-8"))


def test_window_plan_scores_every_position_once():
    for n, window in itertools.product([0, 1, 5, 16, 17, 100], [2, 4, 16]):
        scored = []
        for start, end, first in window_plan(n, window):
            assert end - start <= window and start < first <= end
            assert first - 1 >= start  # the logits that predict `first` are inside the window
            scored += range(first, end)
        assert scored == list(range(1, n + 1)), (n, window)
    with pytest.raises(ValueError, match="window"):
        window_plan(5, 1)


def test_interleaved_order_warmup_and_budget():
    calls = []
    clock = itertools.count(step=1.0).__next__  # 1 s per clock read
    fns = {n: (lambda n=n: calls.append(n)) for n in "ABC"}
    raw = interleaved(fns, min_repeats=3, max_repeats=5, budget_s=0.0, clock=clock)
    assert calls == list("ABC") + list("ABC") * 3  # warm-up, then A B C A B C A B C
    assert {n: len(v) for n, v in raw.items()} == {"A": 3, "B": 3, "C": 3}
    assert all(s == 1.0 for v in raw.values() for s in v)
    calls.clear()
    raw = interleaved(fns, min_repeats=2, max_repeats=4, budget_s=None, warmup=0, clock=clock)
    assert calls == list("ABC") * 4
    s = summary([1.0, 2.0, 4.0], work=8)
    assert s["median_s"] == 2.0 and s["rate"] == 4.0 and s["spread"] == pytest.approx(1.5)
    assert summary([])["rate"] is None


def test_prefix_agreement():
    assert prefix_agreement("abcdef", "abcdef", 6) == 1.0
    assert prefix_agreement("abcdef", "abXdef", 6) == pytest.approx(2 / 6)
    assert prefix_agreement("abc", "abc", 6) == 1.0  # both stopped at the same place
    assert prefix_agreement("abc", "abcd", 6) == pytest.approx(3 / 6)
    assert prefix_agreement("", "x", 4) == 0.0
    with pytest.raises(ValueError):
        prefix_agreement("a", "a", 0)


def test_roles_defaults_explicit_and_errors():
    s = build_setup(["teacher", "student", "baseline", "pruned"])
    assert s.roles == {
        "teacher": "teacher",
        "student": "student",
        "baseline": "baseline",
        "pruned": "variant",
    }
    assert s.pairs == [("student", "baseline")]
    s = build_setup(
        ["teacher", "a", "b", "ta", "base"],
        baselines={"a": "base", "b": "base"},
        roles={"ta": "assistant"},
    )
    assert list(s.roles.values()) == ["teacher", "student", "student", "baseline", "assistant"]
    assert s.pairs == [("a", "base"), ("b", "base")]
    assert setup_of({"setup": s.to_json()}).pairs == s.pairs
    for kwargs, msg in (
        ({"baselines": {"a": "nope"}}, "no model named 'nope'"),
        ({"baselines": {"a": "a"}}, "two different models"),
        ({"roles": {"a": "king"}}, "use one of"),
        ({"roles": {"a": "teacher"}}, "use one of"),
    ):
        with pytest.raises(SetupError, match=msg):
            build_setup(["teacher", "a", "b"], **kwargs)


def test_derive_judges_each_pair_in_bits_per_byte_across_tokenizers():
    results = {
        "teacher": {"perplexity": 10.0, "bits_per_byte": 1.0, "tokenizer": "T", "params": 100},
        "same": {"perplexity": 20.0, "bits_per_byte": 1.2, "tokenizer": "T", "params": 50},
        "other": {"bits_per_byte": 1.1, "tokenizer": "X", "params": 50},
        "base": {"perplexity": 25.0, "bits_per_byte": 1.3, "tokenizer": "T", "params": 50},
    }
    setup = build_setup(list(results), baselines={"same": "base", "other": "base"})
    d = derive(results, lm=True, setup=setup)
    assert d["same_ppl_retention"] == pytest.approx(0.5)
    assert d["other_bpb_retention"] == pytest.approx(1 / 1.1)
    assert d["pairs"]["same"]["metric"] == "perplexity"
    assert d["pairs"]["same"]["teacher_helped"] is True
    assert d["pairs"]["other"]["metric"] == "bits_per_byte"  # perplexities do not compare
    assert d["pairs"]["other"]["ratio"] == pytest.approx(1.1 / 1.3)
    assert "teacher_helped" not in d  # no pair named (student, baseline)
