"""The seams are real: a teacher kind and a loss term defined here, outside src/, registered
and trained through a config that names them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import pytest
import torch

from kdistill.cli.main import main
from kdistill.config.schema import (
    TEACHER_SPECS,
    TERM_SPECS,
    TeacherSpec,
    TermSpec,
    register_teacher_spec,
    register_term_spec,
)
from kdistill.teachers.base import TEACHER_KINDS, TeacherSignal, register_teacher_kind
from kdistill.training.terms import LOSS_TERMS, register_loss_term
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


def _registered(name, spec, register_spec, specs, register, kinds, build):
    """Register a kind/term under ``name`` for one test; yield what its factory made."""
    made = []

    def factory(settings, **context):
        made.append(build(settings, **context))
        return made[-1]

    register_spec(name, spec)
    register(name, factory)
    yield made
    specs.pop(name)
    kinds.pop(name)


@pytest.fixture()
def oracle_kind():
    yield from _registered(
        "oracle",
        OracleSpec,
        register_teacher_spec,
        TEACHER_SPECS,
        register_teacher_kind,
        TEACHER_KINDS,
        lambda settings, *, vocab_size, **_: OracleTeacher(settings["sharpness"], vocab_size),
    )


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


class NormSpec(TermSpec):
    """Keep the student's last hidden state small: mean squared activation (no teacher)."""

    reads_teacher_states = False
    name: Literal["norm"] = "norm"
    layer: int = -1


class NormTerm(torch.nn.Module):
    teacher_states = ()

    def __init__(self, layer: int):
        super().__init__()
        self.layer, self.calls = layer, 0

    def forward(self, student_states, teacher_states, valid):
        self.calls += 1
        per = student_states[self.layer].float().pow(2).mean(-1)
        return torch.where(valid, per, 0.0).sum()


@pytest.fixture()
def norm_term():
    yield from _registered(
        "norm",
        NormSpec,
        register_term_spec,
        TERM_SPECS,
        register_loss_term,
        LOSS_TERMS,
        lambda settings, **_: NormTerm(settings["layer"]),
    )


def test_a_loss_term_defined_outside_src_trains_with_a_scheduled_weight(
    norm_term, tiny_teacher_dir, tiny_text_file, tmp_path
):
    run = tmp_path / "run"
    extra = {
        "teacher.kind": "none",  # a term that reads no teacher states needs no teacher
        "distill.terms": "[{name: norm, layer: 2, weight: {kind: linear, start: 1.0, end: 0.0}}]",
        "training.max_steps": 3,
    }
    assert (
        main(["distill", DEMO, *tiny_overrides(tiny_teacher_dir, tiny_text_file, run, **extra)])
        == 0
    )
    (term,) = norm_term
    assert term.layer == 2 and term.calls == 3
    log = [json.loads(x) for x in (run / "kd_log.jsonl").read_text().splitlines()]
    assert all(r["norm_loss"] > 0 for r in log) and all(r["soft_loss"] == 0 for r in log)
