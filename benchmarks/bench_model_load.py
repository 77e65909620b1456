"""Loading the bundled teacher: the converted cache folder vs de-quantising the GGUF, in one
run, interleaved (was a wall-clock test; timings belong here, not in the suite).

Writes benchmarks/results/model_load_cpu.json with each repeat's seconds and the ratio of
medians (GGUF / cached).

  .venv/bin/python benchmarks/bench_model_load.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

from kdistill.models.bundled import bundled_gguf_path
from kdistill.models.loading import load_causal_lm

HERE = Path(__file__).resolve().parent


def _seconds(spec: str) -> float:
    t0 = time.perf_counter()
    load_causal_lm(spec)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    gguf = str(bundled_gguf_path("smollm2-135m"))
    load_causal_lm("smollm2-135m")  # make sure the cache folder exists (not timed)
    cached, raw = [], []
    for _ in range(args.repeats):  # interleaved: a busy machine hurts both alike
        cached.append(_seconds("smollm2-135m"))
        raw.append(_seconds(gguf))
    result = {
        "machine": platform.processor() or platform.machine(),
        "cached_seconds": cached,
        "gguf_seconds": raw,
        "ratio_of_medians_gguf_over_cached": statistics.median(raw) / statistics.median(cached),
    }
    out = HERE / "results" / "model_load_cpu.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
