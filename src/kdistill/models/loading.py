"""Load causal LMs and tokenizers from a local HF folder, a GGUF file or a bundled name."""

from __future__ import annotations

from pathlib import Path

import torch

from kdistill.models.bundled import BUNDLED, ModelNotFoundError, materialise_bundled

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


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


def resolve_model_path(spec: str) -> tuple[Path, str | None]:
    """(folder, gguf file name or None) for a spec: bundled name, GGUF file or HF folder."""
    if spec in BUNDLED:
        return materialise_bundled(spec), None
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return path.parent, path.name
    if path.is_dir() and (path / "config.json").is_file():
        return path, None
    names = ", ".join(BUNDLED)
    raise ModelNotFoundError(
        f"model {spec!r} not found: give a bundled name ({names}), a .gguf file, or a local "
        "Hugging Face folder with config.json (hub downloads are disabled)"
    )


def load_tokenizer(spec: str):
    from transformers import AutoTokenizer

    folder, gguf = resolve_model_path(spec)
    kwargs = {"gguf_file": gguf} if gguf else {}
    tok = AutoTokenizer.from_pretrained(folder, **kwargs)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_causal_lm(spec: str, dtype: str = "float32", *, frozen: bool = False):
    """Load ``(model, tokenizer)``. ``frozen``: eval mode, no gradients (for teachers)."""
    from transformers import AutoModelForCausalLM

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    folder, gguf = resolve_model_path(spec)
    if gguf:
        model, tok = load_gguf(folder / gguf, DTYPES[dtype])
        model = to_plain_model(model)
    else:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=DTYPES[dtype])
        tok = load_tokenizer(str(folder))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if frozen:
        freeze(model)
    return model, tok


def freeze(model: torch.nn.Module) -> torch.nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def count_params(model: torch.nn.Module) -> int:
    """Unique parameters (tied weights counted once)."""
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total
