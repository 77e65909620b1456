"""Streamed hub data sets (``data.streaming``): the same blocks and held-out rows as the
listed set, resume from a saved stream position (not by re-reading), through the CLI offline
under the socket guard."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kdistill.data.lm import build_lm_datasets, held_out_texts
from kdistill.data.records import load_records
from kdistill.errors import InputError
from tests.conftest import TINY_TEXT, distill_then_resume, read_log, same_weights, tiny_overrides
from tests.integration.test_hub import COMMIT, DEMO, hub_cache  # noqa: F401

DATA_ID = "kdistill-test/streamed-text"
ROWS = [f"{t} ({i})" for i, t in enumerate(TINY_TEXT)]  # 48 distinct rows


@pytest.fixture
def streamed(hub_cache):  # noqa: F811
    """A data set of three parquet shards (row groups of 4) in the offline hub cache."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    repo = hub_cache.parent / f"datasets--{DATA_ID.replace('/', '--')}"
    snap = repo / "snapshots" / COMMIT / "data"
    snap.mkdir(parents=True)
    for s in range(3):
        rows = ROWS[16 * s : 16 * (s + 1)]
        if s == 1:  # empty and null rows are not records, listed or streamed
            rows = [*rows[:5], "", *rows[5:9], None, *rows[9:]]
        pq.write_table(
            pa.table({"text": rows}), snap / f"train-0000{s}-of-00003.parquet", row_group_size=4
        )
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return DATA_ID


def _blocks(dataset, n):
    return [b["input_ids"] for b in itertools.islice(iter(dataset), n)]


def test_a_stream_gives_the_listed_sets_blocks_and_held_out_rows(streamed, tiny_tokenizer):
    kw = {"block_size": 16, "held_out_fraction": 0.2, "seed": 0, "max_eval_tokens": 64}
    listed_train, listed_held = build_lm_datasets(tiny_tokenizer, streamed, **kw)
    train, held = build_lm_datasets(tiny_tokenizer, streamed, streaming=True, **kw)
    n = len(listed_train)
    got = _blocks(train, n + 3)  # then a second pass starts from the first block
    assert n > 20
    assert all(a.equal(b) for a, b in zip(got[:n], listed_train.examples, strict=True))
    assert all(a.equal(b) for a, b in zip(got[n:], listed_train.examples[:3], strict=True))
    assert train.pass_no == 1
    assert held.examples.equal(listed_held.examples)
    assert held_out_texts(streamed, held_out_fraction=0.2, streaming=True) == held_out_texts(
        streamed, held_out_fraction=0.2
    )
    assert load_records(streamed, streaming=True) == ROWS[:8]  # the head, checked
    for streaming in (False, True):  # what training asks for: no held-out side at all
        _, none = build_lm_datasets(
            tiny_tokenizer, streamed, streaming=streaming, held_out=False, **kw
        )
        assert none is None


def test_resume_starts_at_the_saved_position_without_re_reading(streamed, tiny_tokenizer):
    kw = {"block_size": 32, "held_out_fraction": 0.2, "seed": 0, "streaming": True}
    whole, _ = build_lm_datasets(tiny_tokenizer, streamed, **kw)
    ref = _blocks(whole, 100)
    n = sum(whole.position(k)["pass"] == 0 for k in range(100))  # blocks in one pass
    assert 20 < n < 90 and whole.position(n)["pass"] == 1
    end = n + 5
    for k in (1, 7, n // 2, n - 1, n + 2):  # mid-row, mid-shard, last of a pass, next pass
        start = json.loads(json.dumps(whole.position(k)))  # as a checkpoint keeps it
        resumed, _ = build_lm_datasets(tiny_tokenizer, streamed, start=start, **kw)
        got = _blocks(resumed, end - k)
        assert all(a.equal(b) for a, b in zip(got, ref[k:end], strict=True)), k
        pos = resumed.position(end - 1)
        again, _ = build_lm_datasets(tiny_tokenizer, streamed, start=pos, **kw)
        assert _blocks(again, 1)[0].equal(ref[end - 1]), k  # a resumed run's positions resume
    # the next block's start is known as soon as a block is handed out (a checkpoint may be
    # saved before the data loader asks for the next one)
    live, _ = build_lm_datasets(tiny_tokenizer, streamed, **kw)
    blocks = iter(live)
    for k in range(n + 3):
        next(blocks)
        early, _ = build_lm_datasets(tiny_tokenizer, streamed, start=live.position(k + 1), **kw)
        assert _blocks(early, 1)[0].equal(ref[k + 1]), k
    # a stream resumed in its last shard reads only the rows from its start row on
    late = whole.position(n - 1)
    resumed, _ = build_lm_datasets(tiny_tokenizer, streamed, start=late, **kw)
    _blocks(resumed, 1)
    assert late["pass"] == 0 and late["row"] >= 32
    assert 0 < resumed.rows_read <= 48 - late["row"]


def test_distill_streams_and_resumes_bit_identically(
    streamed, tiny_teacher_dir, tmp_path, monkeypatch
):
    def never(*a, **k):
        raise AssertionError("training read the held-out rows")

    monkeypatch.setattr("kdistill.data.streaming.held_out_stream", never)
    extra = {"data.source": streamed, "data.streaming": "true", "data.block_size": 16}
    ref, run = distill_then_resume(tiny_teacher_dir, Path("unused"), tmp_path, extra, kept=3)
    assert same_weights(ref, run)
    assert [r["loss"] for r in read_log(ref)] == [r["loss"] for r in read_log(run)]
    position = json.loads((run / "checkpoints/checkpoint-3/stream_position.json").read_text())
    assert position["block"] == 12  # 3 steps x 4 blocks
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["resumed_from"].endswith("checkpoint-3") and summary["train_blocks"] is None
    from kdistill.data.streaming import resume_position

    assert resume_position(run / "checkpoints/checkpoint-3", 4)["row"] == position["row"]
    with pytest.raises(InputError, match="saved at 4 blocks a step"):  # other batch settings
        resume_position(run / "checkpoints/checkpoint-3", 8)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"data.source": "local.txt"}, "is not one"),
        ({"teacher.kind": "store", "teacher.path": "nowhere"}, "teacher.kind=store"),
        ({"data.source": "kdistill-test/not-cached"}, "HF_HUB_OFFLINE"),
        ({"data.text_field": "body"}, "column 'body'"),
    ],
)
def test_streaming_refusals_are_one_line(
    streamed, tiny_teacher_dir, tmp_path, capsys, setting, message
):
    from kdistill.cli.main import main

    (tmp_path / "local.txt").write_text("some text\n\nmore text\n")
    out = tmp_path / "r"
    over = tiny_overrides(tiny_teacher_dir, Path(streamed), out, **{"data.streaming": "true"})
    over += [f"{k}={tmp_path / v if v == 'local.txt' else v}" for k, v in setting.items()]
    assert main(["distill", DEMO, *over]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not out.exists()


def test_eval_on_a_stream_scores_the_listed_held_out_blocks(streamed, tiny_teacher_dir, tmp_path):
    from kdistill.pipeline.evaluate import run_eval

    got = {}
    for name, parts in (("listed", {}), ("streamed", {"streaming": True})):
        got[name] = run_eval(
            str(tiny_teacher_dir),
            {"s": str(tiny_teacher_dir)},
            streamed,
            16,
            0.2,
            64,
            tmp_path / f"{name}.json",
            quality_only=True,
            source_parts=parts,
        )["teacher"]
    a, b = got["listed"], got["streamed"]
    assert a["eval_tokens"] == b["eval_tokens"] > 0 and a["perplexity"] == b["perplexity"]


def test_an_uncached_id_online_streams_from_the_hub_without_downloading(hub_cache, monkeypatch):  # noqa: F811
    """With the hub reachable, an id not in the cache is streamed by ``datasets`` from the
    hub itself (its revision passed on), never snapshot-downloaded first."""
    import datasets

    from kdistill.data.streaming import open_stream

    monkeypatch.delenv("HF_HUB_OFFLINE")
    calls = []
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: calls.append((a, k)) or "S")
    monkeypatch.setattr(
        "huggingface_hub.snapshot_download",
        lambda *a, **k: (
            (_ for _ in ()).throw(AssertionError("downloaded"))
            if not k.get("local_files_only")
            else (_ for _ in ()).throw(FileNotFoundError("not cached"))
        ),
    )
    assert open_stream("org/big-set@v2", subset="en", split="train") == "S"
    assert calls == [
        (("org/big-set",), {"name": "en", "split": "train", "streaming": True, "revision": "v2"})
    ]


def test_two_processes_stream_the_same_global_batches_as_one(streamed, tiny_teacher_dir, tmp_path):
    """DDP over a stream: rank 0 reads and hands each rank its share (Accelerate's dispatch
    for an iterable data set), so 2 processes at batch 2 train on the blocks 1 process at
    batch 4 trains on; each checkpoint's stream position counts both ranks' blocks."""
    from tests.integration.test_fsdp import SCRIPT, assert_same_training, run_two_processes

    extra = {"data.source": streamed, "data.streaming": "true", "training.max_steps": 3}
    extra |= {"training.save_steps": 3, "training.extra": "{optim: sgd}"}
    extra |= {"training.lr_scheduler": "constant", "training.learning_rate": 0.5}
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo)}
    one, two = tmp_path / "one", tmp_path / "two"
    single = tiny_overrides(tiny_teacher_dir, Path(streamed), one, **extra)
    subprocess.run([sys.executable, str(script), DEMO, *single], check=True, env=env, cwd=tmp_path)
    extra["training.per_device_batch_size"] = 2
    run_two_processes(
        script,
        [DEMO, *tiny_overrides(tiny_teacher_dir, Path(streamed), two, **extra)],
        env,
        tmp_path,
    )
    assert_same_training(one, two)
    position = json.loads((two / "checkpoints/checkpoint-3/stream_position.json").read_text())
    assert position["block"] == 12  # 3 steps x 2 ranks x 2 blocks
