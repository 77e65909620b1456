"""Nothing lost, nothing mixed: damaged generation files, foreign teachers, non-finite runs,
changed settings on resume, preemption, the installed entry point, bugs keep tracebacks."""

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
from safetensors.torch import load_file

from kdistill.cli.main import main
from kdistill.data.generations import GenerationStore
from tests.conftest import tiny_overrides
from tests.fakes import FakeOpenAIServer

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
DEMO = str(REPO / "src/kdistill/configs/demo.yaml")
KDISTILL = str(Path(sys.executable).with_name("kdistill"))


def _record(pid: str, sample: int = 0) -> dict:
    return {"prompt_id": pid, "sample": sample, "completion": f"answer {pid}", "model": "m"}


def test_damaged_middle_lines_are_quarantined_and_every_good_record_kept(tmp_path):
    path = tmp_path / "generations.jsonl"
    lines = [json.dumps(_record(f"p{i}")) for i in range(6)]
    lines[2] = '{"prompt_id": "p2", "sample": 0, "completion": "cut sho'  # key readable
    lines[3] = "\x00\x00 garbage \x00"  # no key
    path.write_text("\n".join(lines) + "\n" + json.dumps(_record("p6"))[:20])  # torn tail
    store = GenerationStore(path)
    store.close()
    kept = [json.loads(x)["prompt_id"] for x in path.read_text().splitlines()]
    assert kept == ["p0", "p1", "p4", "p5"]
    q = [json.loads(x) for x in store.quarantine_path.read_text().splitlines()]
    assert [(e["line_number"], e["key"]) for e in q] == [(3, ["p2", 0]), (4, None)]
    assert store.torn
    # p2 is not paid for again (its line is kept in quarantine); p3 and the torn p6 are
    assert ("p2", 0) in store.done and ("p3", 0) not in store.done
    assert ("p6", 0) not in store.done
    # a second open finds a clean file and changes nothing
    before = path.read_bytes()
    GenerationStore(path).close()
    assert path.read_bytes() == before


def test_generate_regenerates_only_what_was_lost_and_refuses_another_teacher(tmp_path, capsys):
    server = FakeOpenAIServer()
    try:
        prompts = tmp_path / "p.jsonl"
        prompts.write_text(
            "".join(json.dumps({"id": f"p{i}", "prompt": f"q {i}"}) + "\n" for i in range(5))
        )
        out = tmp_path / "gen"
        args = [
            "generate",
            DEMO,
            f"generate.prompts={prompts}",
            f"generate.output_dir={out}",
            "generate.backend=openai",
            f"generate.base_url={server.url}",
        ]
        assert main(args) == 0
        gens = out / "generations.jsonl"
        lines = gens.read_text().splitlines()
        lines[1] = lines[1][:40]  # damaged in the middle, its id still readable
        gens.write_text("\n".join(lines) + "\n")
        hits_before = sum(server.hits.values())
        assert main(args) == 0
        assert sum(server.hits.values()) == hits_before  # p1 not paid for again
        assert len(gens.read_text().splitlines()) == 4
        assert "moved to generations.quarantine.jsonl" in capsys.readouterr().err
        # the same folder, another served model: refused, nothing touched
        state = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
        assert main([*args, "generate.model=other"]) == 2
        err = capsys.readouterr().err
        assert "holds generations of teacher at" in err and "--allow-teacher-change" in err
        assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == state
        assert main([*args, "generate.model=other", "--allow-teacher-change"]) == 0
    finally:
        server.close()


def test_store_of_another_teacher_is_refused(
    tiny_teacher_dir, word_teacher_dir, tiny_text_file, tmp_path, capsys
):
    store = tmp_path / "store"
    common = {"cache.dir": store, "cache.method": "topk", "cache.k": 4}
    assert (
        main(
            [
                "cache",
                DEMO,
                *tiny_overrides(tiny_teacher_dir, tiny_text_file, tmp_path / "c", **common),
            ]
        )
        == 0
    )
    # the same store folder for another teacher: refused before anything loads
    manifest = (store / "manifest.json").read_bytes()
    assert (
        main(
            [
                "cache",
                DEMO,
                *tiny_overrides(word_teacher_dir, tiny_text_file, tmp_path / "c", **common),
            ]
        )
        == 2
    )
    assert "was made by teacher" in capsys.readouterr().err
    assert (store / "manifest.json").read_bytes() == manifest
    # training from it with another teacher named: refused, no run folder written
    run = tmp_path / "run"
    other = tiny_overrides(
        word_teacher_dir, tiny_text_file, run, **{"teacher.kind": "store", "teacher.path": store}
    )
    assert main(["distill", DEMO, *other]) == 2
    err = capsys.readouterr().err
    assert "was made by teacher" in err and "--allow-teacher-change" in err
    assert not run.exists()


def _lr_log(run: Path) -> dict[int, float]:
    rows = [json.loads(x) for x in (run / "kd_log.jsonl").read_text().splitlines()]
    return {r["step"]: r["learning_rate"] for r in rows if "learning_rate" in r}


def _lr_args(teacher, text, run: Path, lr: float, steps: int, save_steps: int) -> list[str]:
    extra = {
        "training.learning_rate": lr,
        "training.save_steps": save_steps,
        "training.max_steps": steps,
        "training.lr_scheduler": "constant",
    }
    return ["distill", DEMO, *tiny_overrides(teacher, text, run, **extra)]


def test_non_finite_run_leaves_no_complete_checkpoint_and_rerun_trains_at_new_rate(
    tiny_teacher_dir, tiny_text_file, tmp_path, capsys
):
    run = tmp_path / "run"

    def args(lr, steps):
        return _lr_args(tiny_teacher_dir, tiny_text_file, run, lr, steps, save_steps=1)

    assert main(args(1e30, 3)) == 2
    assert "non-finite" in capsys.readouterr().err
    assert not list(run.glob("checkpoints/*/kdistill-complete"))
    assert main(args(0.002, 3)) == 0  # the corrected re-run is not refused
    assert set(_lr_log(run).values()) == {0.002}


def test_changed_learning_rate_on_resume_is_in_effect(
    tiny_teacher_dir, tiny_text_file, tmp_path, capsys
):
    run = tmp_path / "run"

    def args(lr, steps):
        return _lr_args(tiny_teacher_dir, tiny_text_file, run, lr, steps, save_steps=2)

    assert main(args(0.004, 2)) == 0
    import shutil

    shutil.rmtree(run / "model")  # as if killed after checkpoint-2, before the end
    (run / "kd_log.jsonl").unlink()
    assert main(args(0.001, 4)) == 0
    out = capsys.readouterr().out
    assert "training.learning_rate 0.004 -> 0.001" in out
    assert "resuming from" in out
    assert _lr_log(run) == {3: 0.001, 4: 0.001}
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["global_step"] == 4
    assert summary["changed_on_resume"]["training.learning_rate"] == [0.004, 0.001]


def test_sigterm_saves_a_complete_checkpoint_that_resumes_bit_identically(
    tiny_teacher_dir, tiny_text_file, tmp_path
):
    extra = {"training.max_steps": 16, "training.save_steps": 100, "training.num_threads": 1}
    ref = tmp_path / "ref"
    run = tmp_path / "run"
    argv = ["distill", DEMO, *tiny_overrides(tiny_teacher_dir, tiny_text_file, run, **extra)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [KDISTILL, *argv], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    log = run / "kd_log.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if log.is_file() and len(log.read_text().splitlines()) >= 2:
            proc.send_signal(signal.SIGTERM)
            break
        time.sleep(0.05)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM" in err and "Traceback" not in err
    done = list(run.glob("checkpoints/*/kdistill-complete"))
    assert len(done) == 1 and not (run / "model").exists()
    step = int(done[0].parent.name.split("-")[1])
    assert 2 <= step < 16
    assert main(argv) == 0  # resumes and finishes
    ref_argv = ["distill", DEMO, *tiny_overrides(tiny_teacher_dir, tiny_text_file, ref, **extra)]
    assert main(ref_argv) == 0
    a = load_file(str(run / "model" / "model.safetensors"))
    b = load_file(str(ref / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    "args, rc, stream, needle",
    [
        ([], 2, "stdout", "Usage"),
        (["--help"], 0, "stdout", "distill"),
        (["nope"], 2, "stderr", "kdistill: error: No such command 'nope'"),
        (["distill", "--bogus"], 2, "stderr", "kdistill: error: No such option: --bogus"),
    ],
)
def test_installed_entry_point(args, rc, stream, needle):
    p = subprocess.run([KDISTILL, *args], capture_output=True, text=True, timeout=120)
    assert p.returncode == rc
    assert needle in getattr(p, stream)
    assert "Traceback" not in p.stdout + p.stderr


def test_a_bug_keeps_its_traceback(monkeypatch, tmp_path):
    import kdistill.pipeline.distill_lm as d

    def broken(*a, **k):
        raise RuntimeError("internal failure")

    monkeypatch.setattr(d, "run_distill_lm", broken)
    with pytest.raises(RuntimeError, match="internal failure"):
        main(["distill", DEMO, f"output_dir={tmp_path / 'r'}"])
