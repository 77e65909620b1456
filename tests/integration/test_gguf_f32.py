"""The test helper that de-quantises a GGUF (tests/real/gguf_f32.py) keeps every metadata
field, marks the file all-F32, and stores exactly the de-quantised values."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader, GGUFWriter
from gguf.quants import dequantize, quantize

from tests.real.gguf_f32 import ALL_F32, dequantised_copy

pytestmark = pytest.mark.integration


def _tiny_q8_gguf(path, weights: np.ndarray) -> None:
    w = GGUFWriter(path, "llama")
    w.add_name("tiny")
    w.add_file_type(int(GGMLQuantizationType.Q8_0))
    w.add_context_length(64)
    w.add_token_list(["<s>", "a", "b"])
    q = quantize(weights, GGMLQuantizationType.Q8_0)
    w.add_tensor("blk.0.w", q, raw_dtype=GGMLQuantizationType.Q8_0)
    w.add_tensor("norm", np.linspace(0.5, 1.5, 64, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_dequantised_copy_keeps_metadata_and_values(tmp_path):
    rng = np.random.default_rng(0)
    weights = rng.standard_normal((4, 64)).astype(np.float32)
    src, dst = tmp_path / "q8.gguf", tmp_path / "f32.gguf"
    _tiny_q8_gguf(src, weights)
    dequantised_copy(src, dst)
    a, b = GGUFReader(src), GGUFReader(dst)

    def fields(r):
        return {k: f.contents() for k, f in r.fields.items() if not k.startswith("GGUF.")}

    fa, fb = fields(a), fields(b)
    assert fb.pop("general.file_type") == ALL_F32
    assert fa.pop("general.file_type") == int(GGMLQuantizationType.Q8_0)
    assert fa == fb and fb["tokenizer.ggml.tokens"] == ["<s>", "a", "b"]
    ta = {t.name: t for t in a.tensors}
    tb = {t.name: t for t in b.tensors}
    assert set(ta) == set(tb) == {"blk.0.w", "norm"}
    for name, t in tb.items():
        assert t.tensor_type == GGMLQuantizationType.F32
        want = dequantize(ta[name].data, ta[name].tensor_type)
        np.testing.assert_array_equal(np.asarray(t.data).reshape(want.shape), want)
    # Q8_0 really was lossy, so the copy holds the de-quantised values, not the originals
    got = np.asarray(tb["blk.0.w"].data).reshape(weights.shape)
    assert 0 < np.abs(got - weights).max() < 0.05
