"""Every-k layers vs importance-ranked depth vs depth + width pruning, at equal parameter count,
after the demo's distillation budget (the demo config: SmolLM2-135M online teacher, 50 steps
of batch 4 x 256 KJV tokens), over data-order seeds; one `kdistill eval` of every student, each
arm's init before training, and the teacher on the same held-out chapters. Uniform and unigram
perplexities are printed beside as references. Writes benchmarks/results/prune_cpu.json.

  .venv/bin/python benchmarks/bench_prune.py [--seeds 0,1,2] [--out runs/bench_prune]

Runs are interleaved (all arms of a seed, in an order rotated per seed); a finished run is
skipped when the script is run again, so it can be extended seed by seed.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEMO = HERE.parent / "reproductions/demo_before_tuning.yaml"  # the settings measured at
KDISTILL = str(Path(sys.executable).with_name("kdistill"))
# equal parameters (67.25 M, the tied embedding counted once): 11 full-width layers, or 16 layers
# with 896 of the 1,536 MLP neurons (67.26 M)
ARMS = {
    "every3": "{every: 3}",
    "depth_bi": "{layers: 11}",
    "depth_width": "{layers: 16, intermediate_size: 896}",
}


def n_params(model) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def build_inits(out: Path) -> dict:
    """Each arm's student before training, saved for the evaluation; uniform and unigram
    perplexities of the held-out blocks as references."""
    import torch

    from kdistill.config.loader import load_config
    from kdistill.config.schema import StudentFromTeacher
    from kdistill.data.lm import build_lm_datasets
    from kdistill.models.loading import load_causal_lm
    from kdistill.models.student import build_student_from_teacher
    from kdistill.pipeline.distill_lm import calibration_blocks

    cfg = load_config(DEMO, [])
    teacher, tok = load_causal_lm(cfg.teacher.model, frozen=True)
    d = cfg.data
    train, held = build_lm_datasets(
        tok,
        d.source,
        block_size=d.block_size,
        held_out_fraction=d.held_out_fraction,
        max_eval_tokens=d.max_eval_tokens,
    )
    info = {"teacher_params": n_params(teacher), "arms": {}}
    for arm, spec in ARMS.items():
        folder = out / f"init_{arm}"
        import yaml

        kw = StudentFromTeacher(**yaml.safe_load(spec)).model_dump()
        kw.pop("model")
        calib = calibration_blocks(train, kw.pop("calibration_blocks"))
        t0 = time.perf_counter()
        student = build_student_from_teacher(teacher, calibration=calib, **kw)
        seconds = time.perf_counter() - t0
        info["arms"][arm] = {
            "params": n_params(student),
            "teacher_layers": student.config.kdistill_teacher_layers,
            "intermediate_size": student.config.intermediate_size,
            "build_seconds": seconds,
        }
        if student.kdistill_pruning is not None:
            info["arms"][arm]["layer_scores"] = student.kdistill_pruning["importance"]["layers"]
        if not (folder / "config.json").exists():
            student.save_pretrained(folder, safe_serialization=True)
            tok.save_pretrained(folder)
        print(arm, info["arms"][arm]["params"], info["arms"][arm]["teacher_layers"], flush=True)
    # references: uniform over the vocabulary; a unigram model of the training blocks
    counts = collections.Counter()
    for i in range(len(train)):
        counts.update(train[i]["input_ids"].tolist())
    total, vocab = sum(counts.values()), len(tok)
    nll = n = 0
    for i in range(len(held)):
        for t in held[i]["input_ids"][1:].tolist():  # the tokens a causal LM predicts
            nll -= math.log((counts[t] + 1) / (total + vocab))  # add-one smoothing
            n += 1
    info["uniform_perplexity"] = vocab
    info["unigram_perplexity"] = math.exp(nll / n)
    del torch
    return info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--out", type=Path, default=Path("runs/bench_prune"))
    ap.add_argument("--speed-budget", type=float, default=60.0)
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    info = build_inits(args.out)
    models = {f"init_{arm}": args.out / f"init_{arm}" for arm in ARMS}
    seconds = {}
    names = list(ARMS)
    for k, seed in enumerate(seeds):
        order = names[k % len(names) :] + names[: k % len(names)]
        for arm in order:
            name = f"{arm}_s{seed}"
            run = args.out / name
            t0 = time.perf_counter()
            subprocess.run(
                [
                    KDISTILL,
                    "distill",
                    str(DEMO),
                    f"output_dir={run}",
                    f"training.extra={{data_seed: {seed}}}",
                    f"student.from_teacher={ARMS[arm]}",
                ],
                check=True,
            )
            seconds[name] = time.perf_counter() - t0
            models[name] = run / "model"
    results_path = args.out / "eval.json"
    cmd = [KDISTILL, "eval", "--out", str(results_path), "--speed-budget", str(args.speed_budget)]
    for name, folder in models.items():
        cmd += ["--model", f"{name}={folder}", "--role", f"{name}=variant"]
    subprocess.run(cmd, check=True)
    ev = json.loads(results_path.read_text())
    keys = (
        "perplexity",
        "bits_per_byte",
        "kl_to_teacher",
        "top1_agreement",
        "forward_tokens_per_s",
        "generate_tokens_per_s",
    )
    rows = {name: {k: ev[name][k] for k in keys if k in ev[name]} for name in models}
    summary = {}
    for arm in ARMS:
        ppl = [rows[f"{arm}_s{s}"]["perplexity"] for s in seeds]
        summary[arm] = {
            "params": info["arms"][arm]["params"],
            "before_training_perplexity": rows[f"init_{arm}"]["perplexity"],
            "perplexity_per_seed": ppl,
            "perplexity_mean": statistics.mean(ppl),
            "perplexity_range": [min(ppl), max(ppl)],
            "forward_tokens_per_s": [
                rows[f"{arm}_s{s}"].get("forward_tokens_per_s") for s in seeds
            ],
        }
    base = summary["every3"]["perplexity_mean"]
    for arm in ARMS:
        summary[arm]["vs_every3"] = summary[arm]["perplexity_mean"] / base - 1
    result = {
        "seeds": seeds,
        "teacher_perplexity": ev["teacher"]["perplexity"],
        "eval_tokens": ev["teacher"].get("eval_tokens"),
        "references": {
            "uniform_perplexity": info["uniform_perplexity"],
            "unigram_perplexity": info["unigram_perplexity"],
        },
        "arms": info["arms"],
        "summary": summary,
        "models": rows,
        "run_seconds": seconds,
    }
    out = HERE / "results" / "prune_cpu.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
