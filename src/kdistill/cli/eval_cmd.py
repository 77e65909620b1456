"""``kdistill eval``: the teacher and models side by side on held-out data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kdistill.cli.options import DEVICE_HELP


def eval_(
    model: Annotated[
        list[str],
        typer.Option(
            "--model",
            help="NAME=SPEC (bundled name, .gguf, HF folder or trained classifier folder); "
            "repeatable",
        ),
    ],
    teacher: Annotated[str, typer.Option(help="the reference model (agreement, KL)")] = (
        "smollm2-135m"
    ),
    data: Annotated[
        str | None,
        typer.Option(
            help="LMs: kjv (default) or a .txt/.jsonl/.parquet file; "
            "classifiers: fashion-mnist (default)"
        ),
    ] = None,
    subset: Annotated[
        str | None, typer.Option(help="hub data sets: the subset, as the run's data.subset")
    ] = None,
    split: Annotated[str, typer.Option(help="hub data sets: the split, as data.split")] = "train",
    streaming: Annotated[
        bool, typer.Option(help="hub data sets: read the held-out rows as a stream")
    ] = False,
    block_size: Annotated[int, typer.Option(min=8)] = 256,
    held_out_fraction: Annotated[float, typer.Option(min=0.0, max=1.0)] = 0.05,
    validation_fraction: Annotated[
        float,
        typer.Option(min=0.0, max=1.0, help="LMs: the run's data.validation_fraction"),
    ] = 0.0,
    part: Annotated[
        str, typer.Option(help="LMs: score the held-out 'test' records or the 'validation' share")
    ] = "test",
    max_eval_tokens: Annotated[
        int, typer.Option(min=1, help="held-out tokens (LMs) or test images (classifiers)")
    ] = 8192,
    seed: Annotated[
        int,
        typer.Option(
            help="the run's seed: LMs are scored on its held-out split (the config's seed), "
            "classifiers draw their test images with it"
        ),
    ] = 0,
    out: Annotated[Path, typer.Option(help="results JSON to write")] = Path(
        "runs/eval/results.json"
    ),
    baseline: Annotated[
        list[str] | None,
        typer.Option(
            "--baseline",
            help="STUDENT=BASELINE: the same-size model trained without the teacher that "
            "STUDENT is compared with; repeatable (default: student=baseline)",
        ),
    ] = None,
    role: Annotated[
        list[str] | None,
        typer.Option(
            "--role",
            help="NAME=ROLE (student, baseline, assistant, variant); repeatable",
        ),
    ] = None,
    speed_budget: Annotated[
        float,
        typer.Option(
            min=1.0,
            help="seconds for the interleaved speed rounds (at least 3 rounds each)",
        ),
    ] = 30.0,
    own_samples: Annotated[
        int,
        typer.Option(
            min=0,
            help="LMs: held-out prompts each model samples from (0 = off); the teacher scores "
            "the samples: reverse KL, greedy agreement, entropy, distinct-2, length",
        ),
    ] = 0,
    own_max_new_tokens: Annotated[
        int, typer.Option(min=1, help="tokens sampled per prompt for --own-samples")
    ] = 32,
    own_prompt_tokens: Annotated[
        int, typer.Option(min=1, help="prompt length (tokens of a held-out block)")
    ] = 32,
    own_sampling_temperature: Annotated[
        float, typer.Option(min=0.0, help="sampling temperature for --own-samples")
    ] = 1.0,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "auto",
):
    """Evaluate the teacher and models on the held-out split (same split as training), all
    in one run: perplexity or accuracy, KL to the teacher, top-1 agreement, ECE, size,
    latency p50/p95, tokens/s, peak memory; optionally metrics on each LM's own samples."""
    from kdistill.pipeline.evaluate import run_eval

    run_eval(
        teacher,
        _pairs(model, "--model", "NAME=SPEC, e.g. student=runs/x/model"),
        data,
        block_size,
        held_out_fraction,
        max_eval_tokens,
        out,
        seed=seed,
        baselines=_pairs(baseline or [], "--baseline", "STUDENT=BASELINE"),
        roles=_pairs(role or [], "--role", "NAME=ROLE"),
        speed_budget_s=speed_budget,
        own_samples=None
        if not own_samples
        else {
            "prompts": own_samples,
            "prompt_tokens": own_prompt_tokens,
            "max_new_tokens": own_max_new_tokens,
            "sampling_temperature": own_sampling_temperature,
            "seed": seed,
        },
        device=device,
        validation_fraction=validation_fraction,
        part=part,
        source_parts={
            "subset": subset,
            "split": split,
            **({"streaming": True} if streaming else {}),
        },
    )


def _pairs(items: list[str], option: str, form: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise typer.BadParameter(f"{option} {item!r}: use {form}")
        out[key] = value
    return out
