"""Evaluate several image classifiers on the same held-out examples, in one process."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch

from kdistill.eval import metrics, resources, speed
from kdistill.models.placement import on_model

EVAL_BATCH = 512


def _logits(out) -> torch.Tensor:
    return out.logits if hasattr(out, "logits") else out


@torch.no_grad()
def predict(model: torch.nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, float]:
    """(logits (N, C), seconds) over images (N, 1, 28, 28) in batches of ``EVAL_BATCH``."""
    model.eval()
    t0 = time.perf_counter()
    chunks = []
    for i in range(0, len(images), EVAL_BATCH):
        out = model(pixel_values=on_model(images[i : i + EVAL_BATCH], model))
        chunks.append(_logits(out).float().cpu())
    return torch.cat(chunks), time.perf_counter() - t0


def _size(where) -> int | None:
    """Bytes of a model folder's weights; of every member's for an ensemble (a list)."""
    if isinstance(where, list | tuple):
        sizes = [resources.dir_size(w) for w in where]
        return None if None in sizes else sum(sizes)
    return resources.dir_size(where)


def evaluate_classifiers(
    models: dict[str, torch.nn.Module],
    teacher_name: str | None,
    held,
    *,
    model_dirs: dict[str, Path | None] | None = None,
    class_names: list[str] | None = None,
    budget_s: float = 5.0,
) -> dict[str, dict]:
    """Per model: accuracy, per-class accuracy, ECE (+ bins), params, size, latency p50/p95
    for one image, peak memory, examples/s; against ``models[teacher_name]``: top-1
    agreement, KL(teacher || model) at T = 1 and accuracy retention (model / teacher)."""
    from kdistill.models.loading import count_params

    x, y = held.images, held.labels
    logits = {name: predict(m, x)[0] for name, m in models.items()}
    n_classes = next(iter(logits.values())).shape[-1]
    valid = torch.ones_like(y, dtype=torch.bool)
    one, batch = x[:1], x[:EVAL_BATCH]
    # speed by the interleaved protocol (kdistill.eval.speed): one batch and one image per
    # model, all models in turn, warm-up excluded
    with torch.no_grad():
        thru = speed.interleaved(
            {n: (lambda m=m: predict(m, batch)) for n, m in models.items()}, budget_s=budget_s
        )
        lat = speed.interleaved(
            {n: (lambda m=m: m(pixel_values=one)) for n, m in models.items()},
            min_repeats=20,
            max_repeats=200,
            budget_s=budget_s,
        )
    out = {}
    for name, lg in logits.items():
        model = models[name]
        probe = on_model(one, model)
        pred = lg.argmax(-1)
        correct = pred == y
        counts, conf_sums, correct_sums = metrics.calibration_bins(
            torch.softmax(lg, -1).max(-1).values, correct
        )

        def forward(m=model, p=probe):
            return m(pixel_values=p)

        ordered = sorted(lat[name])
        p50, p95 = statistics.median(ordered), resources.percentile(ordered, 0.95)
        rate = speed.summary(thru[name], len(batch))
        r = {
            "accuracy": float(correct.float().mean()),
            "per_class_accuracy": [
                float(correct[y == c].float().mean()) if bool((y == c).any()) else None
                for c in range(n_classes)
            ],
            "ece": metrics.expected_calibration_error(counts, conf_sums, correct_sums),
            "reliability": {
                "counts": counts,
                "conf_sums": conf_sums,
                "correct_sums": correct_sums,
            },
            "params": count_params(model),
            "size_bytes": _size((model_dirs or {}).get(name)),
            "examples_per_s": rate["rate"],
            "examples_per_s_spread": rate["spread"],
            "speed_raw": {"batch_s": thru[name], "latency_s": lat[name]},
            "latency_p50_s": p50,
            "latency_p95_s": p95,
            "latency_input": "1 image 1x28x28",
            "eval_examples": len(y),
            "class_names": list(class_names) if class_names else None,
            **resources.peak_forward_memory(model, forward),
        }
        if teacher_name is not None:
            t = logits[teacher_name]
            r["top1_agreement"] = metrics.agreement_count(t, lg, valid) / len(y)
            r["kl_to_teacher"] = metrics.kl_sum(t, lg, valid) / len(y)
        out[name] = r
    if teacher_name is not None and out[teacher_name]["accuracy"] > 0:
        for name, r in out.items():
            if name != teacher_name:
                r["accuracy_retention"] = r["accuracy"] / out[teacher_name]["accuracy"]
    return out
