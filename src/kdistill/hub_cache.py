"""The Hugging Face hub cache: one way to get a repository's files for models and data.

``huggingface_hub`` downloads into and reads from its cache (``HF_HUB_CACHE`` / ``HF_HOME``),
honours ``HF_TOKEN`` for gated repositories and, with ``HF_HUB_OFFLINE=1``, reads the cache
only. Both are read at call time (the library reads them at import), so a process that sets
them later, or a test, is obeyed. Callers turn the library's errors into their own line."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_HINT = "the Hugging Face cache (HF_HUB_CACHE / HF_HOME)"


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def snapshot(
    spec: str, *, repo_type: str, allow_patterns: list[str] | None, cached_only: bool = False
) -> Path:
    """The local snapshot folder of ``org/name[@revision]`` (only ``allow_patterns`` files;
    ``cached_only``: from the cache, never the hub)."""
    from huggingface_hub import snapshot_download

    repo, _, revision = spec.partition("@")
    return Path(
        snapshot_download(
            repo,
            repo_type=repo_type,
            revision=revision or None,
            allow_patterns=allow_patterns,
            cache_dir=os.environ.get("HF_HUB_CACHE") or None,
            local_files_only=cached_only or offline(),
        )
    )


def why_missing(exc: Exception) -> str:
    """Why a snapshot could not be had, for an error line."""
    if offline():
        return f"not in {CACHE_HINT} and HF_HUB_OFFLINE=1 forbids downloading it"
    return f"not in {CACHE_HINT} and the hub did not give it ({type(exc).__name__})"


def cached_snapshot(spec: str, *, repo_type: str) -> Path | None:
    """The cached snapshot folder of ``org/name[@revision]``, or None when the cache has
    none (nothing is downloaded)."""
    try:
        return snapshot(spec, repo_type=repo_type, allow_patterns=None, cached_only=True)
    except Exception:  # not in the cache (LocalEntryNotFoundError and kin)
        return None
