"""Models named by Hugging Face hub id (``org/name``, ``org/name@revision``).

A name that is not bundled, not a ``.gguf`` file and not a local folder is looked up on the
hub through ``huggingface_hub``, which downloads into and reads from its cache (``HF_HOME`` /
``HF_HUB_CACHE``), honours ``HF_TOKEN`` for gated models and ``HF_HUB_OFFLINE=1`` (then only
what is cached loads). Only what a model needs is fetched: configs, tokenizer files and
safetensors weights (``.bin`` weights only for a repository without safetensors); no code
(``trust_remote_code`` stays off). A local folder of the same name wins, and a log line says
so. The snapshot folder is named by the commit it holds, which goes into the teacher identity.
"""

from __future__ import annotations

import re
from pathlib import Path

from kdistill.errors import KdistillError
from kdistill.hub_cache import snapshot, why_missing

_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?(@[\w./-]+)?$")
_NEEDED = ["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken", "*.jinja"]


class HubModelError(KdistillError, ValueError):
    """A hub id that could not be resolved (not cached offline, unknown, gated)."""


def looks_like_hub_id(spec: str) -> bool:
    return bool(_ID.match(spec)) and not spec.endswith(".gguf")


def hub_snapshot(spec: str) -> Path:
    """The local snapshot folder of hub model ``spec`` (downloaded once, then cached)."""
    try:
        folder = snapshot(spec, repo_type="model", allow_patterns=_NEEDED)
        if not any(folder.glob("*.safetensors")):
            folder = snapshot(spec, repo_type="model", allow_patterns=[*_NEEDED, "*.bin"])
    except Exception as exc:  # huggingface_hub's errors: not cached, not found, gated, network
        from kdistill.models.bundled import BUNDLED

        raise HubModelError(
            f"model {spec!r} not found: {why_missing(exc)}; download it once with network "
            f"access (gated models need HF_TOKEN), or give a bundled name "
            f"({', '.join(BUNDLED)}), a .gguf file or a local folder"
        ) from exc
    if not (folder / "config.json").is_file():
        raise HubModelError(f"model {spec!r}: the hub snapshot {folder} has no config.json")
    return folder


def snapshot_commit(folder: Path) -> str | None:
    """The commit a hub snapshot folder holds (its name), or None for other folders."""
    name = folder.name
    return (
        name if folder.parent.name == "snapshots" and re.fullmatch(r"[0-9a-f]{40}", name) else None
    )
