"""Offline teacher-signal store: write, resume after SIGKILL, verify, train from it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from kdistill.cache import StoreError, StoreReader
from kdistill.cli.main import main
from kdistill.config.loader import load_config
from kdistill.pipeline.cache import plan_rows, run_cache
from kdistill.pipeline.distill_lm import run_distill_lm
from tests.conftest import tiny_overrides

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "src/kdistill/configs/demo.yaml"


def _cfg(teacher, data, out, store, **extra):
    return tiny_overrides(teacher, data, out, **{"cache.dir": str(store), **extra})


def test_topk_with_all_ids_trains_like_online(word_teacher_dir, tiny_text_file, tmp_path):
    from transformers import AutoTokenizer

    vocab = len(AutoTokenizer.from_pretrained(word_teacher_dir))
    assert vocab <= 255
    store = tmp_path / "store"
    common = {
        "training.max_steps": 1,
        "distill.kd_temperature": 2.0,
        "student.from_teacher": "{every: 2, hidden_size: 16}",
        "cache.method": "topk",
        "cache.k": vocab,
        "cache.values": "logprob16",
        "cache.shard_blocks": 3,
    }
    run_cache(
        load_config(DEMO, _cfg(word_teacher_dir, tiny_text_file, tmp_path / "x", store, **common))
    )
    online = tmp_path / "online"
    run_distill_lm(
        load_config(DEMO, _cfg(word_teacher_dir, tiny_text_file, online, store, **common))
    )
    offline = tmp_path / "offline"
    run_distill_lm(
        load_config(
            DEMO,
            _cfg(
                word_teacher_dir,
                tiny_text_file,
                offline,
                store,
                **{**common, "teacher.kind": "store", "teacher.path": str(store)},
            ),
        )
    )
    a = json.loads((online / "kd_log.jsonl").read_text().splitlines()[0])
    b = json.loads((offline / "kd_log.jsonl").read_text().splitlines()[0])
    # fp16 log-probs in the store: equal within the encoding's precision
    for key in ("loss", "soft_loss", "hard_loss"):
        assert a[key] == pytest.approx(b[key], rel=2e-3), key
    assert a["soft_loss"] > 0.01


def test_sampled_store_trains_and_is_small(tiny_teacher_dir, tiny_text_file, tmp_path):
    store = tmp_path / "s"
    cfg = load_config(
        DEMO, _cfg(tiny_teacher_dir, tiny_text_file, tmp_path / "r", store, **{"cache.n": 16})
    )
    _, report = run_cache(cfg)
    assert report.bytes_per_token < 1 + 16 * (9 / 8 + 1)  # lengths + ids(9 bits) + counts
    out = tmp_path / "r2"
    run_distill_lm(
        load_config(
            DEMO,
            _cfg(
                tiny_teacher_dir,
                tiny_text_file,
                out,
                store,
                **{"cache.n": 16, "teacher.kind": "store", "teacher.path": str(store)},
            ),
        )
    )
    log = [json.loads(x) for x in (out / "kd_log.jsonl").read_text().splitlines()]
    assert all(r["soft_loss"] > 0 for r in log)


def test_flipped_byte_is_detected(tiny_teacher_dir, tiny_text_file, tmp_path, capsys):
    store = tmp_path / "s"
    run_cache(
        load_config(
            DEMO,
            _cfg(
                tiny_teacher_dir, tiny_text_file, tmp_path / "r", store, **{"cache.shard_blocks": 2}
            ),
        )
    )
    shard = store / "shard-00001.safetensors"
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0x01
    shard.write_bytes(bytes(data))
    with pytest.raises(StoreError, match=r"shard-00001\.safetensors: checksum mismatch"):
        StoreReader(store).verify_all()
    argv = [
        "distill",
        str(DEMO),
        *_cfg(
            tiny_teacher_dir,
            tiny_text_file,
            tmp_path / "t",
            store,
            **{"cache.shard_blocks": 2, "teacher.kind": "store", "teacher.path": str(store)},
        ),
    ]
    assert main(argv) == 2
    assert "shard-00001.safetensors: checksum mismatch" in capsys.readouterr().err


def test_store_for_other_data_is_refused(tiny_teacher_dir, tiny_text_file, tmp_path, capsys):
    store = tmp_path / "s"
    run_cache(load_config(DEMO, _cfg(tiny_teacher_dir, tiny_text_file, tmp_path / "r", store)))
    argv = [
        "distill",
        str(DEMO),
        *_cfg(
            tiny_teacher_dir,
            tiny_text_file,
            tmp_path / "t",
            store,
            **{"teacher.kind": "store", "teacher.path": str(store), "data.held_out_fraction": 0.3},
        ),
    ]
    assert main(argv) == 2
    assert "made from different data" in capsys.readouterr().err


CACHE_ARGS = {
    "data.source": "kjv",
    "data.max_train_tokens": 16 * 300,
    "cache.shard_blocks": 1,
    "cache.method": "sampled",
}


def _shard_state(store: Path) -> dict[str, tuple[str, int]]:
    m = json.loads((store / "manifest.json").read_text())
    return {
        k: (v["sha256"], (store / v["file"]).stat().st_mtime_ns) for k, v in m["shards"].items()
    }


def test_sigkill_then_rerun_completes_identically(tiny_teacher_dir, tiny_text_file, tmp_path):
    full = tmp_path / "full"
    run_cache(
        load_config(
            DEMO, _cfg(tiny_teacher_dir, tiny_text_file, tmp_path / "a", full, **CACHE_ARGS)
        )
    )
    n_shards = json.loads((full / "manifest.json").read_text())["n_blocks"]
    assert n_shards >= 100

    store = tmp_path / "killed"
    argv = [
        sys.executable,
        "-m",
        "kdistill.cli.main",
        "cache",
        str(DEMO),
        *_cfg(tiny_teacher_dir, tiny_text_file, tmp_path / "b", store, **CACHE_ARGS),
    ]
    proc = subprocess.Popen(
        argv,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    deadline = time.time() + 120
    done = 0
    while time.time() < deadline and proc.poll() is None:
        try:
            done = len(json.loads((store / "manifest.json").read_text())["shards"])
        except (OSError, json.JSONDecodeError, KeyError):
            done = 0
        if done >= 5:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.002)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    before = _shard_state(store)
    assert 5 <= len(before) < n_shards
    with pytest.raises(StoreError, match="incomplete"):
        StoreReader(store)

    _, report = run_cache(
        load_config(
            DEMO, _cfg(tiny_teacher_dir, tiny_text_file, tmp_path / "b", store, **CACHE_ARGS)
        )
    )
    # nothing finished was recomputed: skipped == the shards present before, files untouched
    assert sorted(report.skipped_shards) == sorted(int(k) for k in before)
    after = _shard_state(store)
    for k, (sha, mtime) in before.items():
        assert after[k] == (sha, mtime)
    full_state = _shard_state(full)
    assert {k: v[0] for k, v in after.items()} == {k: v[0] for k, v in full_state.items()}
    StoreReader(store).verify_all()


def test_plan_rows_on_a_peaky_distribution():
    g = torch.Generator().manual_seed(0)
    lp = torch.log_softmax(torch.randn(64, 1000, generator=g) * 4, dim=-1)
    rows = plan_rows(lp, 1000)
    by = {(r["method"], r.get("k"), r.get("n"), r["values"]): r for r in rows}
    small, big = by[("topk", 8, None, "logprob8")], by[("topk", 32, None, "logprob8")]
    assert big["captured_mass"] > small["captured_mass"]
    assert big["kl_full_to_reconstruction"] < small["kl_full_to_reconstruction"]
    assert big["bytes_per_token"] > small["bytes_per_token"]
    assert all(0 < r["captured_mass"] <= 1.0001 for r in rows)


def test_cache_plan_via_cli(tiny_teacher_dir, tiny_text_file, tmp_path, capsys):
    argv = [
        "cache",
        "plan",
        str(DEMO),
        *_cfg(tiny_teacher_dir, tiny_text_file, tmp_path / "p", tmp_path / "s"),
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "cache plan" in out and "B/token" in out and "n=24" in out and "count8" in out
    assert not (tmp_path / "s").exists()  # planning writes nothing
