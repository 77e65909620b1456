"""Sharded heads: the chunked loss reads the output head outside the module's forward, so a
sharded head must be gathered first. A fake DeepSpeed ZeRO-3 parameter (an empty placeholder
outside a gather context, as ZeRO-3 keeps it) proves the trainer gathers it; FSDP2's
``DTensor`` path is checked with 2 real processes in ``test_fsdp.py``."""

from __future__ import annotations

import copy
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from transformers import TrainingArguments

from kdistill.data.lm import CausalCollator, IndexedDataset, build_lm_datasets
from kdistill.models.loading import load_causal_lm
from kdistill.teachers.model import ModelTeacher
from kdistill.training import sharding
from kdistill.training.step import KDSchedules
from kdistill.training.trainer import KDTrainer
from tests.conftest import make_tiny_lm

pytestmark = pytest.mark.integration


class _FakeZero3:
    """Stands in for DeepSpeed ZeRO-3: partitioned parameters hold ``torch.empty(0)`` and get
    their data back only inside ``gathered`` (``zero.GatheredParameters``) or their module's
    forward. (A stand-in: real DeepSpeed was not available to test against.)"""

    def __init__(self):
        self.gathers = 0

    @staticmethod
    def partition(param: torch.nn.Parameter, ds_id: int) -> None:
        param.ds_id, param.ds_shape = ds_id, tuple(param.shape)
        param.ds_full = param.data
        param.data = torch.empty(0, dtype=param.dtype)

    @staticmethod
    def _fill(params) -> list:
        """Gather the partitioned ones among ``params``; returns those it gathered."""
        now = [p for p in params if p.numel() == 0]
        for p in now:
            p.data = p.ds_full
        return now

    @staticmethod
    def _empty(params):
        for p in params:
            p.ds_full = p.data
            p.data = torch.empty(0, dtype=p.dtype)

    @contextmanager
    def gathered(self, params):
        """Like ``GatheredParameters``: gathers them, and re-partitions every one of them on
        exit (no nesting count: a caller must not hand it one an outer gather holds)."""
        self.gathers += 1
        self._fill(params)
        try:
            yield
        finally:
            self._empty(params)

    def hook_module(self, module: torch.nn.Module) -> None:
        """ZeRO-3 gathers a module's parameters for its own forward and frees them after."""
        params = list(module.parameters(recurse=False))
        held = []
        module.register_forward_pre_hook(lambda *_: held.append(self._fill(params)))
        module.register_forward_hook(lambda *_: self._empty(held.pop()))


@pytest.fixture
def pair(tiny_tokenizer, tiny_teacher_dir, tiny_text_file):
    teacher, tok = load_causal_lm(str(tiny_teacher_dir), frozen=True)
    student = make_tiny_lm(tiny_tokenizer, layers=2, seed=3)
    student.config.tie_word_embeddings = False  # a head of its own, as ZeRO-3 partitions it
    student.lm_head.weight = torch.nn.Parameter(student.lm_head.weight.detach().clone())
    train, _ = build_lm_datasets(tok, str(tiny_text_file), block_size=16, held_out_fraction=0.2)
    batch = CausalCollator(tok.pad_token_id)([IndexedDataset(train)[i] for i in range(4)])
    return teacher, student, batch


def _loss_and_grads(student, teacher, batch, tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path / "o"), use_cpu=True, report_to="none")
    trainer = KDTrainer(
        model=student,
        args=args,
        teacher=ModelTeacher(teacher),
        schedules=KDSchedules.build(2.0, 0.7, 0.3),
        loss_chunk_size=8,
    )
    loss = trainer.training_step(student, dict(batch))
    return float(loss), {n: p.grad.clone() for n, p in student.named_parameters()}


def test_chunked_loss_gathers_a_zero3_head_and_matches_the_unsharded_loss(
    pair, tmp_path, monkeypatch
):
    teacher, student, batch = pair
    plain = copy.deepcopy(student)
    ref_loss, ref_grads = _loss_and_grads(plain, teacher, batch, tmp_path)

    fake = _FakeZero3()
    monkeypatch.setattr(sharding, "_zero3_gather", fake.gathered)
    head = student.lm_head
    fake.partition(head.weight, ds_id=0)
    fake.hook_module(head)
    vocab = ref_grads["lm_head.weight"].shape[0]
    assert head.weight.numel() == 0 and sharding.full_shape(head.weight)[0] == vocab
    loss, grads = _loss_and_grads(student, teacher, batch, tmp_path)
    assert fake.gathers == 1  # held for the step; the loss read it inside, not re-gathered
    assert head.weight.numel() == 0  # and left it partitioned
    assert loss == pytest.approx(ref_loss, rel=1e-6)
    for name, g in ref_grads.items():
        assert torch.allclose(grads[name], g, atol=1e-6, rtol=1e-5), name
    assert float(ref_grads["lm_head.weight"].abs().sum()) > 0  # the head's gradient is real

    # the controls: a step that did not gather the head would fail here, in the loss's read
    # or in the gradient's arrival
    import kdistill.training.trainer as trainer_module

    monkeypatch.setattr(trainer_module, "gathered_for_step", _no_gather)
    student.zero_grad()
    with pytest.raises(RuntimeError):
        _loss_and_grads(student, teacher, batch, tmp_path)


@contextmanager
def _no_gather(*params):
    yield params


def test_full_params_hands_plain_parameters_through():
    w = torch.nn.Parameter(torch.randn(3, 2))
    with sharding.full_params(w, None) as (a, b):
        assert a is w and b is None
    assert sharding.full_shape(w) == torch.Size([3, 2])


REPO = Path(__file__).resolve().parents[2]
