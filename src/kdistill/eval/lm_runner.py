"""Evaluate any number of causal LMs side by side.

* Teacher-forced quality on the held-out blocks (perplexity, KL to the teacher, top-1
  agreement, ECE), for every model that shares the teacher's tokenizer; the teacher's logits
  come from the same :class:`~kdistill.teachers.model.ModelTeacher` training uses.
* Bits per byte for every model, each with its own tokenizer, on the same character spans
  (:mod:`kdistill.eval.bits`): comparable across tokenizers.
* Agreement on text with the teacher: greedy continuations of the same prompts
  (:mod:`kdistill.eval.text_agreement`), also across tokenizers.
* Speed by the interleaved protocol (:mod:`kdistill.eval.speed`): forward latency of one
  sequence and greedy generation, all models timed in turn over several rounds within a
  time budget; raw per-round seconds kept in ``speed_raw``.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import torch
from rich.progress import track

from kdistill.eval import metrics, resources, speed
from kdistill.eval.bits import LN2, bits_per_byte, token_byte_counts, window_plan
from kdistill.eval.text_agreement import prefix_agreement
from kdistill.models.loading import count_params
from kdistill.models.placement import device_of, on_model
from kdistill.models.vocab import tokenizer_fingerprint
from kdistill.teachers.base import Want
from kdistill.teachers.model import ModelTeacher

GENERATE_TOKENS = 32
LATENCY_TOKENS = 256


def _pad_id(model) -> int | None:
    pad = getattr(model.generation_config, "eos_token_id", None)
    return pad[0] if isinstance(pad, list) else pad


def _generate(model, prompt: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """Exactly ``new_tokens`` greedy tokens after ``prompt`` ``(1, L)`` (KV cache on)."""
    return model.generate(
        on_model(prompt, model),
        do_sample=False,
        min_new_tokens=new_tokens,
        max_new_tokens=new_tokens,
        pad_token_id=_pad_id(model),
    )


def _start_id(tokenizer) -> int:
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else None
    start = tokenizer.eos_token_id if start is None else start
    if start is None:
        raise ValueError("bits per byte needs a BOS or EOS token as the start context")
    return start


@torch.no_grad()
def score_span(model, tokenizer, text: str, window: int) -> tuple[float, int, int]:
    """``(bits, bytes, tokens)`` of ``model`` on ``text`` (see :mod:`kdistill.eval.bits`)."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    seq = on_model(torch.tensor([_start_id(tokenizer), *ids]), model)
    nats = 0.0
    for start, end, first in window_plan(len(ids), window):
        # the head on the scored rows only (positions first - 1 .. end - 2; the last kept one
        # predicts past the window), in fp64 for exact sums
        keep = end - first + 1
        logits = model(input_ids=seq[start:end][None], logits_to_keep=keep).logits[0, :-1]
        rows = torch.log_softmax(logits.double(), dim=-1)
        nats -= float(rows.gather(1, seq[first:end, None]).sum())
    return nats / LN2, sum(token_byte_counts(text, offsets)), len(ids)


def _text_of(tokenizer, ids: torch.Tensor) -> str:
    return tokenizer.decode(ids.tolist(), skip_special_tokens=True)


@torch.no_grad()
def _continuation(model, tokenizer, prompt: str, n_chars: int) -> str:
    """The greedy continuation of ``prompt``, cut to ``n_chars`` characters (``n_chars / 2``
    tokens: enough at >= 2 characters per token; a shorter text compares as ended there)."""
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    ids = on_model(ids, model)
    new = max(8, n_chars // 2)
    out = model.generate(ids, do_sample=False, max_new_tokens=new, pad_token_id=_pad_id(model))
    return _text_of(tokenizer, out[0, ids.shape[1] :])[:n_chars]


def _quality(models, teacher_name, batches, vocab_size, names) -> dict[str, dict]:
    """Teacher-forced metrics on the held-out blocks for ``names`` (teacher's tokenizer)."""
    n_bins = 15
    acc = {
        n: {
            "nll": 0.0,
            "count": 0,
            "kl": 0.0,
            "agree": 0,
            "bins": ([0] * n_bins, [0.0] * n_bins, [0.0] * n_bins),
        }
        for n in names
    }
    teacher = ModelTeacher(models[teacher_name])
    here = device_of(models[teacher_name])  # the metrics run where the teacher's logits are
    for batch in track(batches, description="evaluating"):
        flat_labels = batch["shift_labels"].reshape(-1).to(here)
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        logits_by = {}
        for name in names:
            if name == teacher_name:  # the same teacher forward as training and caching use
                logits = teacher.signal(inputs, want=Want()).logits
            else:
                logits = models[name](**on_model(inputs, models[name])).logits
            logits_by[name] = logits[..., :vocab_size].reshape(-1, vocab_size).to(here)
        t_side = metrics.TeacherSide(logits_by[teacher_name])
        for name, lg in logits_by.items():
            a = acc[name]
            sums = metrics.lm_sums(t_side, lg, flat_labels)
            for key in ("nll", "count", "kl", "agree"):
                a[key] += sums[key]
            bins = metrics.calibration_bins(sums["confidence"], sums["correct"], n_bins)
            for total, part in zip(a["bins"], bins, strict=True):
                for k, v in enumerate(part):
                    total[k] += v
    out = {}
    for name, a in acc.items():
        counts, conf_sums, correct_sums = a["bins"]
        n = max(a["count"], 1)
        out[name] = {
            "perplexity": metrics.perplexity(a["nll"], a["count"]),
            "nll": a["nll"] / n,
            "kl_to_teacher": a["kl"] / n,
            "top1_agreement": a["agree"] / n,
            "eval_tokens": a["count"],
            "ece": metrics.expected_calibration_error(counts, conf_sums, correct_sums),
            "reliability": {"counts": counts, "conf_sums": conf_sums, "correct_sums": correct_sums},
        }
    return out


def speed_figures(models, probes, budget_s: float) -> dict[str, dict]:
    """Interleaved forward latency (one sequence) and greedy generation, per model."""
    half = budget_s / 2
    fwd = speed.interleaved(
        {n: (lambda m=m, p=probes[n]: m(input_ids=p)) for n, m in models.items()},
        budget_s=half,
    )
    gen = speed.interleaved(
        {
            n: (lambda m=m, p=probes[n][:, :32]: _generate(m, p, GENERATE_TOKENS))
            for n, m in models.items()
        },
        budget_s=half,
    )
    out = {}
    for name in models:
        tokens = int(probes[name].shape[1])
        f, g = speed.summary(fwd[name], tokens), speed.summary(gen[name], GENERATE_TOKENS)
        ordered = sorted(fwd[name])
        out[name] = {
            "forward_tokens_per_s": f["rate"],
            "forward_tokens_per_s_spread": f["spread"],
            "latency_p50_s": statistics.median(ordered),
            "latency_p95_s": resources.percentile(ordered, 0.95),
            "latency_input_tokens": tokens,
            "generate_tokens_per_s": g["rate"],
            "generate_tokens_per_s_spread": g["spread"],
            "speed_raw": {"forward_s": fwd[name], "generate_s": gen[name]},
            "speed_repeats": {"forward": f["repeats"], "generate": g["repeats"]},
        }
    return out


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
    tokenizers: dict | None = None,
    documents: list[str] | None = None,
    prompts: list[str] | None = None,
    window: int = 256,
    agreement_chars: int = 48,
    speed_budget_s: float = 30.0,
    own_samples: dict | None = None,
    quality_only: bool = False,
) -> dict[str, dict]:
    """Per model: quality, bits per byte, agreement on text, size, speed, peak memory
    (``quality_only``: the teacher-forced figures alone, as a sweep's cells need).

    ``dataset`` (held-out blocks) is tokenized with the teacher's tokenizer: models whose
    tokenizer differs (``tokenizers``: name -> tokenizer; default all the teacher's) get no
    teacher-forced metrics. ``documents``: held-out text spans for bits per byte; ``prompts``:
    texts the models continue greedily for agreement on text (both need ``tokenizers``).
    ``own_samples``: ``{prompts, prompt_tokens, max_new_tokens, sampling_temperature, top_p,
    seed}`` adds :mod:`kdistill.eval.own_samples` figures for the models with the teacher's
    tokenizer (prompts: the first ``prompt_tokens`` tokens of the first held-out blocks).
    """
    for m in models.values():
        m.eval()
    toks = tokenizers or {}
    t_print = tokenizer_fingerprint(toks[teacher_name]) if teacher_name in toks else None
    prints = {n: tokenizer_fingerprint(t) for n, t in toks.items()}
    same = [n for n in models if n not in prints or prints[n] == t_print]
    batches = [
        collate([dataset[j] for j in range(i, min(i + batch_size, len(dataset)))])
        for i in range(0, len(dataset), batch_size)
    ]
    results = {n: {} for n in models}
    for name, r in _quality(models, teacher_name, batches, vocab_size, same).items():
        results[name].update(r)
    for name in models:
        results[name]["same_tokenizer_as_teacher"] = name in same
        if name in prints:
            results[name]["tokenizer"] = prints[name]
    if quality_only:
        return results
    if documents and toks:
        for name, model in models.items():
            bits = n_bytes = n_tok = 0
            for doc in track(documents, description=f"bits per byte: {name}"):
                b, nb, nt = score_span(model, toks[name], doc, window)
                bits, n_bytes, n_tok = bits + b, n_bytes + nb, n_tok + nt
            results[name].update(
                bits_per_byte=bits_per_byte(bits, n_bytes),
                bpb_bytes=n_bytes,
                bpb_tokens=n_tok,
                bpb_documents=len(documents),
            )
    if prompts and toks:
        ref = [
            _continuation(models[teacher_name], toks[teacher_name], p, agreement_chars)
            for p in prompts
        ]
        for name, model in models.items():
            if name == teacher_name:
                results[name]["text_agreement"] = 1.0
                continue
            got = [_continuation(model, toks[name], p, agreement_chars) for p in prompts]
            shares = [
                prefix_agreement(a, b, agreement_chars) for a, b in zip(ref, got, strict=True)
            ]
            results[name]["text_agreement"] = sum(shares) / len(shares)
            results[name]["text_agreement_chars"] = agreement_chars
    if own_samples and own_samples.get("prompts"):
        for name, r in _own_samples(
            models, teacher_name, dataset, same, own_samples, vocab_size
        ).items():
            results[name].update(r)
    probes = {
        n: on_model(p, models[n])
        for n, p in _probes(models, toks, batches, documents, same).items()
    }
    for name, r in speed_figures(models, probes, speed_budget_s).items():
        results[name].update(r)
    for name, model in models.items():
        probe = probes[name]
        results[name].update(
            params=count_params(model),
            size_bytes=resources.dir_size((model_dirs or {}).get(name)),
            **resources.peak_forward_memory(model, lambda m=model, p=probe: m(input_ids=p)),
        )
    return results


def _own_samples(models, teacher_name, dataset, same, settings, vocab_size) -> dict[str, dict]:
    from kdistill.eval.own_samples import own_sample_figures

    settings = dict(settings)
    n, width = settings.pop("prompts"), settings.pop("prompt_tokens", 32)
    n = min(n, len(dataset))
    prompts = [dataset[i]["input_ids"][:width] for i in range(n)]
    teacher = models[teacher_name]
    eos = _pad_id(teacher)
    pad = getattr(teacher.generation_config, "pad_token_id", None)
    figures = own_sample_figures(
        {m: models[m] for m in same},
        teacher_name,
        prompts,
        vocab_size=vocab_size,
        pad_id=eos if pad is None else pad,
        eos_ids=() if eos is None else (eos,),
        **settings,
    )
    for r in figures.values():
        r["own_sample_settings"]["prompt_tokens"] = width
    return figures


def _probes(models, toks, batches, documents, same) -> dict[str, torch.Tensor]:
    """One ``(1, L)`` input per model for the speed figures: the first held-out block for
    models with the teacher's tokenizer, else the model's own tokens of the same held-out
    text (as many as the block has, at least 33), cut to ``LATENCY_TOKENS``."""
    block = batches[0]["input_ids"][:1, :LATENCY_TOKENS]
    out = {}
    for name in models:
        tok = toks.get(name)
        if name in same or tok is None or not documents:
            out[name] = block
            continue
        ids = tok("\n".join(documents), add_special_tokens=False)["input_ids"] or [0]
        ids = (ids * (1 + 33 // len(ids)))[: max(block.shape[1], 33)]  # >= 33 for generation
        out[name] = torch.tensor([ids])
    return out
