"""`kdistill eval`: teacher and any number of models on the same held-out blocks."""

from __future__ import annotations

import json
import os
from pathlib import Path

from rich.console import Console
from rich.table import Table


def run_eval(
    teacher_spec: str,
    specs: dict[str, str],
    data: str,
    block_size: int,
    held_out_fraction: float,
    max_eval_tokens: int,
    out: Path,
) -> dict:
    from kdistill.data.lm import CausalCollator, build_lm_datasets
    from kdistill.eval.lm_runner import evaluate_lms
    from kdistill.models.loading import load_causal_lm, resolve_model_path
    from kdistill.models.vocab import shared_vocab_size

    if "teacher" in specs:
        raise ValueError("--model teacher=... is reserved; name the teacher with --teacher")
    teacher, tok = load_causal_lm(teacher_spec, frozen=True)
    models, dirs = {"teacher": teacher}, {"teacher": resolve_model_path(teacher_spec)[0]}
    for name, spec in specs.items():
        m, m_tok = load_causal_lm(spec, frozen=True)
        shared_vocab_size(
            tok,
            m_tok,
            teacher.get_output_embeddings().weight.shape[0],
            m.get_output_embeddings().weight.shape[0],
        )
        models[name] = m
        dirs[name] = resolve_model_path(spec)[0]
    _, held = build_lm_datasets(
        tok,
        data,
        block_size=block_size,
        held_out_fraction=held_out_fraction,
        max_eval_tokens=max_eval_tokens,
        max_train_tokens=block_size,
    )
    results = evaluate_lms(
        models,
        "teacher",
        held,
        CausalCollator(tok.pad_token_id),
        vocab_size=len(tok),
        model_dirs=dirs,
    )
    for name, r in results.items():
        r["model"] = teacher_spec if name == "teacher" else specs[name]
        if name != "teacher":
            r["perplexity_retention"] = results["teacher"]["perplexity"] / r["perplexity"]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=2))
    os.replace(tmp, out)
    table = results_table(results, f"held-out {data} ({results['teacher']['eval_tokens']} tokens)")
    Console().print(table)
    Console().print(f"results: {out}")
    return results


def results_table(results: dict, title: str) -> Table:
    """A rich table of LM results: params, perplexity, KL, agreement, ECE, tokens/s."""
    table = Table(title=title)
    for col in (
        "model",
        "params (M)",
        "perplexity",
        "KL to teacher",
        "top-1 agree",
        "ECE",
        "tok/s",
    ):
        table.add_column(col, justify="right")
    for name, r in results.items():
        speed = r.get("forward_tokens_per_s")
        table.add_row(
            name,
            f"{r['params'] / 1e6:.1f}",
            f"{r['perplexity']:.2f}",
            f"{r['kl_to_teacher']:.3f}",
            f"{r['top1_agreement']:.1%}",
            f"{r['ece']:.3f}" if r.get("ece") is not None else "-",
            f"{speed:.0f}" if speed else "-",
        )
    return table
