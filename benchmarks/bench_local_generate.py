"""Local teacher generation: batched ``generate`` vs one sequence at a time, in one run.

Writes benchmarks/results/local_generate_cpu.json: tokens/s of greedy generation with the
bundled SmolLM2-135M for the same KJV prompts at several batch sizes, and whether the
batched outputs equal the one-at-a-time outputs (they should: greedy, left padding).

  .venv/bin/python benchmarks/bench_local_generate.py [--prompts 16] [--tokens 32]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from kdistill.data.generations import Prompt
from kdistill.data.kjv import kjv_chapters
from kdistill.models.loading import load_causal_lm
from kdistill.teachers.local_gen import LocalGenerator

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--batch-sizes", default="1,4,8,16")
    args = ap.parse_args()
    model, tok = load_causal_lm("smollm2-135m", frozen=True)
    gen = LocalGenerator(model, tok)
    chapters = kjv_chapters()
    prompts = [
        Prompt(id=str(i), text=" ".join(chapters[17 * i].split()[: 6 + i % 7]))
        for i in range(args.prompts)
    ]
    params = {"sampling_temperature": 0, "max_tokens": args.tokens, "mode": "completions"}
    gen.generate_batch([(prompts[0], 0)], {**params, "max_tokens": 4})  # warm-up
    rows, outputs = [], {}
    for bs in [int(x) for x in args.batch_sizes.split(",")]:
        t0 = time.perf_counter()
        outs = []
        for s in range(0, len(prompts), bs):
            outs += gen.generate_batch([(p, 0) for p in prompts[s : s + bs]], params)
        seconds = time.perf_counter() - t0
        n_tokens = sum(o["usage"]["completion_tokens"] for o in outs)
        outputs[bs] = [o["tokens"] for o in outs]
        rows.append({"batch_size": bs, "seconds": seconds, "tokens": n_tokens})
        print(f"batch {bs}: {n_tokens / seconds:.1f} tokens/s")
    base = rows[0]["tokens"] / rows[0]["seconds"]
    for r in rows:
        r["tokens_per_s"] = r["tokens"] / r["seconds"]
        r["speedup_vs_batch_1"] = r["tokens_per_s"] / base
        r["identical_to_batch_1"] = sum(
            a == b for a, b in zip(outputs[r["batch_size"]], outputs[rows[0]["batch_size"]])
        )
    result = {
        "machine": platform.platform(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "prompts": len(prompts),
        "max_new_tokens": args.tokens,
        "rows": rows,
    }
    out = HERE / "results" / "local_generate_cpu.json"
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
