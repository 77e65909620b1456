"""Render results JSON files into ``report.html`` (self-contained) and ``report.md``.

Reads files only (results JSON, ``kd_log.jsonl``); imports no torch and no model code. Every
optional field may be missing: the table shows "-", and a plot without data is left out.
"""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path

from kdistill.errors import InputError
from kdistill.eval.roles import SETUP_KEY, EvalSetup, lm_quality_key, setup_of
from kdistill.files import atomic_write_bytes, atomic_write_text
from kdistill.report import plots
from kdistill.report.results import collect_logs, load_results


def _num(v) -> float | None:
    """A finite number, else None (missing, null, NaN, a string...)."""
    if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
        return float(v)
    return None


def ece_of(r: dict) -> float | None:
    """The stored ECE, else sum_b |correct_b - conf_b| / N from the reliability bins."""
    if (e := _num(r.get("ece"))) is not None:
        return e
    b = _bins(r)
    total = sum(b["counts"]) if b else 0
    if not total:
        return None
    return sum(abs(a - c) for a, c in zip(b["correct_sums"], b["conf_sums"])) / total


def _bins(r: dict) -> dict | None:
    b = r.get("reliability")
    keys = ("counts", "conf_sums", "correct_sums")
    if not isinstance(b, dict) or not all(isinstance(b.get(k), list) for k in keys):
        return None
    if len({len(b[k]) for k in keys}) != 1 or not any(b["counts"]):
        return None
    return b


def _per_class(r: dict) -> dict[str, float] | None:
    pc = r.get("per_class_accuracy")
    names = r.get("class_names")
    if isinstance(pc, list):
        use_names = isinstance(names, list) and len(names) == len(pc)
        pc = {str(names[i]) if use_names else str(i): v for i, v in enumerate(pc)}
    if not isinstance(pc, dict):
        return None
    return {str(k): _num(v) or 0.0 for k, v in pc.items()}


def _speed(r: dict) -> float | None:
    return _num(r.get("forward_tokens_per_s")) or _num(r.get("examples_per_s"))


def _fmt(v, spec: str, scale: float = 1.0, suffix: str = "") -> str:
    v = _num(v)
    return "-" if v is None else format(v * scale, spec) + suffix


def _millions_spec(n) -> str:
    """134.5 M, 4.21 M, 0.052 M: small classifiers keep their digits."""
    n = _num(n) or 0.0
    return ".1f" if n >= 1e7 else ".2f" if n >= 1e6 else ".3f"


def table(
    models: dict, lm: bool, setup: EvalSetup | None = None
) -> tuple[list[str], list[list[str]]]:
    head = ["model", "role", "params (M)", "size (MB)"]
    head += ["perplexity", "bits/byte"] if lm else ["accuracy"]
    head += ["KL to teacher", "top-1 agreement"] + (["text agreement"] if lm else [])
    head += ["ECE", "tokens/s" if lm else "examples/s"]
    head += ["latency p50 / p95 (ms)", "peak memory (MB)"]
    roles = (setup or setup_of(models) or EvalSetup("teacher", {})).roles
    rows = []
    for name, r in models.items():
        ms = ".0f" if (_num(r.get("latency_p50_s")) or 1.0) >= 0.01 else ".2f"
        p50, p95 = (
            _fmt(r.get("latency_p50_s"), ms, 1e3),
            _fmt(r.get("latency_p95_s"), ms, 1e3),
        )
        quality = (
            [_fmt(r.get("perplexity"), ".2f"), _fmt(r.get("bits_per_byte"), ".3f")]
            if lm
            else [_fmt(r.get("accuracy"), ".1f", 100, "%")]
        )
        agreement = [_fmt(r.get("top1_agreement"), ".1f", 100, "%")]
        if lm:
            agreement.append(_fmt(r.get("text_agreement"), ".0f", 100, "%"))
        rows.append(
            [
                name,
                roles.get(name, "-"),
                _fmt(r.get("params"), _millions_spec(r.get("params")), 1e-6),
                _fmt(r.get("size_bytes"), ".1f", 1e-6),
                *quality,
                _fmt(r.get("kl_to_teacher"), ".3f"),
                *agreement,
                _fmt(ece_of(r), ".3f"),
                _fmt(_speed(r), ".0f"),
                "-" if p50 == p95 == "-" else f"{p50} / {p95}",
                _fmt(r.get("peak_memory_bytes"), ".1f", 1e-6),
            ]
        )
    return head, rows


OWN_SAMPLE_COLUMNS = (
    ("own_reverse_kl", "teacher's reverse KL", ".3f"),
    ("own_greedy_agreement", "greedy agreement", ".1%"),
    ("own_entropy", "entropy (nats)", ".2f"),
    ("own_distinct2", "distinct-2", ".3f"),
    ("own_length", "sample length", ".1f"),
)


def own_samples_table(models: dict) -> tuple[list[str], list[list[str]]] | None:
    """The models' own-sample figures (``kdistill eval --own-samples``), or None."""
    named = {n: r for n, r in models.items() if _num(r.get("own_reverse_kl")) is not None}
    if not named:
        return None
    head = ["model", *(title for _, title, _ in OWN_SAMPLE_COLUMNS)]
    rows = []
    for name, r in named.items():
        cells = []
        for key, _, spec in OWN_SAMPLE_COLUMNS:
            v = _num(r.get(key))
            cells.append("-" if v is None else format(v, spec))
        rows.append([name, *cells])
    return head, rows


def retention_of(
    models: dict, lm: bool, derived: dict | None = None, setup: EvalSetup | None = None
) -> dict[str, float]:
    """Quality retained vs the teacher: teacher_ppl / ppl (LM, same tokenizer), teacher_bpb /
    bpb (LM, another tokenizer) or acc / teacher_acc. Values in ``derived`` win."""
    derived = derived or {}
    setup = setup or setup_of(models)
    teacher = setup.teacher if setup else "teacher"
    t = models.get(teacher, {})
    out = {}
    for name, r in models.items():
        if name == teacher:
            continue
        key = lm_quality_key(r, t) if lm else "accuracy"
        tag = {"perplexity": "ppl", "bits_per_byte": "bpb", "accuracy": "acc"}.get(key or "")
        stored = _num(derived.get(f"{name}_{tag}_retention")) if tag else None
        tq, q = (_num(t.get(key)), _num(r.get(key))) if key else (None, None)
        if stored is not None:
            out[name] = stored
        elif tq and q:
            out[name] = tq / q if lm else q / tq
    return out


def _ratio(a, b) -> float | None:
    a, b = _num(a), _num(b)
    return a / b if a and b else None


def verdict(
    models: dict, lm: bool, derived: dict | None = None, setup: EvalSetup | None = None
) -> str:
    """One paragraph in words per student, each against the baseline it names; says
    plainly when the teacher did not help."""
    derived = derived or {}
    setup = setup or setup_of(models)
    if setup is None or setup.teacher not in models:
        return "These results hold no teacher, so quality retention cannot be measured."
    students = setup.of_role("student")
    if not students:
        return "These results hold no student, so there is no distillation to judge."
    baselines = dict(setup.pairs)
    return " ".join(
        _student_verdict(n, baselines.get(n), models, lm, derived, setup) for n in students
    )


def _student_verdict(
    name: str, b_name: str | None, models: dict, lm: bool, derived: dict, setup: EvalSetup
) -> str:
    t, s = models[setup.teacher], models[name]
    b = models.get(b_name) if b_name else None
    key = (lm_quality_key(s, t) if lm else "accuracy") or ("perplexity" if lm else "accuracy")
    ret = retention_of(models, lm, derived, setup).get(name)
    who = "The student" if name == "student" else f"Student {name!r}"
    text = f"{who} " + (
        f"keeps {100 * ret:.1f}% of the teacher's quality ({_quality_name(key)})"
        if ret is not None
        else f"has no {_quality_name(key)} to compare with the teacher's"
    )
    size = _num(derived.get(f"{name}_size_fraction")) or _ratio(s.get("params"), t.get("params"))
    size = size or _ratio(s.get("size_bytes"), t.get("size_bytes"))
    if size is not None:
        text += f" at {100 * size:.0f}% of its size"
    speed = _ratio(_speed(s), _speed(t)) or _num(derived.get(f"{name}_speedup")) or None
    if speed is not None:
        text += (" and" if size is not None else ",") + (
            f" runs {speed:.2f} times faster"
            if speed >= 1.005
            else f" runs {1 / speed:.2f} times slower"
            if speed <= 0.995
            else " runs at the same speed"
        )
    mem = _ratio(_num(s.get("peak_memory_bytes")), _num(t.get("peak_memory_bytes")))
    if mem is not None:
        text += f", with {100 * mem:.0f}% of its peak memory"
    pair_key = (lm_quality_key(s, b) if lm else "accuracy") if b is not None else None
    sv = _num(s.get(pair_key)) if pair_key else None
    bv = _num(b.get(pair_key)) if pair_key and b is not None else None
    if b is None or sv is None or bv is None:
        return text + "; no same-size baseline was measured, so the teacher's effect is unknown."
    show = (
        (lambda v: f"{v:.2f}" if pair_key == "perplexity" else f"{v:.3f}")
        if lm
        else (lambda v: f"{100 * v:.1f}%")
    )
    base = "the same-size baseline" if b_name == "baseline" else f"baseline {b_name!r}"
    pair = f"({_quality_name(pair_key)} {show(sv)} vs {show(bv)})"
    gain = (bv - sv) / bv * 100 if lm else (sv - bv) * 100
    amount = f"{abs(gain):.1f}%" if lm else f"{abs(gain):.1f} percentage points"
    if round(abs(gain), 1) == 0:
        return text + f"; the teacher did NOT help: no measurable difference from {base} {pair}."
    if gain > 0:
        return text + f"; the teacher improved the student by {amount} over {base} {pair}."
    return text + (
        f"; the teacher did NOT help: {base}, trained without it, is better by {amount} {pair}."
    )


def _quality_name(key: str | None) -> str:
    return {"bits_per_byte": "bits per byte"}.get(key or "", key or "quality")


def _spread(values: list[float]) -> float:
    return max(values) / min(values)


def _figures(models, lm, derived, logs, setup=None) -> list[tuple[str, str, bytes]]:
    """[(file stem, title, png)] for every plot there is data for."""
    key = "perplexity" if lm else "accuracy"
    figs = []
    if ret := retention_of(models, lm, derived, setup):
        definition = "teacher perplexity / model perplexity" if lm else "accuracy / teacher's"
        figs.append(("retention", "Quality retained", plots.retention_bars(ret, definition)))
    pts = {}
    for n, r in models.items():
        p, q = _num(r.get("params")), _num(r.get(key))
        if p and p > 0 and q and q > 0:
            pts[n] = (p, q)
    if pts:
        log_x = _spread([p for p, _ in pts.values()]) >= 10
        log_y = lm and _spread([q for _, q in pts.values()]) >= 3
        png = plots.size_quality_scatter(pts, key, log_x, log_y)
        figs.append(("size_quality", "Size vs quality", png))
    if logs:
        figs.append(("training", "Training curves", plots.training_curves(logs)))
        figs.append(("schedules", "Temperature and loss-weight schedules", plots.schedules(logs)))
    if rel := {n: b for n, r in models.items() if (b := _bins(r))}:
        png = plots.reliability(rel, {n: ece_of(models[n]) for n in rel})
        figs.append(("reliability", "Reliability diagrams", png))
    if pc := {n: c for n, r in models.items() if (c := _per_class(r))}:
        figs.append(("per_class", "Per-class accuracy", plots.per_class_accuracy(pc)))
    return figs


CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em
auto;max-width:1100px;color:#222;padding:0 1em}h1{font-size:1.6em}h2{font-size:1.2em;
margin-top:1.6em;border-bottom:1px solid #ddd}table{border-collapse:collapse;margin:1em 0}
td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left}.verdict{background:#f6f9ff;border-left:4px solid
#4c72b0;padding:.8em 1em;font-size:1.05em}img{max-width:100%;height:auto;display:block;
margin:.6em 0}.note{color:#666;font-size:.9em}"""


def _notes(timings: dict, n_files: int) -> list[str]:
    out = []
    secs = {k: v for k, v in timings.items() if _num(v) is not None}
    if secs:
        out.append("Run time: " + ", ".join(f"{k} {v:.0f} s" for k, v in secs.items()) + ".")
    if n_files == 1:
        out.append("All models were measured in one run on one machine, so speed ratios compare.")
    else:
        out.append(f"Merged from {n_files} results files: speeds compare only if measured alike.")
    return out


def _text(s: str) -> str:
    """Escape for an HTML text node (quotes need no escaping there: "teacher's" stays)."""
    return html.escape(s, quote=False)


def _cells(tag: str, row: list[str]) -> str:
    return "".join(f"<{tag}>{_text(c)}</{tag}>" for c in row)


def _md_row(row: list[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in row) + " |"


def render_report(
    results_paths: list[Path], out_dir: Path, logs_dirs: list[Path] | None = None
) -> tuple[Path, Path]:
    """Write ``out_dir/report.html`` (self-contained: plots embedded as base64 PNG, inline CSS,
    no external URL) and ``out_dir/report.md`` (+ the PNGs it links, in ``out_dir/plots/``).
    ``logs_dirs``: run folders holding ``kd_log.jsonl``; None or empty: each model's
    ``run_dir``, where that folder exists."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"--out {str(out_dir)!r} is a file; give a folder for the report")
    models, sources, meta = load_results(list(results_paths))
    lm = any(
        _num(r.get("perplexity")) is not None or _num(r.get("bits_per_byte")) is not None
        for r in models.values()
    )
    derived = meta.get("derived", {})
    logs = collect_logs(models, sources, logs_dirs)
    setup = meta.get(SETUP_KEY)
    figs = _figures(models, lm, derived, logs, setup)
    (out_dir / "plots").mkdir(parents=True, exist_ok=True)
    for stem, _, png in figs:
        atomic_write_bytes(out_dir / "plots" / f"{stem}.png", png)

    head, rows = table(models, lm, setup)
    text = verdict(models, lm, derived, setup)
    notes = _notes(meta.get("timings", {}), len({str(p) for p in sources.values()}))
    table_html = f"<table><tr>{_cells('th', head)}</tr>"
    table_html += "".join(f"<tr>{_cells('td', r)}</tr>" for r in rows) + "</table>"
    own = own_samples_table(models)
    own_md: list[str] = []
    if own is not None:
        settings = next(
            (r["own_sample_settings"] for r in models.values() if "own_sample_settings" in r),
            {},
        )
        about = (
            "On each model's own samples ("
            + ", ".join(f"{k} {v}" for k, v in settings.items())
            + ")"
        )
        table_html += f"<h2>{_text(about)}</h2><table><tr>{_cells('th', own[0])}</tr>"
        table_html += "".join(f"<tr>{_cells('td', r)}</tr>" for r in own[1]) + "</table>"
        own_md = ["", f"## {about}", "", _md_row(own[0]), "|" + "---|" * len(own[0])]
        own_md += [_md_row(r) for r in own[1]]
    imgs = "".join(
        f'<h2>{_text(title)}</h2><img alt="{html.escape(title)}" '
        f'src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'
        for _, title, png in figs
    )
    page = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>kdistill report card</title><style>{CSS}</style></head><body>"
        f'<h1>kdistill report card</h1><p class="verdict">{_text(text)}</p>'
        f"<h2>Models</h2>{table_html}{imgs}"
        + "".join(f'<p class="note">{_text(n)}</p>' for n in notes)
        + "</body></html>\n"
    )
    md = ["# kdistill report card", "", text, "", _md_row(head), "|" + "---|" * len(head)]
    md += [_md_row(r) for r in rows] + own_md + [""]
    md += [f"![{title}](plots/{stem}.png)" for stem, title, _ in figs] + [""] + notes + [""]
    html_path, md_path = out_dir / "report.html", out_dir / "report.md"
    atomic_write_text(html_path, page)
    atomic_write_text(md_path, "\n".join(md))
    return html_path, md_path
