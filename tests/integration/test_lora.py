"""LoRA students (peft): the base frozen, adapters trained by the KD loss (the chunked path),
the run resumable, the adapter and the merged student saved; the merged student loads and
evaluates like any other."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from kdistill.cli.main import main
from tests.conftest import distill_then_resume, read_log, tiny_overrides

pytest.importorskip("peft")
pytestmark = pytest.mark.integration
DEMO = str(Path(__file__).resolve().parents[2] / "src/kdistill/configs/demo.yaml")
LORA = "{r: 4, alpha: 8, target_modules: [q_proj, v_proj, up_proj]}"


def test_lora_student_trains_adapters_only_and_saves_adapter_and_merged(
    tiny_teacher_dir, tiny_text_file, tmp_path
):
    ref, run = distill_then_resume(
        tiny_teacher_dir,
        tiny_text_file,
        tmp_path,
        {"student.lora": LORA, "training.max_steps": 4, "training.save_steps": 2},
        kept=2,
    )
    log = read_log(ref)
    assert len(log) == 4 and all(r["soft_loss"] > 0 for r in log)
    teacher = load_file(str(tiny_teacher_dir / "model.safetensors"))
    merged = load_file(str(ref / "model" / "model.safetensors"))
    assert not any("lora" in k for k in merged)  # folded in, peft's names gone
    # the student keeps teacher layers 0 and 3 (as student layers 0 and 1): frozen weights are
    # the teacher's, adapted ones moved
    same = ["model.embed_tokens.weight", "model.layers.1.self_attn.k_proj.weight"]
    assert torch.equal(merged[same[0]], teacher[same[0]])
    assert torch.equal(merged[same[1]], teacher["model.layers.3.self_attn.k_proj.weight"])
    moved = merged["model.layers.1.self_attn.q_proj.weight"]
    assert not torch.allclose(moved, teacher["model.layers.3.self_attn.q_proj.weight"])
    adapter = load_file(str(ref / "adapter" / "adapter_model.safetensors"))
    assert adapter and all("lora_A" in k or "lora_B" in k for k in adapter)
    assert sum("q_proj" in k for k in adapter) == 4  # A and B, 2 layers
    cfg = json.loads((ref / "adapter" / "adapter_config.json").read_text())
    assert cfg["r"] == 4 and sorted(cfg["target_modules"]) == ["q_proj", "up_proj", "v_proj"]
    summary = json.loads((ref / "train_summary.json").read_text())
    lora = summary["lora"]
    assert 0 < lora["trainable_params"] < lora["all_params"] / 4
    # killed after checkpoint-2 and resumed: the same adapters, bit for bit
    resumed = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    assert sorted(resumed) == sorted(adapter)
    assert all(torch.equal(resumed[k], adapter[k]) for k in adapter)
    # the merged student is an ordinary model folder: the loader every command uses reads it
    from kdistill.models.loading import load_causal_lm

    model, tok = load_causal_lm(str(ref / "model"), frozen=True)
    ids = torch.tensor([tok("in the beginning")["input_ids"]])
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=ids).logits).all()
    assert not any("lora" in n for n, _ in model.named_parameters())


def test_lora_refusals_are_one_line_before_anything_is_made(
    tiny_teacher_dir, tiny_text_file, tmp_path, capsys
):
    out = tmp_path / "x"
    bad = {"student.lora": "{r: 4, target_modules: [no_such_proj]}"}
    argv = ["distill", DEMO, *tiny_overrides(tiny_teacher_dir, tiny_text_file, out, **bad)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "student.lora" in err and "no_such_proj" in err
    zero = {"student.lora": "{r: 0}"}
    argv = ["distill", DEMO, *tiny_overrides(tiny_teacher_dir, tiny_text_file, out, **zero)]
    assert main(argv) == 2
    assert "student.lora.r" in capsys.readouterr().err
    assert not (out / "model").exists()
