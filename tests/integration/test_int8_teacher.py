"""A teacher held as weight-only int8 (``teacher.dtype: int8``, torchao): the body's linear
layers int8, the head fp32; its logits close to the fp32 teacher's; a student cut from it
gets the fp32 weights; distillation runs on it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from kdistill.cli.main import main
from kdistill.models.loading import load_causal_lm
from tests.conftest import tiny_overrides

pytest.importorskip("torchao")
pytestmark = pytest.mark.integration
DEMO = str(Path(__file__).resolve().parents[2] / "src/kdistill/configs/demo.yaml")


def test_int8_teacher_body_is_int8_head_fp32_and_logits_close(tiny_teacher_dir):
    fp32, tok = load_causal_lm(str(tiny_teacher_dir), frozen=True)
    int8, _ = load_causal_lm(str(tiny_teacher_dir), "int8", frozen=True)
    layer = int8.model.layers[0]
    assert hasattr(layer.self_attn.q_proj.weight, "qdata")  # int8 values + row scales
    assert layer.self_attn.q_proj.weight.qdata.dtype == torch.int8
    assert not hasattr(int8.get_output_embeddings().weight, "qdata")  # the head stays fp32
    ids = torch.randint(0, len(tok), (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        p = fp32(input_ids=ids).logits.log_softmax(-1)
        q = int8(input_ids=ids).logits.log_softmax(-1)
    kl = float((p.exp() * (p - q)).sum(-1).mean())
    assert 0 < kl < 1e-3, kl  # not identical (really quantized), and close


def test_distillation_from_an_int8_teacher_cuts_the_student_from_fp32_weights(
    tiny_teacher_dir, tiny_text_file, tmp_path
):
    out = tmp_path / "run"
    over = {"teacher.dtype": "int8", "training.max_steps": 2, "training.learning_rate": 1e-9}
    argv = ["distill", DEMO, *tiny_overrides(tiny_teacher_dir, tiny_text_file, out, **over)]
    assert main(argv) == 0
    log = [json.loads(x) for x in (out / "kd_log.jsonl").read_text().splitlines()]
    assert len(log) == 2 and all(r["soft_loss"] > 0 for r in log)
    student = load_file(str(out / "model" / "model.safetensors"))
    teacher = load_file(str(tiny_teacher_dir / "model.safetensors"))
    assert not any(k.endswith((".qdata", ".scale")) for k in student)
    # student layer 1 is teacher layer 3 (keep_layers [0, 3]); lr 1e-9 leaves it as cut
    got = student["model.layers.1.mlp.down_proj.weight"]
    assert torch.allclose(got, teacher["model.layers.3.mlp.down_proj.weight"], atol=1e-6)
