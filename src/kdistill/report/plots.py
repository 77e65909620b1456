"""Matplotlib figures for the report, each returned as PNG bytes.

Figures are drawn on an explicit Agg canvas (``matplotlib.figure.Figure`` + ``FigureCanvasAgg``),
never through pyplot, so rendering a report neither needs a display nor changes the backend
or global figure state of the process that calls it.
"""

from __future__ import annotations

import io
import math

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

COLORS = {"teacher": "#4c72b0", "student": "#dd8452", "baseline": "#8c8c8c"}
LINESTYLES = ("-", "--", ":", "-.")  # per run, so identical curves stay visible
PLAIN = FuncFormatter(lambda v, _: f"{v:g}")
# log-axis minor ticks: label 2x, 3x, 5x only, in plain numbers (not 6x10^1)
SPARSE = FuncFormatter(lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in "235" else "")
OTHER = ("#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#ccb974", "#64b5cd")


def color(name: str, i: int = 0) -> str:
    return COLORS.get(name, OTHER[i % len(OTHER)])


def _figure(w: float, h: float) -> Figure:
    fig = Figure(figsize=(w, h))
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    return buf.getvalue()


def _legend(ax, **kw) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**kw)


def _series(rows: list[dict], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of the rows where ``key`` is a finite number."""
    xs, ys = [], []
    for i, r in enumerate(rows):
        v = r.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            xs.append(r.get("step", i))
            ys.append(float(v))
    return xs, ys


def retention_bars(retention: dict[str, float], definition: str) -> bytes:
    fig = _figure(5, 3.2)
    ax = fig.subplots()
    names = list(retention)
    vals = [100 * retention[n] for n in names]
    bars = ax.bar(names, vals, color=[color(n, i) for i, n in enumerate(names)])
    ax.axhline(100, color=COLORS["teacher"], ls="--", lw=1)
    # the line's label sits outside the axes, where no bar value can collide with it
    ax.text(
        1.01,
        100,
        "teacher\n= 100%",
        transform=ax.get_yaxis_transform(),
        color=COLORS["teacher"],
        fontsize=8,
        va="center",
        ha="left",
    )
    for b, v in zip(bars, vals):
        ax.text(b.get_x() + b.get_width() / 2, v, f"{v:.1f}%", ha="center", va="bottom")
    ax.set_ylabel("quality retained (%)")
    ax.set_ylim(0, max(110, max(vals) * 1.15))
    ax.set_title(f"Quality retained vs the teacher\n({definition})", fontsize=10)
    return _png(fig)


def size_quality_scatter(
    points: dict[str, tuple[float, float]], quality_name: str, log_x: bool, log_y: bool
) -> bytes:
    fig = _figure(5, 3.4)
    ax = fig.subplots()
    for i, (name, (params, q)) in enumerate(points.items()):
        ax.scatter(params / 1e6, q, s=80, color=color(name, i), label=name, zorder=3)
        # models of (nearly) the same size: label the higher point above, the lower below
        near = [v for p, v in points.values() if abs(p - params) <= 0.05 * params]
        rank = sorted(near).index(q)
        dy = 0 if len(near) == 1 else (8 if rank == len(near) - 1 else -14 if rank == 0 else -3)
        ax.annotate(name, (params / 1e6, q), textcoords="offset points", xytext=(9, dy))
    ax.set_xlabel("parameters (M)" + (", log scale" if log_x else ""))
    ax.set_ylabel(quality_name + (", log scale" if log_y else ""))
    for on, axis, set_scale in ((log_x, ax.xaxis, ax.set_xscale), (log_y, ax.yaxis, ax.set_yscale)):
        if on:
            set_scale("log")
            axis.set_major_formatter(PLAIN)
            axis.set_minor_formatter(SPARSE)
    ax.margins(x=0.25, y=0.15)
    ax.set_title("Size vs quality")
    ax.grid(alpha=0.3, which="both")
    return _png(fig)


def curve_panels(logs: dict[str, list[dict]]) -> dict[str, str]:
    """``{log key: panel title}``: total, soft (kd) and hard (ce), then one panel per extra
    loss term a run logged (``<name>_loss``, e.g. ``hidden_loss``)."""
    titles = {"loss": "total loss", "soft_loss": "soft loss (kd)", "hard_loss": "hard loss (ce)"}
    extra = sorted(
        {
            k
            for rows in logs.values()
            for r in rows
            for k in r
            if k.endswith("_loss") and k not in titles and k != "train_loss"
        }
    )
    titles.update({k: f"{k[: -len('_loss')]} term" for k in extra})
    return titles


def training_curves(logs: dict[str, list[dict]]) -> bytes:
    titles = curve_panels(logs)
    fig = _figure(4 * len(titles), 3.3)
    axes = fig.subplots(1, len(titles))
    for ax, (key, title) in zip(axes, titles.items()):
        for i, (name, rows) in enumerate(logs.items()):
            xs, ys = _series(rows, key)
            if xs:
                ls = LINESTYLES[i % len(LINESTYLES)]
                ax.plot(xs, ys, label=name, color=color(name, i), ls=ls, lw=1.8)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        _legend(ax, fontsize=8)
    return _png(fig)


def schedules(logs: dict[str, list[dict]]) -> bytes:
    fig = _figure(12, 3.0)
    axes = fig.subplots(1, 3)
    keys = ("kd_temperature", "soft_weight", "hard_weight")
    for ax, key in zip(axes, keys):
        for i, (name, rows) in enumerate(logs.items()):
            xs, ys = _series(rows, key)
            if xs:
                ls = LINESTYLES[i % len(LINESTYLES)]
                ax.plot(xs, ys, label=name, color=color(name, i), ls=ls, lw=1.8)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        _legend(ax, fontsize=8)
    return _png(fig)


def reliability(bins_by_model: dict[str, dict], ece: dict[str, float | None]) -> bytes:
    """Per-model accuracy (bars) and mean confidence (dots) per confidence bin; empty bins
    are left blank rather than drawn as accuracy 0."""
    n = len(bins_by_model)
    fig = _figure(3.4 * n, 3.3)
    axes = fig.subplots(1, n, squeeze=False)[0]
    for i, (ax, (name, b)) in enumerate(zip(axes, bins_by_model.items())):
        k = len(b["counts"])
        full = [j for j in range(k) if b["counts"][j]]
        centers = [(j + 0.5) / k for j in full]
        acc = [b["correct_sums"][j] / b["counts"][j] for j in full]
        conf = [b["conf_sums"][j] / b["counts"][j] for j in full]
        ax.bar(centers, acc, width=1 / k, color=color(name, i), alpha=0.8, edgecolor="white")
        ax.plot(conf, acc, "k.", ms=4, label="mean confidence")
        ax.plot([0, 1], [0, 1], "k--", lw=1)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        e = ece.get(name)
        ax.set_title(f"{name}" + (f" (ECE {e:.3f})" if e is not None else ""), fontsize=10)
        ax.set_xlabel("confidence (top-1)")
        ax.set_ylabel("accuracy")
    return _png(fig)


def per_class_accuracy(per_class: dict[str, dict[str, float]]) -> bytes:
    classes = list(next(iter(per_class.values())))
    # wide enough for the bars, narrow enough that the page does not shrink the text
    fig = _figure(min(10, max(5, 0.3 * len(classes) * len(per_class))), 3.4)
    ax = fig.subplots()
    width = 0.8 / len(per_class)
    for i, (name, accs) in enumerate(per_class.items()):
        xs = [c + (i - (len(per_class) - 1) / 2) * width for c in range(len(classes))]
        ax.bar(xs, [accs.get(c, 0.0) for c in classes], width, label=name, color=color(name, i))
    if max(len(c) for c in classes) > 3:  # names, not indices: slant them
        ax.set_xticks(range(len(classes)), classes, rotation=30, ha="right")
    else:
        ax.set_xticks(range(len(classes)), classes)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("class")
    ax.set_ylabel("accuracy")
    ax.set_title("Per-class accuracy")
    _legend(ax, fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _png(fig)


def sweep_metric(
    series: dict[str, list[tuple[float | str, float, float | None]]],
    key: str,
    metric: str,
    references: dict[str, tuple[float, float | None]] | None = None,
) -> bytes:
    """``metric`` against one swept ``key``, one line per arm (the other keys at the arm's
    chosen values): points are means, bars the confidence interval's half width;
    ``references``: arms without ``key`` (mean, half width), drawn as horizontal bands."""
    fig = _figure(5, 3.4)
    ax = fig.subplots()
    for j, (arm, (mean, half)) in enumerate((references or {}).items()):
        c = color(arm, len(series) + j)
        ax.axhline(
            mean, color=c, linestyle="--", linewidth=1, label=f"{arm} (no {key.rsplit('.', 1)[-1]})"
        )
        if half:
            ax.axhspan(mean - half, mean + half, color=c, alpha=0.15)
    numeric = all(isinstance(x, (int, float)) for pts in series.values() for x, _, _ in pts)
    labels = sorted({str(x) for pts in series.values() for x, _, _ in pts})
    for i, (arm, pts) in enumerate(series.items()):
        pts = sorted(pts, key=lambda p: p[0] if numeric else labels.index(str(p[0])))
        xs = [p[0] if numeric else labels.index(str(p[0])) for p in pts]
        ys = [p[1] for p in pts]
        err = [p[2] or 0.0 for p in pts]
        ax.errorbar(
            xs,
            ys,
            yerr=err,
            marker="o",
            capsize=4,
            color=color(arm, i),
            label=arm,
            linestyle=LINESTYLES[i % len(LINESTYLES)],
        )
    if numeric and all(x > 0 for pts in series.values() for x, _, _ in pts):
        spread = [x for pts in series.values() for x, _, _ in pts]
        if max(spread) / min(spread) >= 10:
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(PLAIN)
    if not numeric:
        ax.set_xticks(range(len(labels)), labels)
    ax.set_xlabel(key)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} vs {key.rsplit('.', 1)[-1]}")
    ax.grid(alpha=0.3)
    _legend(ax, fontsize=8)
    return _png(fig)
