"""``kdistill demo`` with its three training runs side by side (``--jobs 2``: two worker
processes) against one after another (``--jobs 1``), on a tiny teacher: the same three models
bit for bit, every run folder complete, each worker's output in ``logs/``; the helpers that
follow the workers; ``--jobs`` refused outside 1 and 2. (That the real runs give the same bits
at 1 thread as at 2 is tests/real/test_threads_same_bits.py.)"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from kdistill.errors import InputError
from kdistill.pipeline.demo import run_demo
from kdistill.pipeline.demo_jobs import _last_line, _steps_done
from tests.conftest import DEMO_AS_TESTED

pytestmark = pytest.mark.integration


def _tiny(teacher_dir, data) -> list[str]:
    over = {
        "teacher.model": str(teacher_dir),
        "student.from_teacher.layers": "null",
        "student.from_teacher.intermediate_size": "null",
        "student.from_teacher.keep_layers": "[0, 3]",
        "data.source": str(data),
        "data.block_size": 16,
        "data.held_out_fraction": 0.2,
        "data.max_eval_tokens": 64,
        "training.per_device_batch_size": 4,
        "training.save_steps": 2,
        "training.logging_steps": 1,
        "training.warmup_steps": 0,
        "training.loss_chunk_size": 8,
        **DEMO_AS_TESTED,
    }
    return [f"{k}={v}" for k, v in over.items()]


def test_side_by_side_gives_the_same_models_as_one_after_another(
    tiny_teacher_dir, tiny_text_file, tmp_path
):
    over = _tiny(tiny_teacher_dir, tiny_text_file)
    results = {}
    for jobs in (1, 2):
        out = tmp_path / f"jobs{jobs}"
        results[jobs] = json.loads(run_demo(str(out), 3, overrides=over, jobs=jobs).read_text())
    timings = results[2]["timings"]
    assert timings["side_by_side"] is True and "side_by_side" not in results[1]["timings"]
    for name in ("student", "baseline", "scratch"):
        assert timings[f"{'distill' if name == 'student' else name}_seconds"] > 0
        runs = [tmp_path / f"jobs{j}" / name for j in (1, 2)]
        a, b = (load_file(str(r / "model" / "model.safetensors")) for r in runs)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
        assert (runs[1] / "train_summary.json").is_file()
        log = tmp_path / "jobs2" / "logs" / f"{name}.log"
        assert log.is_file()
        assert _steps_done(runs[1]) == 3
    for name in ("student", "baseline", "scratch"):
        assert results[1][name]["perplexity"] == results[2][name]["perplexity"]
    assert not (tmp_path / "jobs1" / "logs").exists()


def test_steps_done_and_last_line_read_what_workers_leave(tmp_path):
    assert _steps_done(tmp_path) == 0
    (tmp_path / "kd_log.jsonl").write_text('{"step": 5, "loss": 1.0}\n{"step": 10, "lo')
    assert _steps_done(tmp_path) == 5  # a line being written is skipped
    log = tmp_path / "x.log"
    log.write_text("loading\nkdistill: data.source 'x' not found; give a file\n  \n")
    assert _last_line(log) == "data.source 'x' not found; give a file"
    log.write_text("Traceback\nRuntimeError: boom\n")
    assert _last_line(log) == "RuntimeError: boom"
    assert _last_line(tmp_path / "missing.log") == ""


def test_jobs_outside_1_and_2_is_refused_before_any_work(tmp_path):
    with pytest.raises(InputError, match="--jobs 3"):
        run_demo(str(tmp_path / "d"), 1, jobs=3)
    assert not (tmp_path / "d").exists()


def test_a_worker_left_alone_takes_every_thread_from_its_next_step():
    import threading

    from kdistill.pipeline.demo_jobs import _all_threads_when_alone

    before = torch.get_num_threads()
    alone = threading.Event()
    callback = _all_threads_when_alone(alone, 2)
    try:
        torch.set_num_threads(1)
        callback.on_step_begin(None, None, None)
        assert torch.get_num_threads() == 1  # the other worker still runs
        alone.set()
        callback.on_step_begin(None, None, None)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
