"""The seams are real: a teacher kind defined here, outside src/, registered and trained
through a config that names it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import pytest
import torch

from kdistill.cli.main import main
from kdistill.config.schema import TEACHER_SPECS, TeacherSpec, register_teacher_spec
from kdistill.teachers.base import TEACHER_KINDS, TeacherSignal, register_teacher_kind
from tests.conftest import tiny_overrides

pytestmark = pytest.mark.integration
DEMO = str(Path(__file__).resolve().parents[2] / "src/kdistill/configs/demo.yaml")


class OracleSpec(TeacherSpec):
    """A teacher that knows the next token: logits ``sharpness`` on it, 0 elsewhere."""

    kind: Literal["oracle"] = "oracle"
    sharpness: float = 4.0


class OracleTeacher:
    def __init__(self, sharpness: float, vocab_size: int):
        self.sharpness, self.vocab_size, self.calls = sharpness, vocab_size, 0

    def signal(self, batch, *, want):
        self.calls += 1
        nxt = batch["input_ids"].roll(-1, dims=1)
        logits = torch.zeros(*nxt.shape, self.vocab_size)
        logits.scatter_(-1, nxt.unsqueeze(-1), self.sharpness)
        return TeacherSignal(logits=logits)


@pytest.fixture()
def oracle_kind():
    made = []

    def factory(settings, *, vocab_size, **_):
        made.append(OracleTeacher(settings["sharpness"], vocab_size))
        return made[-1]

    register_teacher_spec("oracle", OracleSpec)
    register_teacher_kind("oracle", factory)
    yield made
    TEACHER_SPECS.pop("oracle")
    TEACHER_KINDS.pop("oracle")


@pytest.mark.parametrize("chunk", [8, "null"])
def test_a_teacher_kind_defined_outside_src_trains(
    oracle_kind, chunk, tiny_teacher_dir, tiny_text_file, tmp_path
):
    run = tmp_path / "run"
    extra = {
        "teacher.kind": "oracle",
        "teacher.sharpness": 6.0,
        "training.max_steps": 3,
        "training.loss_chunk_size": chunk,
    }
    assert (
        main(["distill", DEMO, *tiny_overrides(tiny_teacher_dir, tiny_text_file, run, **extra)])
        == 0
    )
    (teacher,) = oracle_kind
    assert teacher.sharpness == 6.0 and teacher.calls == 3
    log = [json.loads(x) for x in (run / "kd_log.jsonl").read_text().splitlines()]
    assert all(r["soft_loss"] > 0.1 for r in log)
    saved = (run / "config.yaml").read_text()
    assert "kind: oracle" in saved and "sharpness: 6.0" in saved
