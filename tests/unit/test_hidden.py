"""The hidden-state term against float64 references: cosine, projected MSE, masks, maps."""

from __future__ import annotations

import math

import pytest
import torch

from kdistill.losses.hidden import HiddenStateTerm, default_layer_map, pair_loss_sum


def _naive(student, teacher, valid, loss):
    """Position by position, in float64, with Python arithmetic."""
    total = 0.0
    flat_s = student.double().reshape(-1, student.shape[-1]).tolist()
    flat_t = teacher.double().reshape(-1, teacher.shape[-1]).tolist()
    for s, t, ok in zip(flat_s, flat_t, valid.reshape(-1).tolist(), strict=True):
        if not ok:
            continue
        if loss == "cosine":
            dot = sum(a * b for a, b in zip(s, t, strict=True))
            ns = math.sqrt(sum(a * a for a in s))
            nt = math.sqrt(sum(b * b for b in t))
            total += 1.0 - dot / (ns * nt)
        else:
            total += sum((a - b) ** 2 for a, b in zip(s, t, strict=True)) / len(s)
    return total


@pytest.mark.parametrize("loss", ["cosine", "mse"])
def test_pair_loss_matches_the_naive_reference(loss):
    g = torch.Generator().manual_seed(0)
    s = torch.randn(2, 5, 7, generator=g, dtype=torch.float64)
    t = torch.randn(2, 5, 7, generator=g, dtype=torch.float64)
    valid = torch.rand(2, 5, generator=g) > 0.3
    got = float(pair_loss_sum(s, t, valid, loss))
    assert got == pytest.approx(_naive(s, t, valid, loss), rel=1e-12)


@pytest.mark.parametrize("loss", ["cosine", "mse"])
def test_equal_states_give_zero_and_all_masked_gives_zero_with_a_gradient(loss):
    s = torch.randn(3, 4, 6, dtype=torch.float64, requires_grad=True)
    assert float(
        pair_loss_sum(s.detach(), s.detach(), torch.ones(3, 4, dtype=torch.bool), loss)
    ) == (pytest.approx(0.0, abs=1e-12))
    out = pair_loss_sum(s, torch.randn(3, 4, 6), torch.zeros(3, 4, dtype=torch.bool), loss)
    out.backward()
    assert float(out.detach()) == 0.0
    assert torch.isfinite(s.grad).all() and float(s.grad.abs().sum()) == 0.0


def test_bf16_inputs_are_computed_in_fp32():
    s = torch.randn(2, 3, 8).bfloat16()
    out = pair_loss_sum(s, torch.randn(2, 3, 8), torch.ones(2, 3, dtype=torch.bool))
    assert out.dtype == torch.float32


def test_default_layer_map_pairs_the_end_of_each_replaced_block():
    assert default_layer_map([0, 3, 6, 9, 11], 12) == {0: 2, 1: 5, 2: 8, 3: 10}
    # the demo's student: every third of SmolLM2's 30 layers and the last
    kept = [*range(0, 30, 3), 29]
    m = default_layer_map(kept, 30)
    assert m == {j: kept[j + 1] - 1 for j in range(10)}
    assert m[9] == 28 and 10 not in m
    with pytest.raises(ValueError):
        default_layer_map([3, 0], 12)


def test_term_with_projection_matches_float64_reference_and_gradchecks():
    torch.manual_seed(0)
    term = HiddenStateTerm({0: 1, 1: 3}, student_width=4, teacher_width=6, loss="mse").double()
    student_states = [
        torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True) for _ in range(3)
    ]
    teacher_states = {k: torch.randn(2, 3, 6, dtype=torch.float64) for k in (2, 4)}
    valid = torch.tensor([[True, False, True], [True, True, False]])
    assert term.teacher_states == (2, 4)
    got = term(student_states, teacher_states, valid)
    ref = 0.0
    for s, t in {0: 1, 1: 3}.items():
        w = term.proj[str(s)].weight
        ref += _naive(student_states[s + 1] @ w.T, teacher_states[t + 1], valid, "mse")
    assert float(got.detach()) == pytest.approx(ref / 2, rel=1e-12)

    def g(h1, h2):
        return term([student_states[0], h1, h2], teacher_states, valid)

    assert torch.autograd.gradcheck(g, (student_states[1], student_states[2]))


def test_equal_widths_have_no_parameters_and_cosine_is_the_default():
    term = HiddenStateTerm({0: 0}, 8, 8)
    assert term.loss == "cosine" and not list(term.parameters())
