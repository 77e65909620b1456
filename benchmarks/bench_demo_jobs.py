"""The demo's three training runs one after another (``kdistill demo --jobs 1``, the baseline
of this comparison) against side by side (``--jobs 2``: the student's run in one process, the
baseline's and the from-scratch runs in another, half the CPU threads each, all of them for a
worker left alone), without the evaluation. Interleaved rounds (the order flips each round),
``--steps`` steps per run; per round the training wall time of each and their ratio, and
whether the three models came out the same bits both ways.

  .venv/bin/python benchmarks/bench_demo_jobs.py [--rounds 2] [--steps 10]

Writes ``benchmarks/results/demo_jobs_cpu.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from kdistill.allocator import keep_freed_memory
from kdistill.models import prune
from kdistill.pipeline.demo import demo_configs
from kdistill.pipeline.demo_jobs import train_side_by_side
from kdistill.pipeline.distill_lm import run_distill_lm

HERE = Path(__file__).resolve().parent
NAMES = ("student", "baseline", "scratch")


def _train(out: Path, steps: int, jobs: int) -> float:
    configs = demo_configs(out, steps)
    prune._LAST.clear()  # as in a fresh `kdistill demo`: the ranking measured once, here too
    t = time.perf_counter()
    if jobs == 2:
        train_side_by_side(list(zip(NAMES, configs, strict=True)), out, fresh=True)
    else:
        for cfg in configs:
            run_distill_lm(cfg, fresh=True)
    return time.perf_counter() - t


def _weights(out: Path) -> dict:
    return {n: load_file(str(out / n / "model" / "model.safetensors")) for n in NAMES}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10)
    a = ap.parse_args()
    keep_freed_memory()  # as the kdistill command does (its workers follow the parent)
    root = Path(tempfile.mkdtemp(prefix="bench_demo_jobs-"))
    rounds = []
    try:
        for r in range(a.rounds):
            row, outs = {}, {}
            for jobs in (1, 2) if r % 2 == 0 else (2, 1):
                outs[jobs] = root / f"r{r}-jobs{jobs}"
                row[f"jobs{jobs}_seconds"] = _train(outs[jobs], a.steps, jobs)
            one, two = _weights(outs[1]), _weights(outs[2])
            row["same_bits"] = all(
                all(torch.equal(one[n][k], two[n][k]) for k in one[n]) for n in NAMES
            )
            row["ratio_jobs1_over_jobs2"] = row["jobs1_seconds"] / row["jobs2_seconds"]
            rounds.append(row)
            print(json.dumps(row), flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    ratios = [r["ratio_jobs1_over_jobs2"] for r in rounds]
    out = {
        "benchmark": "the demo's 3 training runs: one after another (baseline) vs side by side",
        "steps_per_run": a.steps,
        "threads": torch.get_num_threads(),
        "rounds": rounds,
        "speedup_side_by_side": {
            "median": round(statistics.median(ratios), 3),
            "per_round": [round(x, 3) for x in ratios],
        },
        "same_bits_every_round": all(r["same_bits"] for r in rounds),
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
    }
    path = HERE / "results" / "demo_jobs_cpu.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out["speedup_side_by_side"]), f"same bits: {out['same_bits_every_round']}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
