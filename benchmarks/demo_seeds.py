"""The demo's claim over seeds: `kdistill demo` once per seed (each seed draws its own held-out
and validation chapters and data order), then the distilled student against its named baseline
(the same init, the same tokens, no teacher) and the same shape from scratch, per seed, with
the mean and the spread. Writes benchmarks/results/demo_seeds_cpu.json.

  .venv/bin/python benchmarks/demo_seeds.py [--seeds 0,1,2] [--out runs/demo_seeds]

A seed whose `results.json` is already there is read, not run again (so a demo run with
`kdistill demo --output-dir runs/demo_seeds/s1 seed=1` counts). About 14-16 minutes a seed on
2 CPU cores (834 s for seed 0 with the runs side by side at stop 31; 880-959 s one after
another at stop 30; 1,041-1,157 s at stop 29 on a busier machine).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
KDISTILL = str(Path(sys.executable).with_name("kdistill"))
MODELS = ("teacher", "student", "baseline", "scratch")
FIGURES = ("perplexity", "kl_to_teacher", "top1_agreement")


def run_seed(out: Path, seed: int) -> dict:
    results = out / f"s{seed}" / "results.json"
    if not results.exists():
        cmd = [KDISTILL, "demo", "--output-dir", str(out / f"s{seed}"), f"seed={seed}"]
        print("$", " ".join(cmd), flush=True)
        t = time.perf_counter()
        subprocess.run(cmd, check=True)
        print(f"seed {seed}: {time.perf_counter() - t:.0f} s", flush=True)
    return json.loads(results.read_text())


def per_seed(seed: int, res: dict) -> dict:
    row = {"seed": seed}
    for m in MODELS:
        row[m] = {k: res[m][k] for k in FIGURES}
    ppl = {m: res[m]["perplexity"] for m in MODELS}
    row["student_vs_baseline"] = ppl["student"] / ppl["baseline"] - 1
    row["student_vs_scratch"] = ppl["student"] / ppl["scratch"] - 1
    row["timings"] = res.get("timings", {})
    return row


def spread(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--out", default="runs/demo_seeds")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    out = Path(args.out)
    rows = [per_seed(s, run_seed(out, s)) for s in seeds]
    summary = {
        "student_vs_baseline": spread([r["student_vs_baseline"] for r in rows]),
        "student_vs_scratch": spread([r["student_vs_scratch"] for r in rows]),
        **{f"{m}_perplexity": spread([r[m]["perplexity"] for r in rows]) for m in MODELS},
        "demo_seconds": spread([r["timings"].get("total_seconds", float("nan")) for r in rows]),
    }
    payload = {
        "what": "kdistill demo per seed: distilled student vs its no-teacher baseline",
        "goal": "student perplexity at least 10% below the baseline's",
        "machine": {"cpu": platform.processor() or platform.machine(), "python": sys.version},
        "seeds": rows,
        "summary": summary,
    }
    dest = HERE / "results" / "demo_seeds_cpu.json"
    dest.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"{'seed':>4} " + " ".join(f"{m:>9}" for m in MODELS) + "  student vs baseline")
    for r in rows:
        cells = " ".join(f"{r[m]['perplexity']:9.2f}" for m in MODELS)
        print(f"{r['seed']:>4} {cells}  {r['student_vs_baseline']:+.1%}")
    s = summary["student_vs_baseline"]
    print(f"mean {s['mean']:+.1%} (range {s['min']:+.1%} .. {s['max']:+.1%}); wrote {dest}")


if __name__ == "__main__":
    main()
