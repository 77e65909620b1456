"""glibc's default allocator vs kdistill's (freed memory kept in the process), on the demo's
pair: ``KDISTILL_CPU_ALLOCATOR=system`` vs ``cached`` (the default; ``kdistill.allocator``).

Interleaved: ``--rounds`` rounds, each one run per allocator and per job, through the installed
``kdistill distill`` entry point (the setting is applied there), ``--steps`` steps of the demo
config (4 x 256 tokens a step): ``kd`` = the demo's student run (teacher online, hidden term),
``plain`` = the same student without the teacher (the baseline's step). Per run: the median
step tokens/s after the first step (``kd_log.jsonl``) and the peak resident memory
(``/usr/bin/time``). The ratio cached / system is taken within each round.

  .venv/bin/python benchmarks/bench_allocator.py [--rounds 3] [--steps 6]

Writes ``benchmarks/results/allocator_cpu.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
KDISTILL = Path(sys.executable).with_name("kdistill")
JOBS = {
    "kd": [],
    "plain": ["teacher.kind=none", "distill.terms=[]"],
}
ALLOCATORS = ("system", "cached")


def _run(out: Path, allocator: str, over: list[str], steps: int) -> dict:
    from kdistill.pipeline.demo import demo_config_path

    rss = out.with_suffix(".rss")
    cmd = [
        "/usr/bin/time", "-f", "%M", "-o", str(rss),
        str(KDISTILL), "distill", str(demo_config_path()), f"output_dir={out}", *over,
        f"training.max_steps={steps}", "training.logging_steps=1",
        f"training.save_steps={steps}", f"data.max_train_tokens={steps * 4 * 256}",
    ]  # fmt: skip
    env = {**os.environ, "KDISTILL_CPU_ALLOCATOR": allocator}
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    rows = [json.loads(x) for x in (out / "kd_log.jsonl").read_text().splitlines()]
    speeds = [r["tokens_per_s"] for r in rows if "tokens_per_s" in r and r.get("step", 0) > 1]
    return {
        "tokens_per_s": statistics.median(speeds),
        "peak_rss_mib": int(rss.read_text().split()[-1]) / 1024,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--out", type=Path, default=Path("runs/bench_allocator"))
    args = ap.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    raw = {job: {a: [] for a in ALLOCATORS} for job in JOBS}
    for rnd in range(args.rounds):
        for job, over in JOBS.items():
            for alloc in ALLOCATORS:
                r = _run(args.out / f"{job}_{alloc}_{rnd}", alloc, over, args.steps)
                raw[job][alloc].append(r)
                print(json.dumps({"round": rnd, "job": job, "allocator": alloc, **r}), flush=True)
    summary = {}
    for job, by in raw.items():
        speed = [
            c["tokens_per_s"] / s["tokens_per_s"]
            for s, c in zip(by["system"], by["cached"], strict=True)
        ]
        rss = [
            c["peak_rss_mib"] / s["peak_rss_mib"]
            for s, c in zip(by["system"], by["cached"], strict=True)
        ]
        summary[job] = {
            "speed_cached_vs_system_per_round": speed,
            "speed_cached_vs_system_median": statistics.median(speed),
            "peak_rss_cached_vs_system_per_round": rss,
        }
    result = {
        "benchmark": "allocator: cached (kdistill default) vs glibc system",
        "baseline": "system",
        "machine": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "steps_per_run": args.steps,
        "tokens_per_step": 4 * 256,
        "runs": raw,
        "summary": summary,
    }
    dest = HERE / "results" / "allocator_cpu.json"
    dest.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
