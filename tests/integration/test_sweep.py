"""`kdistill sweep`: two arms (no teacher; KD at two temperatures) x 2 seeds of tiny models
runs every cell, writes intervals and the paired comparison, renders its page; a re-run
skips finished cells; a cell whose record is gone runs again alone; bad specs are refused
before anything runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from kdistill.cli.main import main
from kdistill.config.loader import load_config, save_config
from tests.conftest import tiny_overrides

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "src/kdistill/configs/demo.yaml"


def _spec(tmp_path: Path, teacher: Path, data: Path, base=(), **sweep) -> Path:
    over = tiny_overrides(teacher, data, tmp_path / "unused")
    over += ["training.max_steps=2", "training.save_steps=2", "data.max_eval_tokens=64", *base]
    save_config(load_config(DEMO, over), tmp_path / "base.yaml")
    body = {
        "config": "base.yaml",
        "output_dir": str(tmp_path / "sweep"),
        "seeds": 2,
        "metric": "perplexity",
        "goal": "min",
        "baseline": "alone",
        "arms": {
            "alone": {
                "overrides": {"teacher.kind": "none"},
                "skip_grid": ["distill.kd_temperature"],
            },
            "kd": {},
        },
        "grid": {"distill.kd_temperature": [1.0, 4.0]},
        **sweep,
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"sweep": body}))
    return path


def _mtimes(folder: Path) -> dict[str, int]:
    return {p.parent.name: p.stat().st_mtime_ns for p in folder.glob("cells/*/cell.json")}


def test_sweep_runs_resumes_and_reports(tiny_teacher_dir, tiny_text_file, tmp_path):
    spec = _spec(tmp_path, tiny_teacher_dir, tiny_text_file)
    assert main(["sweep", str(spec)]) == 0
    out = tmp_path / "sweep"
    data = json.loads((out / "sweep.json").read_text())
    assert len(data["cells"]) == 6 and data["missing"] == []
    assert len(data["groups"]) == 3  # alone (the temperature skipped), kd at T = 1 and 4
    for g in data["groups"]:  # two seeds each: a mean and a t interval around it
        iv = g["interval"]
        assert g["seeds"] == [0, 1] and iv["n"] == 2
        assert iv["low"] <= iv["mean"] <= iv["high"]
        assert iv["mean"] == pytest.approx(sum(g["values"].values()) / 2)
    # the chosen setting per arm is the lower mean perplexity (no validation metric)
    assert data["selected_on"] == "test"
    for arm, name in data["chosen"].items():
        mine = [g for g in data["groups"] if g["arm"] == arm]
        assert name == min(mine, key=lambda g: g["interval"]["mean"])["group"]
    (cmp,) = data["comparisons"]
    groups = {g["group"]: g for g in data["groups"]}
    kd, alone = groups[cmp["group"]], groups[cmp["baseline_group"]]
    diffs = [kd["values"][s] - alone["values"][s] for s in ("0", "1")]
    assert cmp["arm"] == "kd" and cmp["difference"]["mean"] == pytest.approx(sum(diffs) / 2)
    assert data["teacher"] > 0  # the teacher's perplexity, for the share of the gap recovered
    page = (out / "sweep.html").read_text()
    assert "Paired differences" in page and "data:image/png;base64," in page
    assert (out / "plots" / "sweep_distill_kd_temperature.png").is_file()
    # the student alone has no temperature: a reference band on that plot, at its chosen mean
    from kdistill.report.sweep import references

    ref = references(data, "distill.kd_temperature")
    assert list(ref) == ["alone"] and ref["alone"][0] == alone["interval"]["mean"]

    before = _mtimes(out)
    assert main(["sweep", str(spec)]) == 0  # resumed: nothing runs again
    assert _mtimes(out) == before
    gone = sorted(before)[0]
    (out / "cells" / gone / "cell.json").unlink()
    # only that cell runs again, here in a worker process of its own (workers: 2)
    assert main(["sweep", str(spec), "workers=2"]) == 0
    after = _mtimes(out)
    assert [k for k in after if after[k] != before[k]] == [gone]
    redone = json.loads((out / "cells" / gone / "cell.json").read_text())
    old = {c["name"]: c for c in data["cells"]}[gone]
    assert redone["metrics"]["cell"]["perplexity"] == old["metrics"]["cell"]["perplexity"]


def test_bad_sweep_specs_are_refused_before_anything_runs(
    tiny_teacher_dir, tiny_text_file, tmp_path, capsys
):
    bad = [
        {"baseline": "nope"},
        {"grid": {"training.learning_rate": []}},
        {"grid": {"training.no_such_key": [1, 2]}},
        {"grid": {"distill.kd_temperature": [4.0, -1.0]}},  # the second cell is invalid
        {"arms": {"kd": {"skip_grid": ["training.no_such_key"]}}, "baseline": None},
    ]
    for i, extra in enumerate(bad):
        spec = _spec(tmp_path, tiny_teacher_dir, tiny_text_file, **extra)
        assert main(["sweep", str(spec)]) == 2, extra
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        assert not (tmp_path / "sweep").exists(), i


def test_a_failing_cell_is_recorded_the_others_run_and_a_rerun_retries_it(
    tiny_teacher_dir, tiny_text_file, tmp_path, monkeypatch, capsys
):
    """The cell runner is replaced by a stand-in (the orchestration is under test, not the
    training): one cell raises; its cell.json records the error, the others finish, exit 2;
    the next run retries only that cell, whose record is then replaced (nothing deleted)."""
    from kdistill.pipeline import sweep as sweep_mod

    spec = _spec(tmp_path, tiny_teacher_dir, tiny_text_file)
    calls, state = [], {"failed_once": False}

    def fake(base, cell, cell_dir, threads):
        calls.append(cell.name)
        if cell.name.startswith("kd-") and cell.seed == 1 and not state["failed_once"]:
            state["failed_once"] = True
            raise RuntimeError("out of memory in this cell")
        return {"cell": {"perplexity": 10.0 + cell.seed}, "teacher": {"perplexity": 5.0}}

    monkeypatch.setattr(sweep_mod, "run_cell", fake)
    assert main(["sweep", str(spec)]) == 2
    assert "1 cell(s) failed" in capsys.readouterr().err
    records = {
        p.parent.name: json.loads(p.read_text())
        for p in (tmp_path / "sweep").glob("cells/*/cell.json")
    }
    failed = [n for n, r in records.items() if r.get("failed")]
    assert len(records) == 6 and len(failed) == 1
    assert records[failed[0]]["failed"] == "out of memory in this cell"
    data = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert data["missing"] == failed and len(data["cells"]) == 5
    calls.clear()
    assert main(["sweep", str(spec)]) == 0
    assert calls == failed  # only the failed cell ran again
    again = json.loads((tmp_path / "sweep" / "cells" / failed[0] / "cell.json").read_text())
    assert "failed" not in again and again["metrics"]["cell"]["perplexity"] == 11.0


def test_a_signal_stops_the_whole_sweep_not_just_one_cell(
    tiny_teacher_dir, tiny_text_file, tmp_path, monkeypatch
):
    """SIGTERM (a preempted job) during a cell: the cell keeps its checkpoint and the sweep
    stops there with 128 + the signal, no cell recorded as failed; the re-run continues."""
    import signal

    from kdistill.errors import Preempted
    from kdistill.pipeline import sweep as sweep_mod

    spec = _spec(tmp_path, tiny_teacher_dir, tiny_text_file)
    calls, state = [], {"signalled": False}

    def fake(base, cell, cell_dir, threads):
        calls.append(cell.name)
        if len(calls) == 2 and not state["signalled"]:
            state["signalled"] = True
            raise Preempted(signal.SIGTERM, 3, str(cell_dir / "run" / "checkpoints"))
        return {"cell": {"perplexity": 10.0 + cell.seed}, "teacher": {"perplexity": 5.0}}

    monkeypatch.setattr(sweep_mod, "run_cell", fake)
    assert main(["sweep", str(spec)]) == 128 + signal.SIGTERM
    assert len(calls) == 2  # nothing ran after the signal
    records = [json.loads(p.read_text()) for p in (tmp_path / "sweep").glob("cells/*/cell.json")]
    assert len(records) == 1 and not any(r.get("failed") for r in records)
    calls.clear()
    assert main(["sweep", str(spec)]) == 0
    assert len(calls) == 5  # the interrupted cell and the rest
