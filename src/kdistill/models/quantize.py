"""Weight-only int8 students (torchao), saved and loaded as a plain model folder.

Every ``nn.Linear`` weight becomes torchao's ``Int8Tensor`` (int8 values, one fp32 scale per
output row; activations stay fp32). The input embedding is quantized too: when it is tied to
the head, both keep using one int8 table (``F.embedding`` reads torchao's tensor), so a tied
student stays tied and its largest matrix is stored once, at one byte per weight.

A quantized folder holds ``config.json``, the tokenizer, ``quantization.json`` and
``model.safetensors`` with each int8 weight as ``<name>.qdata`` (int8) and ``<name>.scale``;
:func:`load_quantized` rebuilds the model. Needs the ``compress`` extra (torchao).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from kdistill.errors import InputError

MARKER = "quantization.json"
SCHEMES = ("int8",)


def _torchao():
    try:
        import torchao
        from torchao.quantization import Int8WeightOnlyConfig, quantize_
    except ImportError as exc:
        raise InputError(
            "int8 quantization needs torchao: pip install 'kdistill[compress]'"
        ) from exc
    return torchao.__version__, Int8WeightOnlyConfig, quantize_


def quantize_int8(model) -> torch.nn.Module:
    """Quantize ``model``'s linear and embedding weights in place (weight-only int8)."""
    version, config_cls, quantize_ = _torchao()
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    tied = head is not None and head.weight is emb.weight
    model.requires_grad_(False)
    quantize_(model, config_cls(), filter_fn=lambda m, _fqn: isinstance(m, torch.nn.Linear))
    if tied:
        emb.weight = head.weight
    else:  # an untied embedding: quantize its table through a stand-in linear layer
        stand_in = torch.nn.Linear(emb.weight.shape[1], emb.weight.shape[0], bias=False)
        stand_in.weight = emb.weight
        quantize_(stand_in, config_cls())
        emb.weight = stand_in.weight
    model.config.kdistill_quantization = {"scheme": "int8_weight_only", "torchao": version}
    return model


def quantize_teacher_int8(model) -> torch.nn.Module:
    """A teacher held in memory as weight-only int8 (torchao): every linear layer but the
    output head (which the KD loss reads directly, and which a tied model shares with its
    embedding) becomes int8 with one fp32 scale per row; activations and the soft-label math
    stay fp32. In place; the model is frozen."""
    version, config_cls, quantize_ = _torchao()
    head = model.get_output_embeddings()
    model.requires_grad_(False)

    def body_linear(module, _fqn) -> bool:
        return isinstance(module, torch.nn.Linear) and module is not head

    quantize_(model, config_cls(), filter_fn=body_linear)
    model.config.kdistill_quantization = {"scheme": "int8_weight_only_teacher", "torchao": version}
    return model


def check_torchao() -> None:
    """One line naming the fix when torchao is missing (before any model is loaded)."""
    _torchao()


def _is_quantized(t) -> bool:
    return hasattr(t, "qdata") and hasattr(t, "scale")


def _unique_params(model) -> dict[str, torch.Tensor]:
    seen, out = set(), {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) not in seen:
            seen.add(id(p))
            out[name] = p
    for name, b in model.named_buffers():
        out.setdefault(name, b)
    return out


def save_quantized(model, tokenizer, folder: Path) -> None:
    """Write a quantized model into ``folder`` (callers make it atomic)."""
    from safetensors.torch import save_file

    tensors = {}
    for name, p in _unique_params(model).items():
        if _is_quantized(p):
            tensors[f"{name}.qdata"] = p.qdata.contiguous()
            tensors[f"{name}.scale"] = p.scale.contiguous()
        elif "rotary" not in name:
            tensors[name] = p.detach().contiguous()
    save_file(tensors, str(folder / "model.safetensors"))
    model.config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / MARKER).write_text(json.dumps(model.config.kdistill_quantization) + "\n")


def load_quantized(folder: Path):
    """Rebuild a model saved by :func:`save_quantized` (fp32 activations, int8 weights)."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(folder)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    if config.tie_word_embeddings:
        model.tie_weights()
    quantize_int8(model)
    stored = load_file(str(folder / "model.safetensors"))
    used = set()
    with torch.no_grad():
        for name, p in _unique_params(model).items():
            if _is_quantized(p):
                for part in ("qdata", "scale"):
                    key = f"{name}.{part}"
                    if key not in stored or stored[key].shape != getattr(p, part).shape:
                        raise InputError(f"{folder}: {key} missing or of the wrong shape")
                    getattr(p, part).copy_(stored[key])
                    used.add(key)
            elif name in stored:
                p.copy_(stored[name])
                used.add(name)
            elif "rotary" not in name:
                raise InputError(f"{folder}: no stored tensor for {name}")
    left = set(stored) - used
    if left:
        raise InputError(f"{folder}: stored tensors the model does not have: {sorted(left)[:3]}")
    return model
