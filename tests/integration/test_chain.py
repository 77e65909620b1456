"""`kdistill chain`: teacher -> assistant -> student (and a baseline), each stage taught by
the one its spec names, resumable per stage, evaluated and reported together."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from kdistill.cli.main import main

pytestmark = pytest.mark.integration
DEMO = str(Path(__file__).resolve().parents[2] / "src/kdistill/configs/demo.yaml")


def _spec(tmp_path: Path, teacher: Path, data: Path, stages: list[dict]) -> Path:
    base = tmp_path / "base.yaml"
    cfg = yaml.safe_load(Path(DEMO).read_text())
    cfg.update(output_dir=str(tmp_path / "unused"), seed=0)
    cfg["teacher"] = {"model": str(teacher)}
    cfg["data"] = {"source": str(data), "block_size": 16, "held_out_fraction": 0.2}
    cfg["distill"] = {**cfg["distill"], "terms": [], "soft_weight": 0.7, "hard_weight": 0.3}
    cfg["training"] = {
        **cfg.get("training", {}),
        "max_steps": 2,
        "per_device_batch_size": 4,
        "logging_steps": 1,
        "save_steps": 2,
        "warmup_steps": 0,
        "loss_chunk_size": 8,
    }
    base.write_text(yaml.safe_dump(cfg))
    spec = tmp_path / "chain.yaml"
    chain = {"config": "base.yaml", "output_dir": str(tmp_path / "chain"), "stages": stages}
    chain["eval"] = {"max_eval_tokens": 32, "speed_budget_s": 1}
    spec.write_text(yaml.safe_dump({"chain": chain}))
    return spec


def test_chain_runs_every_stage_from_the_one_before_and_reports_them_all(
    tiny_teacher_dir, tiny_text_file, tmp_path, capsys
):
    stages = [
        {"name": "assistant", "overrides": {"student.from_teacher": {"keep_layers": [0, 2, 3]}}},
        {
            "name": "student",
            "overrides": {
                "student.from_teacher": {"keep_layers": [0, 3], "model": str(tiny_teacher_dir)}
            },
        },
        {
            "name": "baseline",
            "teacher": "base",
            "overrides": {"teacher.kind": "none", "student.from_teacher": {"keep_layers": [0, 3]}},
        },
    ]
    spec = _spec(tmp_path, tiny_teacher_dir, tiny_text_file, stages)
    assert main(["chain", str(spec)]) == 0
    out = tmp_path / "chain"
    saved = {
        s: yaml.safe_load((out / s / "config.yaml").read_text()) for s in ("assistant", "student")
    }
    assert saved["assistant"]["teacher"]["model"] == str(tiny_teacher_dir)
    assert saved["student"]["teacher"]["model"] == str(out / "assistant" / "model")
    assert saved["student"]["student"]["from_teacher"]["model"] == str(tiny_teacher_dir)
    for s in ("assistant", "student", "baseline"):
        assert (out / s / "model" / "kdistill-done").is_file()
    results = json.loads((out / "eval" / "results.json").read_text())
    roles = results["setup"]["roles"]
    assert roles == {
        "teacher": "teacher",
        "student": "student",
        "baseline": "baseline",
        "assistant": "assistant",
    }
    for s in ("assistant", "student", "baseline"):
        assert results[s]["perplexity"] > 1 and results[s]["model"] == str(out / s / "model")
    report = (out / "eval" / "report.md").read_text()
    assert all(s in report for s in ("assistant", "student", "baseline"))
    # resumable per stage: finished stages are left alone
    mtime = (out / "student" / "model" / "model.safetensors").stat().st_mtime_ns
    capsys.readouterr()
    assert main(["chain", str(spec)]) == 0
    said = capsys.readouterr().out
    assert said.count("already complete") == 3 and "evaluation is up to date" in said
    assert (out / "student" / "model" / "model.safetensors").stat().st_mtime_ns == mtime


def test_chain_spec_errors_are_one_line_before_any_stage_runs(
    tmp_path, capsys, tiny_teacher_dir, tiny_text_file
):
    bad = [
        ([{"name": "a", "teacher": "b"}, {"name": "b"}], "name an earlier stage"),
        ([{"name": "a"}, {"name": "a"}], "used twice"),
        ([{"name": "eval"}], "not 'base' or 'eval'"),
        ([{"name": "a", "overrides": {"distill.divergence": "nope"}}], "divergence"),
    ]
    for stages, words in bad:
        spec = _spec(tmp_path, tiny_teacher_dir, tiny_text_file, stages)
        capsys.readouterr()
        assert main(["chain", str(spec)]) == 2
        err = capsys.readouterr().err.strip()
        assert words in err and err.count("\n") == 0, err
        assert not (tmp_path / "chain").exists()


def test_the_shipped_ta_chain_spec_validates_every_stage():
    from kdistill.config.chain import load_chain
    from kdistill.pipeline.chain import stage_configs

    repo = Path(__file__).resolve().parents[2]
    spec, base = load_chain(repo / "reproductions/ta_chain/chain.yaml", ["seed=1"])
    cfgs = stage_configs(spec, base)
    names = [s.name for s in spec.stages]
    assert names == ["assistant", "student", "direct", "baseline"]
    by = dict(zip(names, cfgs, strict=True))
    assert by["student"].teacher.model.endswith("assistant/model")
    assert by["direct"].teacher.model == by["assistant"].teacher.model == "smollm2-135m"
    assert by["student"].student.from_teacher.layers == by["direct"].student.from_teacher.layers
    steps = by["assistant"].training.max_steps + by["student"].training.max_steps
    assert steps == by["direct"].training.max_steps  # equal student-update tokens
    assert {c.seed for c in cfgs} == {1}
