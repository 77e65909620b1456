"""``teacher.dtype: bfloat16`` / ``float16`` with a student cut from the teacher: the student
is cut from the teacher's fp32 weights, and only then is the teacher cast (its forward in
16 bits, the soft-label math in fp32)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from kdistill.config.loader import load_config
from kdistill.pipeline.distill_lm import load_models
from tests.conftest import tiny_overrides

pytestmark = pytest.mark.integration
DEMO = str(Path(__file__).resolve().parents[2] / "src/kdistill/configs/demo.yaml")


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_student_cut_from_fp32_weights_then_teacher_cast(
    dtype, tiny_teacher_dir, tiny_text_file, tmp_path
):
    over = tiny_overrides(
        tiny_teacher_dir, tiny_text_file, tmp_path / "r", **{"teacher.dtype": dtype}
    )
    cfg = load_config(DEMO, over)
    teacher, student, *_ = load_models(cfg, need_teacher=True)
    assert {p.dtype for p in teacher.parameters()} == {getattr(torch, dtype)}
    assert {p.dtype for p in student.parameters()} == {torch.float32}
    fp32 = load_file(str(tiny_teacher_dir / "model.safetensors"))
    want = fp32["model.layers.3.mlp.down_proj.weight"]  # student layer 1 (keep_layers [0, 3])
    got = student.model.layers[1].mlp.down_proj.weight
    assert torch.equal(got, want)  # exact: not rounded through 16 bits
    assert not torch.equal(want.to(getattr(torch, dtype)).float(), want)  # 16 bits would show
    # a run that does not need the teacher (the baseline) gets the same student, no teacher
    none, same, *_ = load_models(cfg, need_teacher=False)
    assert none is None and torch.equal(same.model.layers[1].mlp.down_proj.weight, want)


def test_teacher_dtype_without_a_cut_loads_in_that_dtype(
    tiny_teacher_dir, tiny_text_file, tmp_path
):
    over = tiny_overrides(
        tiny_teacher_dir,
        tiny_text_file,
        tmp_path / "r",
        **{
            "teacher.dtype": "bfloat16",
            "student.from_teacher": "null",
            "student.model": str(tiny_teacher_dir),
        },
    )
    teacher, student, *_ = load_models(load_config(DEMO, over), need_teacher=True)
    assert {p.dtype for p in teacher.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in student.parameters()} == {torch.float32}
