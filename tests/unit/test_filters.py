"""Filters and verifiers for teacher generations."""

from __future__ import annotations

from kdistill.data.filters import (
    apply_filters,
    best_of_n_filter,
    dedup_filter,
    length_filter,
    make_answer_checker,
    split_trace,
    verifier_filter,
)

TRACES = [
    # (prompt, sample, completion, logprob, reference)
    ("q1", 0, "<think>2+2 is 4</think> The answer is 4.", -3.0, "4"),
    ("q1", 1, "<think>2+2 is 5</think> The answer is 5.", -1.0, "4"),
    ("q1", 2, "<think>four</think> The answer is 4.", -2.0, "4"),
    ("q2", 0, "The answer is 9.", -0.5, "9"),  # no <think>
    ("q2", 1, "<think>3*3</think> The answer is 9", -4.0, "9"),
    ("q3", 0, "<think>hmm</think> The answer is 12.", -1.0, "13"),
    ("q3", 1, "x", -0.1, "13"),
]


def _records():
    return [
        {"prompt_id": p, "sample": s, "completion": c, "logprob": lp, "reference_answer": ref}
        for p, s, c, lp, ref in TRACES
    ]


def test_split_trace():
    assert split_trace("<think>a\nb</think>\nfinal") == ("a\nb", "final")
    assert split_trace("no trace") == (None, "no trace")


def test_reasoning_filter_keeps_right_answers_only():
    check = make_answer_checker(r"answer is\s*([0-9]+)")
    kept, counts = apply_filters(
        _records(),
        [
            length_filter(min_chars=2),
            dedup_filter(),
            verifier_filter(check, require_think=True),
        ],
    )
    assert {(r["prompt_id"], r["sample"]) for r in kept} == {("q1", 0), ("q1", 2), ("q2", 1)}
    assert [c["dropped"] for c in counts] == [1, 0, 3]
    assert counts[0]["in"] == 7 and counts[-1]["kept"] == 3


def test_best_of_n_prefers_verified_then_logprob():
    check = make_answer_checker(r"answer is\s*([0-9]+)")
    recs = _records()
    verifier_filter(check)[1](recs)  # marks `verified` without dropping for q-less ones
    kept, _ = apply_filters(_records(), [verifier_filter(check), best_of_n_filter()])
    best = {r["prompt_id"]: r["sample"] for r in kept}
    # q1: samples 0 and 2 are right; 2 has the higher log-prob. q2: 0 (-0.5) beats 1 (-4)
    assert best == {"q1": 2, "q2": 0}


def test_callable_checker_and_dedup():
    import math

    assert make_answer_checker(callable_path="math:isclose") is math.isclose
    recs = [{"prompt_id": "a", "sample": i, "completion": " same "} for i in range(3)]
    kept, counts = apply_filters(recs, [dedup_filter()])
    assert len(kept) == 1 and counts[0]["dropped"] == 2
