"""Off-policy KD vs on-policy (lambda = 1) vs mixed (lambda = 0.5) vs SFT on the teacher's
generations, on the bundled pair, at an equal number of student-update tokens, per seed; one
`kdistill eval` of every student with the metrics on each model's own samples. Writes
benchmarks/results/on_policy_arms_cpu.json.

Equal tokens: an off-policy step trains on 4 blocks x 127 targets (block 128); an on-policy
step on 4 x 64 sampled tokens (64-token prompts from the same blocks), so the on-policy arm
gets twice the steps and the mixed arm 4/3 of them; the SFT arm trains (CE only) on the
teacher's sampled 64-token continuations of the same kind of prompts (generated once with
`kdistill generate`, its time reported beside), also twice the steps. Each arm's wall time
(sampling included) and its counted targets (`train_summary.json`) are reported beside.
``--arms sft`` trains only the named arms and re-evaluates them with the runs kept from the
results file.

  .venv/bin/python benchmarks/bench_on_policy_arms.py [--seeds 0,1] [--steps 20]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONFIG = HERE.parent / "src/kdistill/configs/on_policy.yaml"
KDISTILL = str(Path(sys.executable).with_name("kdistill"))
ON = "distill.on_policy={{fraction: {f}, max_new_tokens: 64, prompt_tokens: 64}}"
# arm -> (overrides, steps as a multiple of the off-policy arm's)
ARMS = {
    "off_policy": (["distill.on_policy=null"], 1.0),
    "on_policy": ([ON.format(f=1.0)], 2.0),
    "mixed": ([ON.format(f=0.5)], 4 / 3),
    # supervised fine-tuning on the teacher's sampled continuations of the same prompts
    "sft": (["distill.on_policy=null", "teacher.kind=none"], 2.0),
}
OWN = ["--own-samples", "8", "--own-max-new-tokens", "64", "--own-prompt-tokens", "64"]
KEYS = (
    "perplexity",
    "kl_to_teacher",
    "top1_agreement",
    "own_reverse_kl",
    "own_greedy_agreement",
    "own_entropy",
    "own_distinct2",
    "own_length",
)


def sft_data(out: Path, n_prompts: int) -> tuple[Path, float]:
    """The teacher's sampled continuations (64 tokens, T = 1) of the first 64 tokens of
    ``n_prompts`` training blocks, through `kdistill generate` (local backend): the SFT arm's
    data; made once for all seeds. Returns (kept.jsonl, generation seconds)."""
    from kdistill.data.lm import build_lm_datasets
    from kdistill.models.loading import load_tokenizer

    gen = out / "sft_generations"
    kept = gen / "kept.jsonl"
    stamp = gen / "generation_seconds.txt"
    if kept.is_file() and stamp.is_file():
        return kept, float(stamp.read_text())
    tok = load_tokenizer("smollm2-135m")
    train, _ = build_lm_datasets(tok, "kjv", block_size=128, held_out_fraction=0.05)
    gen.mkdir(parents=True, exist_ok=True)
    prompts = gen / "prompts.jsonl"
    rows = [
        {"id": str(i), "prompt": tok.decode(train[i]["input_ids"][:64])} for i in range(n_prompts)
    ]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    t0 = time.perf_counter()
    subprocess.run(
        [
            KDISTILL, "generate", str(CONFIG), f"generate.prompts={prompts}",
            f"generate.output_dir={gen}", "generate.backend=local", "generate.mode=completions",
            "generate.sampling_temperature=1.0", "generate.max_tokens=64",
            "generate.batch_size=8",
        ],
        check=True,
    )  # fmt: skip
    seconds = time.perf_counter() - t0
    stamp.write_text(str(seconds))
    return kept, seconds


def train_arm(arm: str, seed: int, args) -> dict:
    name = f"{arm}_s{seed}"
    run = args.out / name
    extra, mult = ARMS[arm]
    steps = round(args.steps * mult)
    gen_s = 0.0
    if arm == "sft":  # CE on the teacher's continuations: no teacher at training time
        kept, gen_s = sft_data(args.out, round(args.steps * 2 * 4 * 1.06))
        extra = [*extra, f"data.source={kept}"]
    t0 = time.perf_counter()
    subprocess.run(
        [
            KDISTILL, "distill", str(CONFIG), f"output_dir={run}", f"seed={seed}",
            "data.block_size=128", f"training.max_steps={steps}", "training.warmup_steps=2",
            "training.logging_steps=1", f"training.save_steps={steps}", *extra,
        ],
        check=True,
    )  # fmt: skip
    summary = json.loads((run / "train_summary.json").read_text())
    return {
        "arm": arm,
        "seed": seed,
        "steps": steps,
        "wall_s": time.perf_counter() - t0,
        "train_s": summary["train_seconds"],
        # the SFT arm's teacher generation, shared by its seeds, counted in each
        "teacher_generation_s": gen_s,
        "target_tokens": summary.get("target_tokens"),
        "model": str(run / "model"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--steps", type=int, default=20, help="off-policy arm's steps")
    ap.add_argument("--arms", default=",".join(ARMS), help="arms to train (others: reused)")
    ap.add_argument("--out", type=Path, default=Path("runs/bench_on_policy"))
    ap.add_argument("--json", type=Path, default=HERE / "results/on_policy_arms_cpu.json")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    wanted = args.arms.split(",")
    # runs measured before (another --arms) are kept, with their own wall times
    old = json.loads(args.json.read_text())["runs"] if args.json.is_file() else {}
    old = {k: {**v, "model": v.get("model") or str(args.out / k / "model")} for k, v in old.items()}
    runs = {k: v for k, v in old.items() if v["arm"] not in wanted and Path(v["model"]).is_dir()}
    for seed in seeds:  # interleaved: every arm of a seed back to back
        for arm in wanted:
            runs[f"{arm}_s{seed}"] = train_arm(arm, seed, args)
    models = {name: Path(r["model"]) for name, r in runs.items()}
    results_path = args.out / "eval.json"
    cmd = [KDISTILL, "eval", "--out", str(results_path), "--block-size", "128", *OWN]
    cmd += ["--speed-budget", "5"]
    for name, folder in models.items():
        cmd += ["--model", f"{name}={folder}"]
    subprocess.run(cmd, check=True)
    ev = json.loads(results_path.read_text())
    for name in runs:
        runs[name].update({k: ev[name].get(k) for k in KEYS})
    teacher = {k: ev["teacher"].get(k) for k in KEYS}
    arms = {}
    for arm in ARMS:
        rows = [r for r in runs.values() if r["arm"] == arm]
        if not rows:
            continue
        arms[arm] = {
            k: {"mean": statistics.fmean(r[k] for r in rows), "values": [r[k] for r in rows]}
            for k in (*KEYS, "train_s", "wall_s", "teacher_generation_s", "target_tokens")
            if all(isinstance(r.get(k), (int, float)) for r in rows)
        }
    out = {
        "config": str(CONFIG.name),
        "off_policy_steps": args.steps,
        "seeds": seeds,
        "teacher": teacher,
        "runs": runs,
        "arms": arms,
        "own_sample_settings": ev["teacher"].get("own_sample_settings"),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=1))
    for arm, a in arms.items():
        line = "  ".join(f"{k}={a[k]['mean']:.4g}" for k in a)
        print(f"{arm:>10}: {line}")


if __name__ == "__main__":
    main()
