"""One placement path (``models/placement``) for every runner: a ``device`` setting checked
before any model loads, and each runner's inputs moved to the model's device through
``on_model``. No GPU here: the moves are recorded by a spy on the one function that moves."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import BatchEncoding

from kdistill.cli.main import main
from kdistill.errors import InputError
from kdistill.models import placement
from tests.conftest import tiny_overrides

pytestmark = pytest.mark.integration
DEMO = str(Path(__file__).resolve().parents[2] / "src/kdistill/configs/demo.yaml")
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")


@no_cuda
def test_device_settings_resolve_or_refuse_in_one_line():
    assert placement.resolve_device("auto") == torch.device("cpu")
    assert placement.resolve_device("CPU") == torch.device("cpu")
    for name, words in [
        ("cuda", r"0 CUDA device\(s\)"),
        ("cuda:3", r"0 CUDA device\(s\)"),
        ("banana", "not a device"),
        ("meta", "not supported"),
    ]:
        with pytest.raises(InputError, match=words) as got:
            placement.resolve_device(name)
        assert "\n" not in str(got.value) and name in str(got.value)


def test_on_device_moves_nested_batches_and_keeps_the_rest():
    x, y = torch.arange(3), torch.ones(2, 2)
    enc = BatchEncoding({"input_ids": x[None], "attention_mask": x[None] > 0})
    batch = {"a": x, "b": [y, (y, "s")], "c": 7, "enc": enc}
    got = placement.on_device(batch, "cpu")
    assert got["a"] is x and got["b"][0] is y and got["b"][1][1] == "s" and got["c"] == 7
    assert isinstance(got["b"][1], tuple) and torch.equal(got["enc"]["input_ids"], x[None])
    model = torch.nn.Linear(2, 2)
    assert placement.device_of(model) == torch.device("cpu")
    assert placement.device_of(torch.nn.ReLU()) == torch.device("cpu")  # no parameters
    assert placement.place(model, "cpu") is model


@pytest.fixture
def moves(monkeypatch) -> list[str]:
    """Records the device each batch is moved to (the runners all go through on_device)."""
    seen: list[str] = []
    real = placement.on_device

    def spy(batch, device):
        seen.append(str(device))
        return real(batch, device)

    monkeypatch.setattr(placement, "on_device", spy)
    return seen


def test_every_runner_moves_its_inputs_through_on_model(
    moves, tiny_teacher_dir, tiny_text_file, tmp_path
):
    run = tmp_path / "run"
    assert (
        main(
            [
                "distill",
                DEMO,
                *tiny_overrides(
                    tiny_teacher_dir,
                    tiny_text_file,
                    run,
                    **{"training.max_steps": 1, "device": "cpu"},
                ),
            ]
        )
        == 0
    )
    counts = {"train": len(moves)}  # the teacher's forward in training
    ev = ["eval", "--teacher", str(tiny_teacher_dir), "--model", f"s={run / 'model'}"]
    ev += ["--data", str(tiny_text_file), "--block-size", "16", "--held-out-fraction", "0.2"]
    ev += ["--max-eval-tokens", "32", "--speed-budget", "1", "--device", "cpu"]
    assert main([*ev, "--out", str(tmp_path / "e.json")]) == 0
    counts["eval"] = len(moves) - sum(counts.values())
    store = tmp_path / "store"
    cache = [
        "cache",
        DEMO,
        *tiny_overrides(
            tiny_teacher_dir,
            tiny_text_file,
            tmp_path / "c",
            **{"cache.dir": str(store), "data.max_train_tokens": 64},
        ),
    ]
    assert main(cache) == 0
    counts["cache"] = len(moves) - sum(counts.values())
    ins = ["inspect", "--model", str(tiny_teacher_dir), "--prompt", "the king", "--sequences", "2"]
    assert main([*ins, "--out", str(tmp_path / "i")]) == 0
    counts["inspect"] = len(moves) - sum(counts.values())
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"id": "p0", "prompt": "the king said"}) + "\n")
    gen = [f"generate.prompts={prompts}", f"generate.output_dir={tmp_path / 'g'}"]
    gen += ["generate.max_tokens=4", f"teacher.model={tiny_teacher_dir}"]
    assert main(["generate", DEMO, *gen]) == 0
    counts["generate"] = len(moves) - sum(counts.values())
    assert all(n > 0 for n in counts.values()), counts
    assert set(moves) == {"cpu"}


def test_a_missing_device_is_refused_before_any_model_loads(
    tiny_teacher_dir, tiny_text_file, tmp_path, capsys
):
    if torch.cuda.is_available():
        pytest.skip("checks a machine without CUDA")
    out = tmp_path / "r"
    argv = ["distill", DEMO, *tiny_overrides(tiny_teacher_dir, tiny_text_file, out)]
    assert main([*argv, "device=cuda:1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "device='cuda:1'" in err and err.count("\n") == 0 and not out.exists()
    ev = ["eval", "--teacher", str(tiny_teacher_dir), "--model", f"s={tiny_teacher_dir}"]
    ev += ["--device", "cuda"]
    assert main([*ev, "--out", str(tmp_path / "e.json")]) == 2
    assert "device='cuda'" in capsys.readouterr().err
