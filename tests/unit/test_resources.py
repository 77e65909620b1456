"""Model cost measurements: percentiles, weight bytes, and the forward's peak allocations."""

from __future__ import annotations

import pytest
import torch

from kdistill.eval import resources


def test_percentile_nearest_rank_hand_values():
    v = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0]
    assert resources.percentile(v, 0.5) == 6.0
    assert resources.percentile(v, 0.95) == 11.0  # index round(0.95 * 10) = 10
    assert resources.percentile(v, 1.0) == 11.0
    assert resources.percentile([3.0], 0.95) == 3.0
    with pytest.raises(ValueError):
        resources.percentile([], 0.5)


def test_weight_bytes_counts_tied_weights_once():
    emb = torch.nn.Embedding(100, 16)
    head = torch.nn.Linear(16, 100, bias=False)
    head.weight = emb.weight  # tied, as in SmolLM2
    model = torch.nn.ModuleDict({"emb": emb, "head": head})
    model.register_buffer("scale", torch.ones(8, dtype=torch.float64))
    assert resources.weight_bytes(model) == 100 * 16 * 4 + 8 * 8


def test_peak_forward_memory_sees_the_activations():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(64, 2048), torch.nn.GELU(), torch.nn.Linear(2048, 8)
    )

    def measure(rows: int) -> dict:
        x = torch.randn(rows, 64)
        return resources.peak_forward_memory(model, lambda: model(x))

    small, big = measure(16), measure(512)
    weights = (64 * 2048 + 2048 + 2048 * 8 + 8) * 4
    assert small["weight_bytes"] == big["weight_bytes"] == weights
    hidden = 512 * 2048 * 4  # the (512, 2048) hidden activation must be live at some point
    assert big["peak_forward_alloc_bytes"] >= hidden
    assert big["peak_forward_alloc_bytes"] < 4 * hidden  # Linear out + GELU out at most, +slack
    assert small["peak_forward_alloc_bytes"] < big["peak_forward_alloc_bytes"] / 8
    assert big["peak_memory_bytes"] == weights + big["peak_forward_alloc_bytes"]
    assert "profiler" in big["peak_memory_method"]


def test_dir_size_counts_weight_files_only(tmp_path):
    assert resources.dir_size(None) is None
    assert resources.dir_size(tmp_path / "missing") is None
    (tmp_path / "a.safetensors").write_bytes(b"x" * 100)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.safetensors").write_bytes(b"x" * 23)
    (tmp_path / "config.json").write_text("{}")
    assert resources.dir_size(tmp_path) == 123
