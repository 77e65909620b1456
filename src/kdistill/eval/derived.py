"""Fields derived from per-model results: retention vs the teacher, cost ratios, and for each
student whether the teacher helped it over the baseline it names.

Quality is compared in perplexity (or accuracy) where two models share a tokenizer, and in
bits per byte where they do not (perplexities over different tokens are not comparable).
"""

from __future__ import annotations

from kdistill.eval.metrics import retention
from kdistill.eval.roles import SETUP_KEY, EvalSetup, build_setup, lm_quality_key


def _ratio(a, b) -> float | None:
    return a / b if a and b else None


def derive(results: dict[str, dict], *, lm: bool, setup: EvalSetup | None = None) -> dict:
    """``{name}_{ppl|bpb|acc}_retention``, ``{name}_size_fraction``, ``{name}_speedup`` and
    ``{name}_peak_memory_fraction`` for every model beside the teacher; per (student,
    baseline) pair ``pairs[student]`` = {baseline, metric, student, baseline_value, ratio or
    difference, teacher_helped}; for the pair (student, baseline) also the flat
    ``student_vs_baseline_ppl_ratio`` / ``student_minus_baseline_accuracy`` and
    ``teacher_helped``."""
    models = {k: v for k, v in results.items() if isinstance(v, dict)}
    if setup is None:
        if "teacher" not in models:
            return {}
        setup = build_setup(list(models), "teacher")
    t = models.get(setup.teacher)
    if t is None:
        return {}
    speed = "forward_tokens_per_s" if lm else "examples_per_s"
    out: dict = {}
    for name, r in models.items():
        if name == setup.teacher:
            continue
        key = lm_quality_key(r, t) if lm else ("accuracy" if "accuracy" in r else None)
        if key is not None:
            tag = {"perplexity": "ppl", "bits_per_byte": "bpb", "accuracy": "acc"}[key]
            out[f"{name}_{tag}_retention"] = retention(r[key], t[key], lower_is_better=lm)
        out[f"{name}_size_fraction"] = _ratio(r.get("params"), t.get("params"))
        out[f"{name}_speedup"] = _ratio(r.get(speed), t.get(speed))
        out[f"{name}_peak_memory_fraction"] = _ratio(
            r.get("peak_memory_bytes"), t.get("peak_memory_bytes")
        )
    pairs = {}
    for s_name, b_name in setup.pairs:
        s, b = models.get(s_name), models.get(b_name)
        if s is None or b is None:
            continue
        key = lm_quality_key(s, b) if lm else "accuracy"
        if key is None or s.get(key) is None or b.get(key) is None:
            continue
        entry = {"baseline": b_name, "metric": key, "student": s[key], "baseline_value": b[key]}
        if lm:
            entry.update(ratio=s[key] / b[key], teacher_helped=s[key] < b[key])
        else:
            entry.update(difference=s[key] - b[key], teacher_helped=s[key] > b[key])
        pairs[s_name] = entry
        if (s_name, b_name) == ("student", "baseline"):
            if lm and key == "perplexity":
                out["student_vs_baseline_ppl_ratio"] = entry["ratio"]
            elif not lm:
                out["student_minus_baseline_accuracy"] = entry["difference"]
            out["teacher_helped"] = entry["teacher_helped"]
    if pairs:
        out["pairs"] = pairs
    return out


def results_file(results: dict[str, dict], setup: EvalSetup, *, lm: bool, **extra) -> dict:
    """What a results JSON holds: the models in role order, ``derived``, the ``setup`` and
    any ``extra`` sections (e.g. the demo's ``timings``)."""
    ordered = {n: results[n] for n in setup.roles if n in results}
    ordered.update({n: r for n, r in results.items() if n not in ordered})
    return {
        **ordered,
        "derived": derive(results, lm=lm, setup=setup),
        **extra,
        SETUP_KEY: setup.to_json(),
    }
