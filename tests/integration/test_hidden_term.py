"""The hidden term inside the trainer: its share of the loss equals a float64 reference on the
full-logit and the chunked paths; its projections are learned, checkpointed (a resume is
bit-exact) and kept out of the student's model folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainingArguments

from kdistill.cli.main import main
from kdistill.data.lm import CausalCollator, IndexedDataset, build_lm_datasets
from kdistill.models.loading import load_causal_lm
from kdistill.models.student import build_student_from_teacher
from kdistill.teachers.model import ModelTeacher
from kdistill.training.step import KDSchedules
from kdistill.training.terms import build_terms
from kdistill.training.trainer import KDTrainer
from tests.conftest import distill_then_resume, read_log, same_weights, tiny_overrides
from tests.unit.test_hidden import _naive

pytestmark = pytest.mark.integration
DEMO = str(Path(__file__).resolve().parents[2] / "src/kdistill/configs/demo.yaml")


@pytest.mark.parametrize("chunk", [None, 8])
@pytest.mark.parametrize("loss", ["cosine", "mse"])
def test_hidden_share_of_the_loss_matches_float64_reference(
    chunk, loss, tiny_teacher_dir, tiny_text_file, tmp_path
):
    teacher, tok = load_causal_lm(str(tiny_teacher_dir), frozen=True)
    width = None if loss == "cosine" else 16
    calib = [torch.randint(0, len(tok), (1, 8))]
    student = build_student_from_teacher(
        teacher, keep_layers=[0, 2, 3], hidden_size=width, calibration=calib
    )
    train, _ = build_lm_datasets(tok, str(tiny_text_file), block_size=16, held_out_fraction=0.2)
    batch = CausalCollator(tok.pad_token_id)([IndexedDataset(train)[i] for i in range(4)])

    def loss_of(terms):
        args = TrainingArguments(output_dir=str(tmp_path / "o"), use_cpu=True, report_to="none")
        trainer = KDTrainer(
            model=student,
            args=args,
            teacher=ModelTeacher(teacher),
            schedules=KDSchedules.build(1.0, 0.7, 0.3),
            loss_chunk_size=chunk,
            terms=terms,
        )
        with torch.no_grad():
            return trainer.compute_loss(student, dict(batch))

    settings = [{"name": "hidden", "loss": loss, "layer_map": None, "weight": 0.5}]
    terms = build_terms(settings, student=student, teacher_model=teacher)
    assert terms[0].module.layer_map == {0: 1, 1: 2}  # the ends of blocks [0, 1] and [2]
    diff = float(loss_of(terms)) - float(loss_of([]))
    with torch.no_grad():
        s_states = student(
            **{k: batch[k] for k in ("input_ids", "attention_mask")}, output_hidden_states=True
        ).hidden_states
        t_states = teacher(
            **{k: batch[k] for k in ("input_ids", "attention_mask")}, output_hidden_states=True
        ).hidden_states
    valid = batch["shift_labels"] != -100
    ref = 0.0
    for s, t in {0: 1, 1: 2}.items():
        h = s_states[s + 1].double()
        if width:
            h = h @ terms[0].module.proj[str(s)].weight.double().T
        ref += _naive(h, t_states[t + 1], valid, loss)
    expected = 0.5 * (ref / 2) / int(valid.sum())
    assert diff == pytest.approx(expected, rel=2e-5, abs=1e-7)


def test_projections_are_learned_checkpointed_and_resume_bit_exactly(
    tiny_teacher_dir, tiny_text_file, tmp_path
):
    extra = {
        "student.from_teacher": "{keep_layers: [0, 3], hidden_size: 16, num_key_value_heads: 1}",
        "distill.terms": "[{name: hidden, loss: mse, weight: 2.0}]",
        "training.max_steps": 4,
        "training.save_steps": 2,
    }
    ref, run = distill_then_resume(tiny_teacher_dir, tiny_text_file, tmp_path, extra, kept=2)
    log = read_log(ref)
    assert all(r["hidden_loss"] > 0 for r in log)
    first = load_file(str(ref / "checkpoints/checkpoint-2/loss_terms.safetensors"))
    last = load_file(str(ref / "checkpoints/checkpoint-4/loss_terms.safetensors"))
    assert first.keys() == {"hidden.proj.0.weight"}
    assert not torch.equal(first["hidden.proj.0.weight"], last["hidden.proj.0.weight"])
    saved = load_file(str(ref / "model/model.safetensors"))
    assert not any(k.startswith(("hidden", "proj")) for k in saved)
    assert not any(v.shape == first["hidden.proj.0.weight"].shape for v in saved.values())
    # the same run killed after checkpoint-2 resumes to the same weights, bit for bit
    assert same_weights(run, ref)
    c = load_file(str(run / "checkpoints/checkpoint-4/loss_terms.safetensors"))
    assert torch.equal(c["hidden.proj.0.weight"], last["hidden.proj.0.weight"])


def test_hidden_term_needs_a_teacher_model(tiny_teacher_dir, tiny_text_file, tmp_path, capsys):
    extra = {"distill.terms": "[{name: hidden}]", "teacher.kind": "none"}
    argv = [
        "distill",
        DEMO,
        *tiny_overrides(tiny_teacher_dir, tiny_text_file, tmp_path / "r", **extra),
    ]
    assert main(argv) == 2
    assert "need teacher.kind=model, not none" in capsys.readouterr().err


def test_a_default_layer_map_that_does_not_fit_the_teacher_is_one_line():
    """A chain stage's student cut from the base model (kept layers up to 3) distilled from a
    3-layer assistant: the default map cannot pair them; the error names layer_map."""
    from types import SimpleNamespace

    from kdistill.errors import InputError
    from kdistill.training.terms import LOSS_TERMS

    def model(**config):
        return SimpleNamespace(config=SimpleNamespace(hidden_size=8, **config))

    student = model(num_hidden_layers=2, kdistill_teacher_layers=[0, 3])
    with pytest.raises(InputError, match="give layer_map") as e:
        LOSS_TERMS["hidden"](
            {"loss": "cosine"}, student=student, teacher_model=model(num_hidden_layers=3)
        )
    assert "\n" not in str(e.value)
    fits = LOSS_TERMS["hidden"](
        {"loss": "cosine"}, student=student, teacher_model=model(num_hidden_layers=4)
    )
    assert fits.layer_map == {0: 2}
