"""Export a trained student for the edge: a Hugging Face folder and GGUF files (``gguf``).

GGUF: Llama-architecture students (SmolLM2 and students cut or pruned from it), tensors at F32,
F16 or Q8_0 (norms stay F32, as llama.cpp expects), and K-quants through llama.cpp's own
quantizer when the installed ``llama_cpp`` exposes it. The tokenizer goes in as llama.cpp reads
it: copied from a GGUF with the same vocabulary (the bundled teacher's), or built from a
byte-level BPE ``tokenizer.json`` given a llama.cpp pre-tokenizer name. Every export carries a
model card (README.md beside the folder's files; the GGUF's ``general.description``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from kdistill.errors import InputError

GGUF_TYPES = ("f32", "f16", "q8_0")
# llama.cpp's file types, by the name llama_cpp exports them under
K_QUANTS = {
    "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
    "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
    "q6_k": "LLAMA_FTYPE_MOSTLY_Q6_K",
}
_FILE_TYPE = {"f32": 0, "f16": 1, "q8_0": 7}
_TENSOR_NAMES = {
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
}


def check_gguf_exportable(config) -> None:
    """One line naming what blocks a GGUF export of this architecture, before any writing."""
    mt = getattr(config, "model_type", "?")
    if mt != "llama":
        raise InputError(
            f"GGUF export supports Llama-architecture students, not {mt!r}: export the Hugging "
            "Face folder (--format hf) and convert it with llama.cpp's convert_hf_to_gguf.py"
        )
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        raise InputError("GGUF export: biased attention/MLP projections are not supported")
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    kind = (
        rope.get("rope_type", rope.get("type", "default")) if isinstance(rope, dict) else "default"
    )
    if kind not in (None, "default"):
        raise InputError(f"GGUF export: rope_type {kind!r} is not supported; export --format hf")


def _rope_theta(config) -> float:
    rope = getattr(config, "rope_parameters", None)
    if isinstance(rope, dict) and "rope_theta" in rope:
        return float(rope["rope_theta"])
    return float(getattr(config, "rope_theta", 10000.0))


def _rope_rows_to_gguf(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """HF's q/k row order (rotary halves) -> llama.cpp's (interleaved pairs), per head: row
    ``h * d + i`` of the first half and ``h * d + d/2 + i`` become rows ``2i`` and ``2i + 1``."""
    rows, cols = w.shape
    d = rows // n_head
    return w.reshape(n_head, 2, d // 2, cols).transpose(1, 2).reshape(rows, cols)


def _tokenizer_fields_from_gguf(path: Path, tokenizer) -> list[tuple]:
    """``tokenizer.*`` fields of a GGUF whose token list is this tokenizer's vocabulary."""
    from gguf import GGUFReader, GGUFValueType

    reader = GGUFReader(path)
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    ours = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    if tokens != ours:
        raise InputError(
            f"{path.name} has another vocabulary ({len(tokens)} tokens vs the student's "
            f"{len(ours)}): give --tokenizer-gguf the teacher's GGUF, or --gguf-pre to build it"
        )
    out = []
    for name, field in reader.fields.items():
        if name.startswith("tokenizer."):
            sub = field.types[-1] if field.types[0] == GGUFValueType.ARRAY else None
            out.append((name, field.contents(), field.types[0], sub))
    return out


def _tokenizer_fields_from_hf(tokenizer, pre: str) -> list[tuple]:
    """``tokenizer.*`` fields built from a byte-level BPE tokenizer (llama.cpp's ``gpt2``)."""
    from gguf import GGUFValueType as T

    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    model = spec.get("model", {})
    if model.get("type") != "BPE" or "ByteLevel" not in json.dumps(spec.get("pre_tokenizer")):
        raise InputError(
            "GGUF export builds a tokenizer only from byte-level BPE (GPT-2 style); this one is "
            f"{model.get('type')}: export --format hf instead"
        )
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    n = len(tokenizer)
    tokens = tokenizer.convert_ids_to_tokens(list(range(n)))
    special = set(tokenizer.all_special_ids) | {
        i for i, t in tokenizer.added_tokens_decoder.items() if t.special
    }
    types = [3 if i in special else 1 for i in range(n)]  # 3 = control, 1 = normal
    fields = [
        ("tokenizer.ggml.model", "gpt2", T.STRING, None),
        ("tokenizer.ggml.pre", pre, T.STRING, None),
        ("tokenizer.ggml.tokens", tokens, T.ARRAY, T.STRING),
        ("tokenizer.ggml.token_type", types, T.ARRAY, T.INT32),
        ("tokenizer.ggml.merges", merges, T.ARRAY, T.STRING),
        ("tokenizer.ggml.add_bos_token", False, T.BOOL, None),
    ]
    for key, tid in (
        ("bos", tokenizer.bos_token_id),
        ("eos", tokenizer.eos_token_id),
        ("padding", tokenizer.pad_token_id),
        ("unknown", tokenizer.unk_token_id),
    ):
        if tid is not None:
            fields.append((f"tokenizer.ggml.{key}_token_id", int(tid), T.UINT32, None))
    if tokenizer.chat_template:
        fields.append(("tokenizer.chat_template", tokenizer.chat_template, T.STRING, None))
    return fields


def _tensor(arr: np.ndarray, kind: str):
    """(data, raw_dtype) of one tensor at the export type; 1-D tensors (norms) stay F32."""
    from gguf import GGMLQuantizationType as Q
    from gguf.quants import quantize

    if arr.ndim == 1 or kind == "f32":
        return arr.astype(np.float32), None
    if kind == "f16":
        return arr.astype(np.float16), None
    if arr.shape[-1] % 32:  # Q8_0 blocks are 32 wide
        return arr.astype(np.float16), None
    return quantize(arr.astype(np.float32), Q.Q8_0), Q.Q8_0


def write_gguf(
    model,
    tokenizer,
    path: Path,
    kind: str,
    *,
    tokenizer_gguf: Path | None = None,
    pre: str | None = None,
    card: str = "",
    name: str = "kdistill student",
    license_id: str | None = None,
) -> Path:
    """Write ``model`` as a GGUF at ``kind`` (f32, f16, q8_0) to ``path`` (via a temp file)."""
    from gguf import GGUFWriter

    if kind not in GGUF_TYPES:
        raise InputError(f"GGUF type {kind!r}: use one of {', '.join(GGUF_TYPES)}")
    config = model.config
    check_gguf_exportable(config)
    if tokenizer_gguf is not None:
        tok_fields = _tokenizer_fields_from_gguf(tokenizer_gguf, tokenizer)
    elif pre:
        tok_fields = _tokenizer_fields_from_hf(tokenizer, pre)
    else:
        raise InputError(
            "GGUF export needs llama.cpp's view of the tokenizer: --tokenizer-gguf FILE (a GGUF "
            "with the same vocabulary, e.g. the teacher's) or --gguf-pre NAME (the llama.cpp "
            "pre-tokenizer of this byte-level BPE, e.g. smollm or gpt2)"
        )
    heads = config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    tmp = path.with_name(f".{path.name}.partial")
    w = GGUFWriter(tmp, "llama")
    w.add_name(name)
    if card:
        w.add_description(card)
    if license_id:
        w.add_license(license_id)
    w.add_file_type(_FILE_TYPE[kind])
    w.add_context_length(int(config.max_position_embeddings))
    w.add_embedding_length(int(config.hidden_size))
    w.add_block_count(int(config.num_hidden_layers))
    w.add_feed_forward_length(int(config.intermediate_size))
    w.add_head_count(int(heads))
    w.add_head_count_kv(int(kv))
    w.add_key_length(int(head_dim))
    w.add_value_length(int(head_dim))
    w.add_rope_dimension_count(int(head_dim))
    w.add_rope_freq_base(_rope_theta(config))
    w.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    w.add_vocab_size(int(config.vocab_size))
    for key, value, vtype, sub in tok_fields:
        w.add_key_value(key, value, vtype, sub_type=sub)
    sd = model.state_dict()
    tied = bool(getattr(config, "tie_word_embeddings", False))
    for key, t in sd.items():
        arr = t.detach().float().cpu()
        if key == "model.embed_tokens.weight":
            gname = "token_embd.weight"
        elif key == "model.norm.weight":
            gname = "output_norm.weight"
        elif key == "lm_head.weight":
            if tied:
                continue
            gname = "output.weight"
        elif key.startswith("model.layers."):
            idx, rest = key[len("model.layers.") :].split(".", 1)
            if rest not in _TENSOR_NAMES:
                if "rotary" in rest:
                    continue
                raise InputError(f"GGUF export: no llama.cpp tensor for {key}")
            gname = f"blk.{idx}.{_TENSOR_NAMES[rest]}"
            if rest.startswith("self_attn.q_proj"):
                arr = _rope_rows_to_gguf(arr, heads)
            elif rest.startswith("self_attn.k_proj"):
                arr = _rope_rows_to_gguf(arr, kv)
        else:
            if "rotary" in key:
                continue
            raise InputError(f"GGUF export: no llama.cpp tensor for {key}")
        data, raw = _tensor(arr.numpy(), kind)
        if raw is None:
            w.add_tensor(gname, data)
        else:
            w.add_tensor(gname, data, raw_dtype=raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file(progress=False)
    w.close()
    tmp.replace(path)
    return path


def k_quantize(src: Path, dst: Path, kind: str) -> Path:
    """A K-quant GGUF made by llama.cpp's own quantizer (needs the ``serve`` extra)."""
    import ctypes

    try:
        import llama_cpp
    except ImportError as exc:
        raise InputError(
            f"GGUF type {kind} needs llama.cpp's quantizer: pip install 'kdistill[serve]'"
        ) from exc
    if not hasattr(llama_cpp, "llama_model_quantize"):
        raise InputError(f"this llama_cpp has no llama_model_quantize: {kind} is unavailable")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, K_QUANTS[kind])
    tmp = dst.with_name(f".{dst.name}.partial")
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), ctypes.byref(params))
    if rc != 0 or not tmp.is_file():
        tmp.unlink(missing_ok=True)
        raise InputError(f"llama.cpp's quantizer failed on {src.name} ({kind}, code {rc})")
    tmp.replace(dst)
    return dst
