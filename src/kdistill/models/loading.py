"""Load causal LMs and tokenizers from a local HF folder, a GGUF file or a bundled name."""

from __future__ import annotations

from pathlib import Path

import torch

from kdistill.errors import InputError, KdistillError
from kdistill.log import get_logger
from kdistill.models.bundled import BUNDLED, ModelNotFoundError, materialise_bundled
from kdistill.models.gguf import load_gguf, to_plain_model

log = get_logger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_model_path(spec: str) -> tuple[Path, str | None]:
    """(folder, gguf file name or None) for a spec: bundled name, GGUF file, local HF folder,
    or a Hugging Face hub id (``org/name[@revision]``, through the hub cache)."""
    from kdistill.models.hub import hub_snapshot, looks_like_hub_id

    if spec in BUNDLED:
        return materialise_bundled(spec), None
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return path.parent, path.name
    if path.is_dir() and (path / "config.json").is_file():
        if "/" in spec and looks_like_hub_id(spec):
            log.info(f"model {spec!r}: using the local folder {path.resolve()}, not the hub id")
        return path, None
    if looks_like_hub_id(spec) and not path.exists():
        return hub_snapshot(spec), None
    names = ", ".join(BUNDLED)
    raise ModelNotFoundError(
        f"model {spec!r} not found: give a bundled name ({names}), a .gguf file, a local "
        "Hugging Face folder with config.json, or a hub id (org/name[@revision])"
    )


def _check_safetensors(path: Path) -> None:
    """Header readable and the data as long as the header says (a truncated copy fails)."""
    import json
    import struct

    size = path.stat().st_size
    with open(path, "rb") as fh:
        raw = fh.read(8)
        n = struct.unpack("<Q", raw)[0] if len(raw) == 8 else -1
        header = fh.read(n) if 0 < n <= size - 8 else b""
    try:
        meta = json.loads(header)
    except ValueError:
        meta = None
    if not isinstance(meta, dict):
        raise InputError(f"{path}: not a readable safetensors file; re-save or re-download it")
    ends = [v["data_offsets"][1] for k, v in meta.items() if k != "__metadata__"]
    if 8 + n + max(ends, default=0) > size:
        raise InputError(
            f"{path}: truncated ({size} bytes, the header needs {8 + n + max(ends)}); "
            "re-save or re-download it"
        )


def check_model_files(spec: str, field: str) -> None:
    """Cheap checks before anything loads: the spec names a model whose files are there and
    readable (``field`` names the setting in error lines). A bundled model is checked by its
    package."""
    import json

    if spec in BUNDLED:
        from kdistill.models.bundled import bundled_gguf_path

        bundled_gguf_path(spec)
        return
    folder, gguf = resolve_model_path(spec)
    if gguf:
        with open(folder / gguf, "rb") as fh:
            if fh.read(4) != b"GGUF":
                raise InputError(f"{field}: {spec!r} is not a GGUF file (no GGUF header)")
        return
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        config = None
    if not isinstance(config, dict) or "model_type" not in config:
        raise InputError(
            f"{field}: {folder / 'config.json'} is not a valid model config (JSON with "
            "model_type); re-save the model with save_pretrained"
        )
    weights = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("pytorch_model*.bin"))
    if not weights:
        raise InputError(
            f"{field}: {folder} has a config.json but no weights (*.safetensors or "
            "pytorch_model.bin); copy the weight files into it"
        )
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (ValueError, KeyError, TypeError):
            raise InputError(f"{field}: {index} is not a valid weight index") from None
        missing = sorted(s for s in shards if not (folder / s).is_file())
        if missing:
            raise InputError(f"{field}: {folder} lacks weight shard {missing[0]}")
    for w in weights:
        if w.suffix == ".safetensors":
            _check_safetensors(w)


def load_tokenizer(spec: str):
    from transformers import AutoTokenizer

    folder, gguf = resolve_model_path(spec)
    kwargs = {"gguf_file": gguf} if gguf else {}
    tok = AutoTokenizer.from_pretrained(folder, **kwargs)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_causal_lm(
    spec: str, dtype: str = "float32", *, frozen: bool = False, device: str | None = None
):
    """Load ``(model, tokenizer)``. ``frozen``: eval mode, no gradients (for teachers);
    ``device``: a ``device`` setting (``models.placement``) to place it on (None: the CPU)."""
    from transformers import AutoModelForCausalLM

    int8 = dtype == "int8"  # a teacher held as weight-only int8: loaded in fp32, then quantized
    dtype = "float32" if int8 else dtype
    if dtype not in DTYPES:
        raise InputError(f"dtype must be one of {', '.join(DTYPES)}, int8, got {dtype!r}")
    folder, gguf = resolve_model_path(spec)
    try:
        if gguf:
            model, tok = load_gguf(folder / gguf, DTYPES[dtype])
            model = to_plain_model(model)
        elif (folder / "quantization.json").is_file():  # an int8 student (kdistill export)
            from kdistill.models.quantize import load_quantized

            model = load_quantized(folder)
            tok = load_tokenizer(str(folder))
        else:
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=DTYPES[dtype])
            tok = load_tokenizer(str(folder))
    except (OSError, ValueError, KeyError, EOFError) as exc:
        if isinstance(exc, KdistillError):
            raise
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]
        raise InputError(
            f"model {spec!r} could not be loaded ({first}); check that its files are whole"
        ) from exc
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if frozen:
        freeze(model)
    if int8:
        from kdistill.models.quantize import quantize_teacher_int8

        quantize_teacher_int8(model)
    if device is not None:
        from kdistill.models.placement import place, resolve_device

        model = place(model, resolve_device(device))
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
