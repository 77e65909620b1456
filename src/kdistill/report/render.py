"""Render results JSON files into ``report.html`` (self-contained) and ``report.md``."""

from __future__ import annotations

import base64
import html
import json
import os
from pathlib import Path

from kdistill.report import plots

ORDER = ("teacher", "student", "baseline")


def _load_results(paths: list[Path]) -> dict[str, dict]:
    models: dict[str, dict] = {}
    extra: dict = {}
    for p in paths:
        data = json.loads(Path(p).read_text())
        for k, v in data.items():
            if isinstance(v, dict) and ("perplexity" in v or "accuracy" in v):
                models[k] = v
            elif isinstance(v, dict):
                extra.setdefault(k, {}).update(v)
    if "teacher" not in models:
        raise ValueError("results: no 'teacher' entry; pass the results.json of a demo/eval run")
    ordered = {k: models[k] for k in ORDER if k in models}
    ordered.update({k: v for k, v in models.items() if k not in ordered})
    return ordered, extra


def _read_log(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "kd_log.jsonl"
    if not path.is_file():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _fmt(v, spec: str = ".3f") -> str:
    if v is None:
        return "-"
    return format(v, spec) if isinstance(v, (int, float)) else str(v)


def _rows(models: dict, lm: bool) -> tuple[list[str], list[list[str]]]:
    head = [
        "model",
        "params (M)",
        "size (MB)",
        "perplexity" if lm else "accuracy",
        "KL to teacher",
        "top-1 agreement",
        "ECE",
        "tokens/s" if lm else "examples/s",
        "latency p50 / p95 (ms)",
    ]
    rows = []
    for name, r in models.items():
        speed = r.get("forward_tokens_per_s") if lm else r.get("examples_per_s")
        lat = "-"
        if r.get("latency_p50_s") is not None:
            lat = f"{1000 * r['latency_p50_s']:.0f} / {1000 * r['latency_p95_s']:.0f}"
        size = r.get("size_bytes")
        rows.append(
            [
                name,
                _fmt(r.get("params", 0) / 1e6, ".1f"),
                _fmt(size / 1e6 if size else None, ".1f"),
                _fmt(r.get("perplexity") if lm else r.get("accuracy"), ".2f" if lm else ".3f"),
                _fmt(r.get("kl_to_teacher"), ".3f"),
                _fmt(100 * r["top1_agreement"], ".1f") + "%" if "top1_agreement" in r else "-",
                _fmt(r.get("ece"), ".3f"),
                _fmt(speed, ".0f"),
                lat,
            ]
        )
    return head, rows


def retention_of(models: dict, lm: bool) -> dict[str, float]:
    t = models["teacher"]
    out = {}
    for name, r in models.items():
        if name == "teacher":
            continue
        if lm and r.get("perplexity"):
            out[name] = t["perplexity"] / r["perplexity"]
        elif not lm and t.get("accuracy"):
            out[name] = r["accuracy"] / t["accuracy"]
    return out


def verdict(models: dict, lm: bool) -> str:
    t, s, b = models["teacher"], models.get("student"), models.get("baseline")
    if s is None:
        return "No student in these results."
    ret = retention_of(models, lm)
    size = s["params"] / t["params"]
    s_speed = s.get("forward_tokens_per_s") or s.get("examples_per_s")
    t_speed = t.get("forward_tokens_per_s") or t.get("examples_per_s")
    speed = f" and runs {s_speed / t_speed:.2f} times faster" if s_speed and t_speed else ""
    text = (
        f"The student keeps {100 * ret['student']:.1f}% of the teacher's quality "
        f"({'perplexity' if lm else 'accuracy'}) at {100 * size:.0f}% of its size{speed}."
    )
    if b is not None:
        key = "perplexity" if lm else "accuracy"
        sv, bv = s[key], b[key]
        helped = sv < bv if lm else sv > bv
        diff = (bv - sv) / bv if lm else sv - bv
        if helped:
            text += (
                f" The teacher improved the student over the same-size baseline: "
                f"{key} {sv:.2f} vs {bv:.2f} ({100 * diff:.1f}% better)."
            )
        else:
            text += (
                f" The teacher did NOT improve on the same-size baseline: {key} {sv:.2f} "
                f"vs {bv:.2f}."
            )
    return text


def _atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em
auto;max-width:1100px;color:#222;padding:0 1em}h1{font-size:1.6em}h2{font-size:1.2em;
margin-top:1.6em;border-bottom:1px solid #ddd}table{border-collapse:collapse;margin:1em 0}
td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left}.verdict{background:#f6f9ff;border-left:4px solid
#4c72b0;padding:.8em 1em;font-size:1.05em}img{max-width:100%;height:auto;display:block;
margin:.6em 0}.grid{display:flex;flex-wrap:wrap;gap:1em}.grid img{max-width:48%}"""


def render_report(
    results_paths: list[Path], out_dir: Path, logs_dirs: list[Path] | None = None
) -> tuple[Path, Path]:
    """Write ``out_dir/report.html`` and ``out_dir/report.md`` (+ ``out_dir/plots/*.png``)."""
    models, extra = _load_results([Path(p) for p in results_paths])
    lm = "perplexity" in models["teacher"]
    out_dir = Path(out_dir)
    (out_dir / "plots").mkdir(parents=True, exist_ok=True)
    logs: dict[str, list[dict]] = {}
    if logs_dirs:
        for d in logs_dirs:
            rows = _read_log(Path(d))
            if rows:
                logs[Path(d).name] = rows
    else:
        for name, r in models.items():
            if r.get("run_dir") and _read_log(Path(r["run_dir"])):
                logs[name] = _read_log(Path(r["run_dir"]))
    quality = "perplexity" if lm else "accuracy"
    figs: list[tuple[str, str, bytes]] = []
    ret = retention_of(models, lm)
    if ret:
        figs.append(("retention", "Quality retained", plots.retention_bars(ret, quality)))
    pts = {n: (r["params"], r[quality]) for n, r in models.items() if r.get(quality)}
    figs.append(("size_quality", "Size vs quality", plots.size_quality_scatter(pts, quality, lm)))
    if logs:
        figs.append(("training", "Training curves", plots.training_curves(logs)))
        figs.append(("schedules", "Schedules", plots.schedules(logs)))
    rel = {n: r["reliability"] for n, r in models.items() if r.get("reliability")}
    if rel:
        figs.append(("reliability", "Reliability diagrams", plots.reliability(rel)))
    for key, _, png in figs:
        (out_dir / "plots" / f"{key}.png").write_bytes(png)

    head, rows = _rows(models, lm)
    text = verdict(models, lm)
    table_html = "<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"
    for row in rows:
        table_html += "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
    table_html += "</table>"
    imgs = "".join(
        f"<h2>{html.escape(title)}</h2><img alt='{key}' "
        f"src='data:image/png;base64,{base64.b64encode(png).decode()}'>"
        for key, title, png in figs
    )
    timing = extra.get("timings", {})
    foot = ""
    if timing:
        foot = (
            "<p>Run time: "
            + ", ".join(f"{html.escape(k)} {v:.0f} s" for k, v in timing.items())
            + ".</p>"
        )
    page = (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>kdistill "
        f"report</title><style>{CSS}</style></head><body><h1>kdistill report card</h1>"
        f"<p class='verdict'>{html.escape(text)}</p><h2>Models</h2>{table_html}{imgs}"
        f"{foot}<p>Speed and latency of all models were measured in the same run on the "
        f"same machine, so ratios are comparable.</p></body></html>"
    )
    md = [
        "# kdistill report card",
        "",
        text,
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    md += ["| " + " | ".join(r) + " |" for r in rows]
    md += [""] + [f"![{title}](plots/{key}.png)" for key, title, _ in figs] + [""]
    html_path, md_path = out_dir / "report.html", out_dir / "report.md"
    _atomic(html_path, page)
    _atomic(md_path, "\n".join(md))
    return html_path, md_path
