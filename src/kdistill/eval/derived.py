"""Fields derived from per-model results: retention vs the teacher, cost ratios, and whether
the teacher helped the student over the same-size baseline."""

from __future__ import annotations

from kdistill.eval.metrics import retention


def _ratio(a, b) -> float | None:
    return a / b if a and b else None


def derive(results: dict[str, dict], *, lm: bool) -> dict:
    """``{name}_{ppl|acc}_retention``, ``{name}_size_fraction``, ``{name}_speedup`` and
    ``{name}_peak_memory_fraction`` for every model beside ``teacher``; with ``student`` and
    ``baseline`` also the student-vs-baseline comparison and ``teacher_helped``."""
    t = results.get("teacher")
    if t is None:
        return {}
    key, tag = ("perplexity", "ppl") if lm else ("accuracy", "acc")
    speed = "forward_tokens_per_s" if lm else "examples_per_s"
    out: dict = {}
    for name, r in results.items():
        if name == "teacher" or not isinstance(r, dict) or key not in r:
            continue
        out[f"{name}_{tag}_retention"] = retention(r[key], t[key], lower_is_better=lm)
        out[f"{name}_size_fraction"] = _ratio(r.get("params"), t.get("params"))
        out[f"{name}_speedup"] = _ratio(r.get(speed), t.get(speed))
        out[f"{name}_peak_memory_fraction"] = _ratio(
            r.get("peak_memory_bytes"), t.get("peak_memory_bytes")
        )
    s, b = results.get("student"), results.get("baseline")
    if s is not None and b is not None and key in s and key in b:
        if lm:
            out["student_vs_baseline_ppl_ratio"] = s[key] / b[key]
            out["teacher_helped"] = s[key] < b[key]
        else:
            out["student_minus_baseline_accuracy"] = s[key] - b[key]
            out["teacher_helped"] = s[key] > b[key]
    return out
