"""Do the evaluation's speed figures survive a noisy machine? Three copies of one model (the
bundled SmolLM2-135M) are timed by the evaluation's interleaved protocol
(:func:`kdistill.eval.lm_runner.speed_figures`: warm-up excluded, A B C A B C ... rounds
within a time budget, medians) on a quiet machine and with a CPU hog running beside it.
The copies are identical, so any gap between them is measurement error: the goal is that
forward tokens/s, latency p50 and generation tokens/s of the three agree within 10%.

Named baseline in the same run: the single-shot protocol the evaluation used before (each
model timed once, one after another: ``--single-shot``-style figures from one call each),
measured under the same hog, so the improvement is a ratio, not an absolute.

    python benchmarks/bench_eval_speed.py [--budget 60] [--out benchmarks/results/...]
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from kdistill.eval.lm_runner import GENERATE_TOKENS, _generate, speed_figures
from kdistill.models.loading import load_causal_lm

ROOT = Path(__file__).resolve().parents[1]
HOG = (
    "import torch\n"
    "torch.set_num_threads(1)\n"
    "a = torch.randn(768, 768)\n"
    "while True:\n"
    "    a = torch.tanh(a @ a)\n"
)
METRICS = ("forward_tokens_per_s", "latency_p50_s", "generate_tokens_per_s")


def spread(values: list[float]) -> float:
    """max / min - 1 over the three copies."""
    return max(values) / min(values) - 1.0


def single_shot(models: dict, probe: torch.Tensor) -> dict[str, dict]:
    """The old protocol: each model once (after one warm-up call), one after another."""
    out = {}
    with torch.no_grad():
        for name, m in models.items():
            m(input_ids=probe)
            t0 = time.perf_counter()
            m(input_ids=probe)
            fwd = time.perf_counter() - t0
            _generate(m, probe[:, :32], 2)
            t0 = time.perf_counter()
            _generate(m, probe[:, :32], GENERATE_TOKENS)
            gen = time.perf_counter() - t0
            out[name] = {
                "forward_tokens_per_s": probe.shape[1] / fwd,
                "latency_p50_s": fwd,
                "generate_tokens_per_s": GENERATE_TOKENS / gen,
            }
    return out


def condition(models, probe, budget: float) -> dict:
    with torch.no_grad():
        figs = speed_figures(models, {n: probe for n in models}, budget)
    old = single_shot(models, probe)
    return {
        "interleaved": {n: {k: figs[n][k] for k in (*METRICS, "speed_repeats")} for n in models},
        "interleaved_spread": {k: spread([figs[n][k] for n in models]) for k in METRICS},
        "single_shot": old,
        "single_shot_spread": {k: spread([old[n][k] for n in models]) for k in METRICS},
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget", type=float, default=60.0, help="seconds per condition")
    ap.add_argument("--hogs", type=int, default=1, help="CPU-hog processes (1 thread each)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/eval_speed_cpu.json"))
    args = ap.parse_args()
    base, tok = load_causal_lm("smollm2-135m", frozen=True)
    models = {"a": base, "b": copy.deepcopy(base), "c": copy.deepcopy(base)}
    text = "In the beginning God created the heaven and the earth. " * 40
    probe = tok(text, return_tensors="pt")["input_ids"][:, :256]
    result = {
        "machine": platform.platform(),
        "threads": torch.get_num_threads(),
        "model": "smollm2-135m x 3 identical copies",
        "probe_tokens": int(probe.shape[1]),
        "budget_s_per_condition": args.budget,
        "goal": "interleaved spread < 10% on every metric, quiet and under the hog",
    }
    result["quiet"] = condition(models, probe, args.budget)
    print("quiet", json.dumps(result["quiet"]["interleaved_spread"]), flush=True)
    hogs = [subprocess.Popen([sys.executable, "-c", HOG]) for _ in range(args.hogs)]
    try:
        time.sleep(2)
        result["hog"] = condition(models, probe, args.budget)
        result["hog"]["hog_processes"] = args.hogs
    finally:
        for h in hogs:
            h.kill()
            h.wait()
    print("hog", json.dumps(result["hog"]["interleaved_spread"]), flush=True)
    result["goal_met"] = all(
        v < 0.10 for c in ("quiet", "hog") for v in result[c]["interleaved_spread"].values()
    )
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("goal_met",)}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
