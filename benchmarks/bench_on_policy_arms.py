"""Off-policy KD vs on-policy (lambda = 1) vs mixed (lambda = 0.5) on the bundled pair, at an
equal number of student-update tokens, per seed; one `kdistill eval` of every student with
the metrics on each model's own samples. Writes benchmarks/results/on_policy_arms_cpu.json.

Equal tokens: an off-policy step trains on 4 blocks x 127 targets (block 128); an on-policy
step on 4 x 64 sampled tokens (64-token prompts from the same blocks), so the on-policy arm
gets twice the steps and the mixed arm 4/3 of them. Each arm's wall time (sampling
included) and its counted targets (`train_summary.json`) are reported beside.

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--steps", type=int, default=20, help="off-policy arm's steps")
    ap.add_argument("--out", type=Path, default=Path("runs/bench_on_policy"))
    ap.add_argument("--json", type=Path, default=HERE / "results/on_policy_arms_cpu.json")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    models, runs = {}, {}
    for seed in seeds:  # interleaved: every arm of a seed back to back
        for arm, (extra, mult) in ARMS.items():
            name = f"{arm}_s{seed}"
            run = args.out / name
            steps = round(args.steps * mult)
            t0 = time.perf_counter()
            subprocess.run(
                [
                    KDISTILL,
                    "distill",
                    str(CONFIG),
                    f"output_dir={run}",
                    f"seed={seed}",
                    "data.block_size=128",
                    f"training.max_steps={steps}",
                    "training.warmup_steps=2",
                    "training.logging_steps=1",
                    f"training.save_steps={steps}",
                    *extra,
                ],
                check=True,
            )
            summary = json.loads((run / "train_summary.json").read_text())
            runs[name] = {
                "arm": arm,
                "seed": seed,
                "steps": steps,
                "wall_s": time.perf_counter() - t0,
                "train_s": summary["train_seconds"],
                "target_tokens": summary.get("target_tokens"),
            }
            models[name] = run / "model"
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
        arms[arm] = {
            k: {"mean": statistics.fmean(r[k] for r in rows), "values": [r[k] for r in rows]}
            for k in (*KEYS, "train_s", "target_tokens")
            if all(isinstance(r[k], (int, float)) for r in rows)
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
