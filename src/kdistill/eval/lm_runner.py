"""Evaluate several causal LMs on the same held-out blocks; teacher logits computed once."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from rich.progress import track

from kdistill.eval import metrics, resources
from kdistill.teachers.base import Want
from kdistill.teachers.model import ModelTeacher


@torch.no_grad()
def _generation_speed(model, prompt: torch.Tensor, new_tokens: int = 32) -> float:
    """Greedy tokens/s with the KV cache, after one warm-up call."""
    kwargs = {"do_sample": False, "min_new_tokens": new_tokens, "max_new_tokens": new_tokens}
    pad = getattr(model.generation_config, "eos_token_id", None)
    if isinstance(pad, list):
        pad = pad[0]
    model.generate(prompt, max_new_tokens=2, do_sample=False, pad_token_id=pad)
    t0 = time.perf_counter()
    model.generate(prompt, pad_token_id=pad, **kwargs)
    return new_tokens / (time.perf_counter() - t0)


@torch.no_grad()
def evaluate_lms(
    models: dict[str, torch.nn.Module],
    teacher_name: str,
    dataset,
    collate,
    *,
    vocab_size: int,
    batch_size: int = 4,
    model_dirs: dict[str, Path | None] | None = None,
) -> dict[str, dict]:
    """Held-out metrics per model: perplexity, KL(teacher||model), top-1 agreement, speed.

    Returns ``{name: {perplexity, nll, kl_to_teacher, top1_agreement, params, ...}}``.
    """
    from kdistill.models.loading import count_params

    for m in models.values():
        m.eval()
    teacher = ModelTeacher(models[teacher_name])
    n_bins = 15
    acc = {
        n: {
            "nll": 0.0,
            "count": 0,
            "kl": 0.0,
            "agree": 0,
            "seconds": 0.0,
            "bins": ([0] * n_bins, [0.0] * n_bins, [0.0] * n_bins),
        }
        for n in models
    }
    batches = [
        collate([dataset[j] for j in range(i, min(i + batch_size, len(dataset)))])
        for i in range(0, len(dataset), batch_size)
    ]
    for bi, batch in enumerate(track(batches, description="evaluating")):
        labels = batch["shift_labels"]
        valid = labels != -100
        flat_valid = valid.reshape(-1)
        flat_labels = labels.reshape(-1)
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        logits_by = {}
        for name, model in models.items():
            t0 = time.perf_counter()
            if name == teacher_name:  # the same teacher forward as training and caching use
                logits = teacher.signal(inputs, want=Want()).logits
            else:
                logits = model(**inputs).logits
            if bi > 0:  # first batch is warm-up
                acc[name]["seconds"] += time.perf_counter() - t0
            logits_by[name] = logits[..., :vocab_size].reshape(-1, vocab_size)
        t_logits = logits_by[teacher_name]
        for name, lg in logits_by.items():
            nll, cnt = metrics.nll_sum(lg, flat_labels)
            acc[name]["nll"] += nll
            acc[name]["count"] += cnt
            acc[name]["kl"] += metrics.kl_sum(t_logits, lg, flat_valid)
            acc[name]["agree"] += metrics.agreement_count(t_logits, lg, flat_valid)
            probs = torch.softmax(lg[flat_valid].float(), dim=-1)
            conf, pred = probs.max(-1)
            bins = metrics.calibration_bins(conf, pred == flat_labels[flat_valid], n_bins)
            for total, part in zip(acc[name]["bins"], bins):
                for k, v in enumerate(part):
                    total[k] += v
    timed_tokens = (
        sum(int(b["attention_mask"].sum()) for b in batches[1:]) if len(batches) > 1 else 0
    )
    probe = batches[0]["input_ids"][:1]
    results = {}
    for name, model in models.items():
        a = acc[name]
        p50, p95 = resources.latency(lambda m=model: m(input_ids=probe))
        counts, conf_sums, correct_sums = a["bins"]
        results[name] = {
            "perplexity": metrics.perplexity(a["nll"], a["count"]),
            "nll": a["nll"] / max(a["count"], 1),
            "kl_to_teacher": a["kl"] / max(a["count"], 1),
            "top1_agreement": a["agree"] / max(a["count"], 1),
            "eval_tokens": a["count"],
            "params": count_params(model),
            "size_bytes": resources.dir_size((model_dirs or {}).get(name)),
            "forward_tokens_per_s": timed_tokens / a["seconds"] if a["seconds"] else None,
            "latency_p50_s": p50,
            "latency_p95_s": p95,
            "latency_input_tokens": int(probe.shape[1]),
            "generate_tokens_per_s": _generation_speed(model, probe[:, :32]),
            "ece": metrics.expected_calibration_error(counts, conf_sums, correct_sums),
            "reliability": {"counts": counts, "conf_sums": conf_sums, "correct_sums": correct_sums},
            **resources.peak_forward_memory(model, lambda m=model: m(input_ids=probe)),
        }
    return results
