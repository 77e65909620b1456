"""Peak memory of a recorded teacher at scale: build the recorded store from N synthetic API
generations (64 tokens each, top-8 log-probs per token, SmolLM2's tokenizer) and read every
record back the way training does (batches of 4 through RecordedTeacher), for N = 10k and
200k, each in a fresh process. Goal (issue 12): peak RSS(200k) - peak RSS(10k) < 50 MB.

Baseline named in the same run: the small set (10k). The files are deleted afterwards.

    python benchmarks/bench_recorded_store_rss.py [--sizes 10000 200000] [--out ...]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOKENS, TOP = 64, 8


def _tokenizer():
    from kdistill.models.loading import load_tokenizer

    return load_tokenizer("smollm2-135m")


def write_records(path: Path, n: int, seed: int = 0) -> None:
    """N generation records like kdistill generate writes them (streamed to disk)."""
    tok = _tokenizer()
    pieces = [tok.decode([i]) for i in range(len(tok))]
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as fh:
        for r in range(n):
            ids = [rng.randrange(200, len(pieces)) for _ in range(TOKENS + 8)]
            text = tok.decode(ids)
            canon = tok(text, add_special_tokens=False)["input_ids"][:TOKENS]
            tokens = [pieces[i] for i in canon]
            tops = []
            for i in canon:
                alts = [pieces[rng.randrange(len(pieces))] for _ in range(TOP - 1)]
                lp = [math.log(0.5)] + [math.log(0.5 / TOP)] * (TOP - 1)
                tops.append([[p, v] for p, v in zip([pieces[i], *alts], lp, strict=True)])
            rec = {
                "prompt": f"Record {r}:",
                "completion": "".join(tokens),
                "finish_reason": "length",
                "teacher_tokens": tokens,
                "teacher_top_logprobs": tops,
            }
            fh.write(json.dumps(rec) + "\n")


def measure(kept: Path, store: Path) -> dict:
    """Build + read in this process; returns peak RSS figures (MB)."""
    import torch

    from kdistill.data.lm import CausalCollator, IndexedDataset
    from kdistill.teachers.base import Want
    from kdistill.teachers.recorded import RecordedTeacher
    from kdistill.teachers.recorded_store import recorded_datasets

    tok = _tokenizer()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    train, _held = recorded_datasets(
        tok, str(kept), block_size=256, held_out_fraction=0.01, seed=0, store_dir=store
    )
    built = time.perf_counter() - t0
    after_build = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    teacher = RecordedTeacher(train.store, len(tok))
    collate = CausalCollator(tok.pad_token_id)
    ds = IndexedDataset(train)
    t0 = time.perf_counter()
    positions = 0
    for i in range(0, len(ds), 4):
        batch = collate([ds[j] for j in range(i, min(i + 4, len(ds)))])
        sig = teacher.signal(batch, want=Want()).sparse
        positions += int(torch.isfinite(sig.logprobs[..., 0]).sum())
    read = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    size = sum(p.stat().st_size for p in store.iterdir())
    return {
        "records": len(train),
        "rss_after_imports_mb": round(before, 1),
        "peak_rss_after_build_mb": round(after_build, 1),
        "peak_rss_mb": round(peak, 1),
        "build_seconds": round(built, 1),
        "read_seconds": round(read, 1),
        "positions_read": positions,
        "store_bytes": size,
        "kept_jsonl_bytes": kept.stat().st_size,
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 200_000])
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/recorded_store_rss.json"))
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure(Path(args.child[0]), Path(args.child[1]))))
        return 0
    results = {}
    for n in args.sizes:
        tmp = Path(tempfile.mkdtemp(prefix=f"kd-rss-{n}-"))
        try:
            kept = tmp / "kept.jsonl"
            write_records(kept, n)
            cmd = [sys.executable, __file__, "--child", str(kept), str(tmp / "store")]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode:
                sys.stderr.write(proc.stderr[-3000:])
                raise SystemExit(f"measuring {n} records failed")
            out = proc.stdout
            results[str(n)] = json.loads(out.strip().splitlines()[-1])
            print(n, results[str(n)], flush=True)
        finally:
            shutil.rmtree(tmp)
    small, big = (results[str(n)] for n in (min(args.sizes), max(args.sizes)))
    summary = {
        "baseline": f"{min(args.sizes)} records",
        "tokens_per_record": TOKENS,
        "top_k": TOP,
        "results": results,
        "peak_rss_growth_mb": round(big["peak_rss_mb"] - small["peak_rss_mb"], 1),
        "goal_mb": 50,
    }
    summary["goal_met"] = summary["peak_rss_growth_mb"] < summary["goal_mb"]
    Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
