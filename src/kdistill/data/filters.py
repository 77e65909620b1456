"""Filters and verifiers for teacher generations (composable, counted).

Each filter sees all samples of all prompts and returns the kept ones; :func:`apply_filters`
runs them in order and reports kept/dropped counts per filter.

Reasoning traces: ``<think>...</think>`` followed by the final answer. The answer checker
compares that final answer with the prompt's reference ``answer`` by a regex (first group
or whole match), exact after normalisation, or by a Python callable ``module:function``
taking ``(final_answer, reference) -> bool``.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable

from kdistill.errors import InputError

THINK = re.compile(r"<think>(.*?)</think>\s*(.*)", re.DOTALL)


def split_trace(text: str) -> tuple[str | None, str]:
    """(reasoning or None, final answer)."""
    m = THINK.search(text)
    if not m:
        return None, text.strip()
    return m.group(1).strip(), m.group(2).strip()


def _norm(s: str) -> str:
    return re.sub(r"\s+", " ", s.strip().strip(".").lower())


def make_answer_checker(
    regex: str | None = None, callable_path: str | None = None
) -> Callable[[str, str], bool]:
    if callable_path:
        module, _, name = callable_path.partition(":")
        try:
            fn = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as exc:
            raise InputError(
                f"answer checker {callable_path!r} not importable; give module:function"
            ) from exc
        return fn
    try:
        pattern = re.compile(regex) if regex else None
    except re.error as exc:
        raise InputError(
            f"generate.filters.answer_regex {regex!r} is not a valid regex ({exc}); fix it"
        ) from None

    def check(final: str, reference: str) -> bool:
        if pattern is not None:
            m = pattern.search(final)
            if not m:
                return False
            final = m.group(1) if m.groups() else m.group(0)
        return _norm(final) == _norm(reference)

    return check


def length_filter(min_chars: int = 1, max_chars: int | None = None):
    def run(records):
        return [
            r
            for r in records
            if len(r["completion"]) >= min_chars
            and (max_chars is None or len(r["completion"]) <= max_chars)
        ]

    return "length", run


def dedup_filter():
    def run(records):
        seen, out = set(), []
        for r in records:
            key = (r["prompt_id"], r["completion"].strip())
            if key not in seen:
                seen.add(key)
                out.append(r)
        return out

    return "dedup", run


def verifier_filter(checker: Callable[[str, str], bool], require_think: bool = False):
    """Keep samples whose final answer matches the reference (prompts without a reference
    are kept unverified). Marks each record with ``verified``."""

    def run(records):
        out = []
        for r in records:
            think, final = split_trace(r["completion"])
            if require_think and think is None:
                continue
            ref = r.get("reference_answer")
            ok = True if ref is None else bool(checker(final, ref))
            r["verified"] = ok
            if ok:
                out.append(r)
        return out

    return "verifier", run


def best_of_n_filter():
    """One sample per prompt: verified first, then the highest total log-prob."""

    def run(records):
        best: dict[str, dict] = {}
        for r in records:
            key = (
                r.get("verified", False),
                r.get("logprob") if r.get("logprob") is not None else float("-inf"),
            )
            cur = best.get(r["prompt_id"])
            if cur is None or key > (
                cur.get("verified", False),
                cur.get("logprob") if cur.get("logprob") is not None else float("-inf"),
            ):
                best[r["prompt_id"]] = r
        return list(best.values())

    return "best_of_n", run


def apply_filters(records: list[dict], filters) -> tuple[list[dict], list[dict]]:
    """Run filters in order; returns (kept, [{filter, in, kept, dropped}, ...])."""
    counts = []
    current = list(records)
    for name, run in filters:
        before = len(current)
        current = run(current)
        counts.append(
            {"filter": name, "in": before, "kept": len(current), "dropped": before - len(current)}
        )
    return current, counts
