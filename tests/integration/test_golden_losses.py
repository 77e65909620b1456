"""Golden losses: per-step losses and final weights of short tiny runs through every kind of
teacher (online full-logit and chunked, a store, recorded API logprobs, none), frozen in
``tests/golden/losses.json`` before the teacher-sources / loss-terms refactor. A refactor that
keeps the arithmetic order must reproduce them bit for bit.

Regenerate (only on purpose, and say why in the commit): ``KDISTILL_WRITE_GOLDEN=1 pytest
tests/integration/test_golden_losses.py``. The last bits depend on the CPU's kernels: on another
CPU model, regenerate with the *previous* tree, then check the current one against it (done when
this machine moved from an AMD EPYC to an Intel Xeon: every arm differed by about 1e-7 relative,
the tree of ``ade1bde`` and ``affc307``+ alike).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from kdistill.cli.main import main
from tests.conftest import tiny_overrides

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
DEMO = str(REPO / "src/kdistill/configs/demo.yaml")
GOLDEN = REPO / "tests" / "golden" / "losses.json"
KEYS = ("loss", "soft_loss", "hard_loss", "grad_norm")


def _weights_sha(folder: Path) -> str:
    tensors = load_file(str(folder / "model.safetensors"))
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].contiguous().view(-1).view(dtype=torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _kept_with_logprobs(tok, path: Path) -> Path:
    rows = []
    for t in ["And God said, Let there be light", "And the earth was without form"] * 10:
        ids = tok(t[12:], add_special_tokens=False)["input_ids"]
        tokens = [tok.decode([i]) for i in ids]
        tops = [[[x, math.log(0.6)], ["<unk>", math.log(0.1)]] for x in tokens]
        rows.append(
            {
                "prompt": t[:12],
                "completion": t[12:],
                "finish_reason": "length",
                "teacher_tokens": tokens,
                "teacher_top_logprobs": tops,
            }
        )
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _run(name, teacher, data, out, **extra) -> dict:
    base = {"training.max_steps": 4, "training.save_steps": 100, **extra}
    assert main(["distill", DEMO, *tiny_overrides(teacher, data, out, **base)]) == 0, name
    rows = [json.loads(x) for x in (out / "kd_log.jsonl").read_text().splitlines()]
    return {
        "steps": [{k: r[k] for k in KEYS if k in r} for r in rows if "loss" in r],
        "weights_sha256": _weights_sha(out / "model"),
    }


def test_losses_and_weights_match_the_golden_file(
    tiny_teacher_dir, tiny_text_file, tiny_tokenizer, tmp_path
):
    # one CPU thread: reductions in a fixed order whatever the machine or earlier tests
    # (the golden file was made at one thread, OMP_NUM_THREADS=1, on the tree of 806a66f)
    torch.set_num_threads(1)
    store = tmp_path / "store"
    cache_args = tiny_overrides(
        tiny_teacher_dir,
        tiny_text_file,
        tmp_path / "c",
        **{"cache.dir": store, "cache.method": "topk", "cache.k": 8},
    )
    assert main(["cache", DEMO, *cache_args]) == 0
    kept = _kept_with_logprobs(tiny_tokenizer, tmp_path / "kept.jsonl")
    t, d = tiny_teacher_dir, tiny_text_file
    got = {
        "online_chunked": _run("online_chunked", t, d, tmp_path / "a"),
        "online_full": _run(
            "online_full", t, d, tmp_path / "b", **{"training.loss_chunk_size": "null"}
        ),
        "store_chunked": _run(
            "store_chunked",
            t,
            d,
            tmp_path / "c1",
            **{"teacher.kind": "store", "teacher.path": store},
        ),
        "store_full": _run(
            "store_full",
            t,
            d,
            tmp_path / "c2",
            **{"teacher.kind": "store", "teacher.path": store, "training.loss_chunk_size": "null"},
        ),
        "recorded": _run(
            "recorded",
            t,
            kept,
            tmp_path / "r",
            **{"teacher.kind": "recorded", "data.block_size": 32},
        ),
        "none": _run("none", t, d, tmp_path / "n", **{"teacher.kind": "none"}),
    }
    if os.environ.get("KDISTILL_WRITE_GOLDEN") == "1":
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(got, indent=2) + "\n")
    want = json.loads(GOLDEN.read_text())
    assert got.keys() == want.keys()
    for name in want:
        g, w = got[name]["steps"], want[name]["steps"]
        assert [sorted(x) for x in g] == [sorted(x) for x in w], name
        # to the bit on a CPU whose kernels round as the golden file's did (it was made on an
        # Intel Xeon); another CPU (e.g. AMD EPYC) rounds float32 reductions in another order,
        # which moves the 7th significant digit. Any real change of the loss moves it far more.
        for gs, ws in zip(g, w, strict=True):
            for key, value in ws.items():
                assert gs[key] == pytest.approx(value, rel=1e-5, abs=1e-7), (name, key)
        if g == w:  # same rounding: the final weights too, to the bit
            assert got[name]["weights_sha256"] == want[name]["weights_sha256"], name
    assert all(len(v["steps"]) == 4 for v in want.values())
    assert want["none"]["steps"][0]["soft_loss"] == 0
    assert all(want[k]["steps"][0]["soft_loss"] > 0 for k in want if k != "none")
