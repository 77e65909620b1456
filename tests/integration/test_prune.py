"""Importance pruning on tiny Llamas with planted importance (kdistill.models.prune)."""

import json
from pathlib import Path

import pytest
import torch

from kdistill.errors import InputError
from kdistill.models.prune import measure_importance
from kdistill.models.student import build_student_from_teacher
from tests.conftest import make_tiny_lm, tiny_overrides

pytestmark = pytest.mark.integration
DEMO = str(Path(__file__).resolve().parents[2] / "src/kdistill/configs/demo.yaml")
HEAD_DIM = 8  # the tiny Llama: hidden 32, 4 heads over 2 KV groups, MLP 64, 4 layers


def _calib(tok, n=3, length=12, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, len(tok), (1, length), generator=g) for _ in range(n)]


def _logits(model, ids):
    with torch.no_grad():
        return model.eval()(input_ids=ids).logits


def _teacher(tok):
    teacher = make_tiny_lm(tok).eval()
    with torch.no_grad():  # larger weights, so the planted zeros stand out from real scores
        for p in teacher.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.2)
    return teacher


def test_nothing_pruned_is_the_teacher_exactly(tiny_tokenizer):
    teacher = _teacher(tiny_tokenizer)
    student = build_student_from_teacher(
        teacher,
        layers=4,
        hidden_size=32,
        intermediate_size=64,
        num_key_value_heads=2,
        calibration=_calib(tiny_tokenizer),
    )
    ids = _calib(tiny_tokenizer, n=1, seed=7)[0]
    assert torch.equal(_logits(student, ids), _logits(teacher, ids))
    assert student.lm_head.weight is student.model.embed_tokens.weight


def test_planted_dead_units_rank_lowest_and_pruning_them_changes_nothing(tiny_tokenizer):
    teacher = _teacher(tiny_tokenizer)
    dead_neurons, dead_channel = [3, 17, 40], 5
    with torch.no_grad():
        for layer in teacher.model.layers:
            layer.mlp.down_proj.weight[:, dead_neurons] = 0  # outgoing weights of 3 neurons
            layer.self_attn.o_proj.weight[:, 2 * HEAD_DIM :] = 0  # heads 2, 3 = KV group 1
            layer.self_attn.o_proj.weight[dead_channel] = 0  # nothing writes channel 5 ...
            layer.mlp.down_proj.weight[dead_channel] = 0
        teacher.model.embed_tokens.weight[:, dead_channel] = 0  # ... nor the embedding
        teacher.model.layers[2].self_attn.o_proj.weight.zero_()  # layer 2 is the identity
        teacher.model.layers[2].mlp.down_proj.weight.zero_()
    calib = _calib(tiny_tokenizer)
    imp = measure_importance(teacher, calib, skip_kl=True)
    for i in (0, 1, 3):  # (layer 2 is dead throughout)
        ranked = sorted(range(64), key=lambda j: imp.neurons[i][j])
        assert sorted(ranked[:3]) == dead_neurons
        assert all(imp.neurons[i][j] == 0 for j in dead_neurons)
        assert imp.kv_groups[i][1] == 0 < imp.kv_groups[i][0]
    assert min(range(32), key=lambda c: imp.channels[c]) == dead_channel
    assert imp.channels[dead_channel] == 0
    assert min(range(4), key=lambda i: imp.layers[i]) == 2
    assert imp.layers[2] == pytest.approx(0, abs=1e-6)
    assert min(range(4), key=lambda i: imp.skip_kl[i]) == 2
    assert imp.skip_kl[2] == pytest.approx(0, abs=1e-6)

    student = build_student_from_teacher(
        teacher,
        layers=3,
        hidden_size=31,
        intermediate_size=61,
        num_key_value_heads=1,
        calibration=calib,
    )
    plan = student.kdistill_pruning["plan"]
    assert plan["layers"] == [0, 1, 3]
    assert plan["channels"] == [c for c in range(32) if c != dead_channel]
    assert all(n == [j for j in range(64) if j not in dead_neurons] for n in plan["neurons"])
    assert plan["kv_groups"] == [[0], [0], [0]]
    cfg = student.config
    assert (cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers) == (31, 61, 3)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (2, 1, HEAD_DIM)
    assert student.lm_head.weight is student.model.embed_tokens.weight  # tied stays tied
    ids = _calib(tiny_tokenizer, n=1, seed=7)[0]
    torch.testing.assert_close(_logits(student, ids), _logits(teacher, ids), rtol=1e-4, atol=1e-4)


def test_pruning_live_units_does_change_outputs(tiny_tokenizer):
    """The check above can fail: dropping a unit that carries signal moves the logits."""
    teacher = _teacher(tiny_tokenizer)
    student = build_student_from_teacher(
        teacher, keep_layers=[0, 1, 2, 3], intermediate_size=60, calibration=_calib(tiny_tokenizer)
    )
    ids = _calib(tiny_tokenizer, n=1, seed=7)[0]
    assert (_logits(student, ids) - _logits(teacher, ids)).abs().max() > 1e-3


def test_pruning_refusals(tiny_tokenizer):
    teacher = _teacher(tiny_tokenizer)
    with pytest.raises(InputError, match="calibration"):
        build_student_from_teacher(teacher, layers=2)
    with pytest.raises(InputError, match=r"hidden_size must be 1\.\.32"):
        calib = _calib(tiny_tokenizer)
        build_student_from_teacher(teacher, every=1, hidden_size=40, calibration=calib)
    with pytest.raises(InputError, match="exactly one"):
        build_student_from_teacher(teacher, layers=2, every=2)


def test_distill_with_a_pruned_student_writes_scores_and_loads(
    tiny_teacher_dir, tiny_text_file, tmp_path
):
    from transformers import AutoModelForCausalLM

    from kdistill.cli.main import main

    out = tmp_path / "run"
    over = tiny_overrides(
        tiny_teacher_dir,
        tiny_text_file,
        out,
        **{
            "student.from_teacher": "{layers: 3, intermediate_size: 48, calibration_blocks: 4}",
            "training.max_steps": 1,
        },
    )
    assert main(["distill", DEMO, *over]) == 0
    pruning = json.loads((out / "model" / "pruning.json").read_text())
    assert len(pruning["plan"]["layers"]) == 3
    assert len(pruning["importance"]["layers"]) == 4
    assert pruning["importance"]["calibration_tokens"] == 4 * 16
    loaded = AutoModelForCausalLM.from_pretrained(out / "model")
    assert loaded.config.intermediate_size == 48
    assert loaded.config.kdistill_teacher_layers == pruning["plan"]["layers"]


def test_random_init_keeps_the_shape_and_draws_every_weight_afresh(tiny_tokenizer):
    """``init: random`` is the from-scratch baseline: the pruned student's shape, no teacher
    weight left in it, the same draw for the same seed and another for another seed."""
    teacher = _teacher(tiny_tokenizer)
    cut = dict(layers=2, intermediate_size=40, calibration=_calib(tiny_tokenizer))
    sliced = build_student_from_teacher(teacher, **cut)
    fresh = build_student_from_teacher(teacher, init="random", seed=3, **cut)
    again = build_student_from_teacher(teacher, init="random", seed=3, **cut)
    other = build_student_from_teacher(teacher, init="random", seed=4, **cut)
    a, b = sliced.state_dict(), fresh.state_dict()
    assert a.keys() == b.keys()
    assert fresh.config.kdistill_teacher_layers == sliced.config.kdistill_teacher_layers
    for k in a:
        assert a[k].shape == b[k].shape, k
        if "norm" not in k:  # norms start at ones either way
            assert not torch.equal(a[k], b[k]), k
        assert torch.equal(b[k], again.state_dict()[k]), k
    assert not torch.equal(
        b["model.embed_tokens.weight"], other.state_dict()["model.embed_tokens.weight"]
    )
    assert fresh.lm_head.weight is fresh.model.embed_tokens.weight  # still tied
    assert fresh.config.kdistill_init == "random"
    assert all(p.requires_grad for p in fresh.parameters())


def test_the_same_teacher_and_text_are_measured_once(tiny_tokenizer, monkeypatch):
    from kdistill.models import prune

    calls = []
    real = prune._measure
    monkeypatch.setattr(prune, "_LAST", {})  # not what an earlier test measured
    monkeypatch.setattr(prune, "_measure", lambda *a: calls.append(1) or real(*a))
    teacher, calib = _teacher(tiny_tokenizer), _calib(tiny_tokenizer)
    first = measure_importance(teacher, calib)
    again = measure_importance(teacher, calib)
    assert len(calls) == 1 and again == first
    again.layers[0] = -1.0  # a caller's edit does not reach the kept scores
    assert measure_importance(teacher, calib) == first and len(calls) == 1
    with torch.no_grad():
        teacher.model.layers[1].mlp.down_proj.weight.mul_(3)
    changed = measure_importance(teacher, calib)
    assert len(calls) == 2 and changed.neurons[1] != first.neurons[1]
    measure_importance(teacher, _calib(tiny_tokenizer, seed=2))
    measure_importance(teacher, _calib(tiny_tokenizer, seed=2), skip_kl=True)
    assert len(calls) == 4
    with torch.device("meta"):  # weights with no bytes to hash: measured, nothing kept
        ghost = torch.nn.Linear(2, 2)
    ghost.config = teacher.config
    assert prune._digest(ghost, calib, False) is None
