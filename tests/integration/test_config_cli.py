"""Shipped configs load and build; user mistakes give one line and exit code 2."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pytest

from kdistill.cli.main import main
from kdistill.config import builders
from kdistill.config.loader import ConfigError, load_config
from kdistill.training.step import KDSchedules

CONFIGS = sorted(Path(str(resources.files("kdistill") / "configs")).glob("*.yaml"))


def test_there_are_shipped_configs():
    assert any(p.name == "demo.yaml" for p in CONFIGS)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads_and_builds(path, tmp_path):
    from transformers import TrainingArguments

    cfg = load_config(path)
    sched = KDSchedules.build(**builders.schedule_kwargs(cfg))
    knobs = sched.at(0, cfg.training.max_steps)
    assert knobs.kd_temperature > 0
    args = TrainingArguments(**builders.training_arguments_kwargs(cfg, str(tmp_path)))
    assert args.max_steps == cfg.training.max_steps
    builders.data_kwargs(cfg)
    builders.objective_kwargs(cfg)
    builders.student_kwargs(cfg)


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_unknown_key_names_path_and_nearest(capsys, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data:\n  blok_size: 64\n")
    assert main(["distill", str(cfg)]) == 2
    line = _one_error_line(capsys)
    assert "data.blok_size" in line and "block_size" in line


def test_unknown_key_in_override(capsys):
    demo = str(CONFIGS[[p.name for p in CONFIGS].index("demo.yaml")])
    assert main(["distill", demo, "training.max_stepz=3"]) == 2
    assert "max_steps" in _one_error_line(capsys)


def test_bad_value_is_one_line(capsys, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("distill:\n  kd_temperature: -2\n")
    assert main(["distill", str(cfg)]) == 2
    assert "kd_temperature" in _one_error_line(capsys)


def test_bad_type_is_one_line(capsys, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("training:\n  max_steps: lots\n")
    assert main(["distill", str(cfg)]) == 2
    assert "training.max_steps" in _one_error_line(capsys)


def test_missing_file(capsys, tmp_path):
    assert main(["distill", str(tmp_path / "nope.yaml")]) == 2
    assert "not found" in _one_error_line(capsys)


def test_missing_model_is_one_line(capsys, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"output_dir: {tmp_path / 'out'}\nteacher:\n  model: {tmp_path / 'no-model'}\n"
        "student:\n  from_teacher:\n    every: 2\n"
    )
    assert main(["distill", str(cfg)]) == 2
    assert "not found" in _one_error_line(capsys)


def test_invalid_yaml(capsys, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data: [unclosed\n")
    assert main(["distill", str(cfg)]) == 2
    assert "invalid YAML" in _one_error_line(capsys)


def test_schedule_override_parses():
    cfg = load_config(None, ["distill.kd_temperature={kind: linear, start: 4, end: 1}"])
    sched = KDSchedules.build(**builders.schedule_kwargs(cfg))
    assert sched.at(0, 10).kd_temperature == 4.0
    assert sched.at(10, 10).kd_temperature == 1.0


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match=r"key\.sub=value"):
        load_config(None, ["training.max_steps"])


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("kdistill ")


@pytest.mark.parametrize("verb", ["distill", "train-teacher", "demo"])
def test_help_on_every_verb(verb, capsys):
    assert main([verb, "--help"]) == 0
    assert "Usage" in capsys.readouterr().out


def test_the_demo_trains_three_students_that_differ_only_in_teacher_and_init(tmp_path):
    """The distilled student, its named baseline (same init, no teacher) and the from-scratch
    model (same shape, fresh weights, no teacher) see the same data and training settings."""
    from kdistill.pipeline.demo import demo_configs

    student, baseline, scratch = demo_configs(tmp_path, 7, ["training.learning_rate=0.002"])
    assert (student.teacher.kind, baseline.teacher.kind, scratch.teacher.kind) == (
        "model",
        "none",
        "none",
    )
    inits = [c.student.from_teacher.init for c in (student, baseline, scratch)]
    assert inits == ["teacher", "teacher", "random"]
    for cfg in (baseline, scratch):
        assert cfg.data == student.data
        assert cfg.training == student.training
        assert cfg.seed == student.seed
    assert student.training.max_steps == 7 and student.training.learning_rate == 0.002
    outs = {Path(c.output_dir).name for c in (student, baseline, scratch)}
    assert outs == {"student", "baseline", "scratch"}
    # a term that reads the teacher's states stays with the distilled student only
    hidden = ["distill.terms=[{name: hidden, loss: cosine, weight: 1.0}]"]
    student, baseline, scratch = demo_configs(tmp_path, 7, hidden)
    assert [t.name for t in student.distill.terms] == ["hidden"]
    assert baseline.distill.terms == [] and scratch.distill.terms == []
