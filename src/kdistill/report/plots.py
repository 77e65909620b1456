"""Matplotlib figures for the report, returned as PNG bytes (Agg backend, no display)."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

COLORS = {"teacher": "#4c72b0", "student": "#dd8452", "baseline": "#8c8c8c"}


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def retention_bars(retention: dict[str, float], quality_name: str) -> bytes:
    fig, ax = plt.subplots(figsize=(5, 3))
    names = list(retention)
    vals = [100 * retention[n] for n in names]
    bars = ax.bar(names, vals, color=[COLORS.get(n, "#55a868") for n in names])
    ax.axhline(100, color=COLORS["teacher"], ls="--", lw=1, label="teacher = 100%")
    for b, v in zip(bars, vals, strict=True):
        ax.text(b.get_x() + b.get_width() / 2, v, f"{v:.1f}%", ha="center", va="bottom")
    ax.set_ylabel(f"quality retained (%, {quality_name})")
    ax.set_ylim(0, max(105, max(vals) * 1.15))
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title("Quality retained vs the teacher")
    return _png(fig)


def size_quality_scatter(
    points: dict[str, tuple[float, float]], quality_name: str, log_y: bool
) -> bytes:
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for i, (name, (params, q)) in enumerate(points.items()):
        ax.scatter(params / 1e6, q, s=80, color=COLORS.get(name, "#55a868"), label=name)
        # alternate label offsets so same-size models (student, baseline) stay readable
        ax.annotate(
            name, (params / 1e6, q), textcoords="offset points", xytext=(8, 6 if i % 2 else -12)
        )
    ax.set_xlabel("parameters (M)")
    ax.set_ylabel(quality_name)
    if log_y:
        ax.set_yscale("log")
    ax.set_title("Size vs quality")
    ax.grid(alpha=0.3)
    return _png(fig)


def training_curves(logs: dict[str, list[dict]]) -> bytes:
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.3))
    for name, rows in logs.items():
        steps = [r["step"] for r in rows]
        c = COLORS.get(name)
        axes[0].plot(steps, [r.get("loss") for r in rows], label=name, color=c)
        axes[1].plot(steps, [r.get("soft_loss") for r in rows], label=name, color=c)
        axes[2].plot(steps, [r.get("hard_loss") for r in rows], label=name, color=c)
    for ax, title in zip(
        axes, ("total loss", "soft loss (D per target)", "hard loss (CE)"), strict=True
    ):
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _png(fig)


def schedules(logs: dict[str, list[dict]]) -> bytes:
    fig, ax = plt.subplots(figsize=(8, 3))
    for name, rows in logs.items():
        steps = [r["step"] for r in rows]
        for key, ls in (("kd_temperature", "-"), ("soft_weight", "--"), ("hard_weight", ":")):
            if any(key in r for r in rows):
                ax.plot(
                    steps,
                    [r.get(key) for r in rows],
                    ls=ls,
                    label=f"{name}: {key}",
                    color=COLORS.get(name),
                )
    ax.set_xlabel("step")
    ax.set_title("Temperature and weight schedules")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return _png(fig)


def reliability(bins_by_model: dict[str, dict]) -> bytes:
    n = len(bins_by_model)
    fig, axes = plt.subplots(1, n, figsize=(3.4 * n, 3.2), squeeze=False)
    for ax, (name, b) in zip(axes[0], bins_by_model.items(), strict=True):
        k = len(b["counts"])
        centers = [(i + 0.5) / k for i in range(k)]
        acc = [c / n_ if n_ else 0 for c, n_ in zip(b["correct_sums"], b["counts"], strict=True)]
        ax.bar(
            centers,
            acc,
            width=1 / k,
            color=COLORS.get(name, "#55a868"),
            alpha=0.8,
            edgecolor="white",
        )
        ax.plot([0, 1], [0, 1], "k--", lw=1)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_title(f"{name}: reliability")
        ax.set_xlabel("confidence")
        ax.set_ylabel("accuracy")
    return _png(fig)
