"""Render a sweep's results file (``sweep.json``) into ``sweep.html`` (self-contained) and
``sweep.md``: per (arm, grid point) the mean and its Student-t interval over seeds, the point
chosen per arm, paired differences against the baseline arm, and the metric against each
swept key. Reads the file only."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from kdistill.errors import InputError
from kdistill.files import atomic_write_bytes, atomic_write_text
from kdistill.report import plots
from kdistill.report.render import CSS, _cells, _md_row, _num, _text


def _g(v, spec: str = ".4g") -> str:
    v = _num(v)
    return "-" if v is None else format(v, spec)


def _point(point: dict) -> str:
    return ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in point.items()) or "-"


def _ci(iv: dict | None) -> str:
    if not iv or iv.get("low") is None:
        return "- (one seed)" if iv else "-"
    return f"[{_g(iv['low'])}, {_g(iv['high'])}]"


def group_rows(data: dict) -> tuple[list[str], list[list[str]]]:
    chosen = set(data.get("chosen", {}).values())
    pct = round(100 * data.get("confidence", 0.95))
    head = ["arm", "setting", "seeds", f"mean {data['metric']}", f"{pct}% CI", "per seed", "s"]
    rows = []
    for g in data["groups"]:
        iv = g.get("interval")
        per_seed = ", ".join(f"{_g(v)}" for _, v in sorted(g.get("values", {}).items()))
        mark = " (chosen)" if g["group"] in chosen else ""
        rows.append(
            [
                g["arm"] + mark,
                _point(g["point"]),
                str(len(g.get("values", {}))),
                _g(iv["mean"]) if iv else "-",
                _ci(iv),
                per_seed or "-",
                _g(g.get("seconds"), ".0f"),
            ]
        )
    return head, rows


def comparison_rows(data: dict) -> tuple[list[str], list[list[str]]]:
    head = ["arm (chosen)", "vs baseline", "paired seeds", "mean difference", "CI", "verdict"]
    if data.get("teacher") is not None:
        head.append("gap recovered")
    rows = []
    groups = {g["group"]: g for g in data["groups"]}
    for c in data.get("comparisons", []):
        d = c["difference"]
        excl = d.get("low") is not None and (d["low"] > 0 or d["high"] < 0)
        verdict = "better" if c["better"] else "worse" if excl else "no clear difference"
        row = [
            f"{c['arm']} ({_point(groups[c['group']]['point'])})",
            f"{data['baseline']} ({_point(groups[c['baseline_group']]['point'])})",
            str(len(c["seeds"])),
            f"{d['mean']:+.4g}",
            _ci(d),
            verdict,
        ]
        if data.get("teacher") is not None:
            gr = _num(c.get("gap_recovered"))
            row.append("-" if gr is None else f"{100 * gr:.0f}%")
        rows.append(row)
    return head, rows


def _series(data: dict, key: str) -> dict[str, list]:
    """Per arm: (value of ``key``, mean, half width) over the points whose other keys are at
    the arm's chosen point."""
    groups = {g["group"]: g for g in data["groups"]}
    out: dict[str, list] = {}
    for arm, gname in data.get("chosen", {}).items():
        best = groups[gname]["point"]
        if key not in best:
            continue
        for g in data["groups"]:
            iv = g.get("interval")
            if g["arm"] != arm or not iv or key not in g["point"]:
                continue
            if all(g["point"][k] == v for k, v in best.items() if k != key):
                out.setdefault(arm, []).append((g["point"][key], iv["mean"], iv.get("half_width")))
    return out


def references(data: dict, key: str) -> dict[str, tuple[float, float | None]]:
    """Per arm whose chosen setting does not involve ``key`` (the student alone on a
    temperature plot): its chosen mean and interval half width, drawn as a band."""
    groups = {g["group"]: g for g in data["groups"]}
    out = {}
    for arm, gname in data.get("chosen", {}).items():
        g = groups[gname]
        if key not in g["point"] and g.get("interval"):
            out[arm] = (g["interval"]["mean"], g["interval"].get("half_width"))
    return out


def _notes(data: dict) -> list[str]:
    notes = []
    if data.get("selected_on") == "nothing to choose":
        notes.append("One setting per arm: nothing was chosen.")
    elif data.get("selected_on") == "test":
        notes.append(
            "Each arm's setting was chosen on the test metric (the cells report no validation "
            "metric): the chosen rows are optimistic."
        )
    else:
        notes.append("Each arm's setting was chosen on the validation split; test figures shown.")
    if data.get("missing"):
        notes.append(
            f"{len(data['missing'])} cell(s) not finished: {', '.join(data['missing'][:8])}"
            + (" ..." if len(data["missing"]) > 8 else "")
        )
    return notes


def render_sweep(results_path: Path, out_dir: Path) -> tuple[Path, Path]:
    """Write ``out_dir/sweep.html`` and ``out_dir/sweep.md`` (+ ``plots/sweep_*.png``)."""
    try:
        data = json.loads(Path(results_path).read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{results_path}: not a readable sweep results file ({exc})") from None
    if data.get("kind") != "kdistill-sweep":
        raise InputError(f"{results_path} is not a kdistill sweep results file")
    out_dir = Path(out_dir)
    figs = []
    for key in data.get("swept_keys", []):
        series = _series(data, key)
        if any(len(p) > 1 for p in series.values()):
            stem = "sweep_" + "".join(ch if ch.isalnum() else "_" for ch in key)
            title = f"{data['metric']} vs {key}"
            png = plots.sweep_metric(series, key, data["metric"], references(data, key))
            figs.append((stem, title, png))
    (out_dir / "plots").mkdir(parents=True, exist_ok=True)
    for stem, _, png in figs:
        atomic_write_bytes(out_dir / "plots" / f"{stem}.png", png)
    better = "higher" if data["goal"] == "max" else "lower"
    title = f"kdistill sweep: {data['metric']} ({better} is better)"
    tables = [("Every setting", group_rows(data))]
    if data.get("comparisons"):
        name = "Paired differences against the baseline (same seeds)"
        tables.append((name, comparison_rows(data)))
    notes = _notes(data)
    body = "".join(
        f"<h2>{_text(name)}</h2><table><tr>{_cells('th', head)}</tr>"
        + "".join(f"<tr>{_cells('td', r)}</tr>" for r in rows)
        + "</table>"
        for name, (head, rows) in tables
    )
    imgs = "".join(
        f'<h2>{_text(t)}</h2><img alt="{html.escape(t)}" '
        f'src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'
        for _, t, png in figs
    )
    page = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{_text(title)}</title><style>{CSS}</style></head><body>"
        f"<h1>{_text(title)}</h1>{body}{imgs}"
        + "".join(f'<p class="note">{_text(n)}</p>' for n in notes)
        + "</body></html>\n"
    )
    md = [f"# {title}", ""]
    for name, (head, rows) in tables:
        md += [f"## {name}", "", _md_row(head), "|" + "---|" * len(head)]
        md += [_md_row(r) for r in rows] + [""]
    md += [f"![{t}](plots/{stem}.png)" for stem, t, _ in figs] + [""] + notes + [""]
    html_path, md_path = out_dir / "sweep.html", out_dir / "sweep.md"
    atomic_write_text(html_path, page)
    atomic_write_text(md_path, "\n".join(md))
    return html_path, md_path
