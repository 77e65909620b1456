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

import os
import re
from pathlib import Path

from kdistill.errors import KdistillError

_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?(@[\w./-]+)?$")
_NEEDED = ["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken", "*.jinja"]


class HubModelError(KdistillError, ValueError):
    """A hub id that could not be resolved (not cached offline, unknown, gated)."""


def looks_like_hub_id(spec: str) -> bool:
    return bool(_ID.match(spec)) and not spec.endswith(".gguf")


def split_revision(spec: str) -> tuple[str, str | None]:
    """``org/name@rev`` -> ``("org/name", "rev")``."""
    repo, _, revision = spec.partition("@")
    return repo, revision or None


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def hub_snapshot(spec: str) -> Path:
    """The local snapshot folder of hub model ``spec`` (downloaded once, then cached)."""
    from huggingface_hub import snapshot_download

    repo, revision = split_revision(spec)
    kwargs = {
        "revision": revision,
        "cache_dir": os.environ.get("HF_HUB_CACHE") or None,
        "local_files_only": _offline(),
    }
    try:
        folder = Path(snapshot_download(repo, allow_patterns=_NEEDED, **kwargs))
        if not any(folder.glob("*.safetensors")):
            folder = Path(snapshot_download(repo, allow_patterns=[*_NEEDED, "*.bin"], **kwargs))
    except Exception as exc:  # huggingface_hub's errors: not cached, not found, gated, network
        where = "the Hugging Face cache (HF_HUB_CACHE / HF_HOME)"
        if _offline():
            why = f"not in {where} and HF_HUB_OFFLINE=1 forbids downloading it"
        else:
            why = f"not in {where} and the hub did not give it ({type(exc).__name__})"
        from kdistill.models.bundled import BUNDLED

        raise HubModelError(
            f"model {spec!r} not found: {why}; download it once with network access (gated "
            f"models need HF_TOKEN), or give a bundled name ({', '.join(BUNDLED)}), a .gguf "
            "file or a local folder"
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
