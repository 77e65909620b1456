"""Resuming a streamed data set (``data.streaming``) from its saved position against
re-reading it: the time to the first block a resumed run trains on, when the run stopped most
of the way through a pass. Baseline: re-reading and re-tokenising every block before it (what
a Trainer's default data skip does with an iterable set). Both read the same parquet shards
from a hub-cache snapshot (KJV chapters, the bundled SmolLM2 tokenizer, blocks of 256);
contestants interleaved over rounds.

  .venv/bin/python benchmarks/bench_stream_resume.py [--shards 8] [--rounds 3]

Writes ``benchmarks/results/stream_resume_cpu.json``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA_ID = "bench/kjv-stream"
COMMIT = "0" * 40


def _snapshot(cache: Path, shards: int) -> None:
    """KJV chapters as ``shards`` parquet files in a hub-cache snapshot of ``DATA_ID``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from kdistill.data.kjv import kjv_chapters

    verses = kjv_chapters()
    repo = cache / f"datasets--{DATA_ID.replace('/', '--')}"
    snap = repo / "snapshots" / COMMIT / "data"
    snap.mkdir(parents=True)
    per = len(verses) // shards
    for s in range(shards):
        rows = verses[s * per : (s + 1) * per]
        name = f"train-{s:05d}-of-{shards:05d}.parquet"
        pq.write_table(pa.table({"text": rows}), snap / name, row_group_size=50)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--share", type=float, default=0.8, help="how far into the pass it stopped")
    a = ap.parse_args()
    from kdistill.data.streaming import StreamedBlocks
    from kdistill.models.loading import load_tokenizer

    tok = load_tokenizer("smollm2-135m")
    kw = {"block_size": 256, "held_out_fraction": 0.05, "seed": 0}
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp)
        _snapshot(cache, a.shards)
        os.environ["HF_HUB_CACHE"] = str(cache)
        os.environ["HF_HUB_OFFLINE"] = "1"
        whole = StreamedBlocks(tok, DATA_ID, **kw)
        t0 = time.perf_counter()
        blocks = 0
        for _ in itertools.takewhile(lambda _b: whole.pass_no == 0, iter(whole)):
            blocks += 1
        pass_seconds = time.perf_counter() - t0
        stop = int(blocks * a.share)
        position = whole.position(stop)
        times = {"position": [], "reread": []}
        for _ in range(a.rounds):
            t = time.perf_counter()
            resumed = StreamedBlocks(tok, DATA_ID, start=position, **kw)
            first = next(iter(resumed))["input_ids"]
            times["position"].append(time.perf_counter() - t)
            t = time.perf_counter()
            again = StreamedBlocks(tok, DATA_ID, **kw)
            skipped = next(itertools.islice(iter(again), stop, None))["input_ids"]
            times["reread"].append(time.perf_counter() - t)
            assert first.equal(skipped)  # the same block either way
        ratios = [r / p for p, r in zip(times["position"], times["reread"], strict=True)]
        result = {
            "machine": platform.processor() or platform.machine(),
            "shards": a.shards,
            "blocks_per_pass": blocks,
            "stopped_at_block": stop,
            "pass_seconds": pass_seconds,
            "rows_read_on_resume": resumed.rows_read,
            "rows_read_re_reading": again.rows_read,
            "seconds": times,
            "median_seconds": {k: statistics.median(v) for k, v in times.items()},
            "speedup_position_vs_reread": {
                "median": statistics.median(ratios),
                "min": min(ratios),
                "max": max(ratios),
            },
        }
    out = HERE / "results" / "stream_resume_cpu.json"
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: result[k] for k in result if k != "seconds"}, indent=2))


if __name__ == "__main__":
    main()
