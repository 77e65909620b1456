"""GGUF files -> plain transformers models (de-quantised; needs the ``gguf`` package)."""

from __future__ import annotations

from pathlib import Path

import torch


def load_gguf(path: str | Path, dtype: torch.dtype = torch.float32):
    """De-quantise a GGUF file into a transformers model + tokenizer (needs ``gguf``)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
    return model, tokenizer


def to_plain_model(model):
    """A fresh ``from_config`` copy without the GGUF ``quantization_config``.

    A GGUF-loaded model carries ``quantization_config`` and transformers refuses to
    ``save_pretrained`` it; dropping that key and moving the (already de-quantised) weights into
    a new model gives an ordinary model that saves as safetensors.
    """
    from transformers import AutoModelForCausalLM

    config = model.config.__class__.from_dict(model.config.to_dict())
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=next(model.parameters()).dtype)
    missing, unexpected = plain.load_state_dict(model.state_dict(), strict=False)
    real_missing = [k for k in missing if not k.endswith("lm_head.weight")]
    if real_missing or unexpected:
        raise RuntimeError(
            f"weights did not transfer: missing={real_missing} unexpected={unexpected}"
        )
    if config.tie_word_embeddings:
        plain.tie_weights()
    return plain
