"""`kdistill export`: the Hugging Face folder and GGUF files round-trip (tiny Llama)."""

import json

import pytest
import torch

from kdistill.cli.main import main

pytestmark = pytest.mark.integration


def _logits(model, ids):
    with torch.no_grad():
        return model.eval()(input_ids=ids).logits


@pytest.fixture(scope="module")
def exported(tiny_teacher_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "out"
    argv = ["export", str(tiny_teacher_dir), "--out", str(out), "--gguf", "f32,f16,q8_0"]
    assert main([*argv, "--gguf-pre", "gpt2", "--name", "tiny-student"]) == 0
    return out


def test_hf_folder_loads_and_matches(exported, tiny_teacher_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ref = AutoModelForCausalLM.from_pretrained(tiny_teacher_dir)
    got = AutoModelForCausalLM.from_pretrained(exported / "hf")
    tok = AutoTokenizer.from_pretrained(exported / "hf")
    assert tok.chat_template and "<|im_start|>" in tok.chat_template
    ids = torch.tensor([[1, 5, 9, 40, 77, 3]])
    assert torch.equal(_logits(got, ids), _logits(ref, ids))
    card = (exported / "hf" / "README.md").read_text()
    assert card.startswith("---\nlicense: unknown") and "# tiny-student" in card
    assert json.loads((exported / "export.json").read_text())["files"] == [
        "hf",
        "student-f32.gguf",
        "student-f16.gguf",
        "student-q8_0.gguf",
    ]


def test_gguf_metadata_tokenizer_and_tensors_read_back(exported, tiny_teacher_dir):
    from gguf import GGUFReader
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_teacher_dir)
    r = GGUFReader(exported / "student-f32.gguf")
    f = {k: v.contents() for k, v in r.fields.items() if not k.startswith("GGUF.")}
    assert f["general.architecture"] == "llama"
    assert (f["llama.block_count"], f["llama.embedding_length"]) == (4, 32)
    assert (f["llama.attention.head_count"], f["llama.attention.head_count_kv"]) == (4, 2)
    assert f["tokenizer.ggml.tokens"] == tok.convert_ids_to_tokens(list(range(len(tok))))
    assert f["tokenizer.chat_template"] == tok.chat_template
    assert f["tokenizer.ggml.eos_token_id"] == tok.eos_token_id
    assert "# tiny-student" in f["general.description"]
    names = {t.name for t in r.tensors}
    assert "output.weight" not in names  # tied: llama.cpp reuses token_embd
    assert len(names) == 2 + 4 * 9
    sizes = {k: (exported / f"student-{k}.gguf").stat().st_size for k in ("f32", "f16", "q8_0")}
    assert sizes["q8_0"] < sizes["f16"] < sizes["f32"]


@pytest.mark.parametrize(("kind", "tol"), [("f32", 1e-5), ("f16", 2e-2)])
def test_gguf_loads_in_transformers_with_the_same_logits(exported, tiny_teacher_dir, kind, tol):
    """Transformers' GGUF reader undoes llama.cpp's q/k row order: equal logits prove the
    export wrote it correctly."""
    from transformers import AutoModelForCausalLM

    ref = AutoModelForCausalLM.from_pretrained(tiny_teacher_dir)
    got = AutoModelForCausalLM.from_pretrained(exported, gguf_file=f"student-{kind}.gguf")
    ids = torch.tensor([[1, 5, 9, 40, 77, 3, 12, 8]])
    torch.testing.assert_close(_logits(got, ids), _logits(ref, ids), rtol=0, atol=tol)


def test_export_refusals(tiny_teacher_dir, tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["export", str(tiny_teacher_dir), "--out", str(out), "--gguf", "q3"]) == 2
    assert "--gguf 'q3'" in capsys.readouterr().err
    assert main(["export", str(tiny_teacher_dir), "--out", str(out), "--gguf", "f32"]) == 2
    assert "--gguf-pre" in capsys.readouterr().err
    assert not out.exists()  # refused before anything was written


def test_int8_export_loads_back_smaller_and_close(tiny_teacher_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from kdistill.eval.resources import dir_size, weight_bytes
    from kdistill.models.loading import load_causal_lm

    pytest.importorskip("torchao")
    out = tmp_path / "o"
    assert main(["export", str(tiny_teacher_dir), "--out", str(out), "--int8", "--no-hf"]) == 0
    ref = AutoModelForCausalLM.from_pretrained(tiny_teacher_dir)
    q, _ = load_causal_lm(str(out / "int8"), frozen=True)
    assert q.get_input_embeddings().weight is q.get_output_embeddings().weight  # still tied
    assert type(q.lm_head.weight).__name__ == "Int8Tensor"
    assert weight_bytes(q) <= 0.35 * weight_bytes(ref)
    assert dir_size(out / "int8") <= 0.35 * dir_size(tiny_teacher_dir)
    ids = torch.tensor([[1, 5, 9, 40, 77, 3, 12, 8]])
    a, b = _logits(q, ids), _logits(ref, ids)
    assert 0 < (a - b).abs().max() < 0.05 * b.abs().max()  # quantized: close, not equal
    again, _ = load_causal_lm(str(out / "int8"), frozen=True)
    assert torch.equal(_logits(again, ids), a)  # the saved folder reloads to the same model
    assert "int8" in (out / "int8" / "README.md").read_text()
