"""Data sets named by Hugging Face hub id (``data.source: org/name`` or ``org/name@revision``).

The repository's data files (``.parquet``, ``.jsonl``, ``.txt``) are fetched through
``huggingface_hub`` into its cache (``HF_HUB_CACHE`` / ``HF_HOME``; ``HF_TOKEN`` for gated
sets; ``HF_HUB_OFFLINE=1`` reads the cache only) and read by kdistill's own loaders: the
files of the ``train`` split (a path with ``train`` in it), or every data file when none is
named so. kdistill then holds out its own hash-based share of those records, as for a local
file. Not yet: subsets by name, other splits, streaming.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from kdistill.errors import InputError

_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")
DATA_SUFFIXES = (".parquet", ".jsonl", ".txt")


def looks_like_dataset_id(source: str) -> bool:
    return bool(_ID.match(source)) and not source.endswith((*DATA_SUFFIXES, ".json"))


def dataset_files(source: str) -> list[Path]:
    """The local data files of hub data set ``source``, train split first (sorted)."""
    from huggingface_hub import snapshot_download

    repo, _, revision = source.partition("@")
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    try:
        folder = Path(
            snapshot_download(
                repo,
                repo_type="dataset",
                revision=revision or None,
                allow_patterns=[f"*{s}" for s in DATA_SUFFIXES],
                cache_dir=os.environ.get("HF_HUB_CACHE") or None,
                local_files_only=offline,
            )
        )
    except Exception as exc:  # not cached, not found, gated, network
        why = "HF_HUB_OFFLINE=1 forbids downloading it" if offline else type(exc).__name__
        raise InputError(
            f"data source {source!r} not found: not a local file and not in the Hugging Face "
            f"cache (HF_HUB_CACHE / HF_HOME; {why}); give 'kjv', a .txt/.jsonl/.parquet file, "
            "or a hub data set id downloaded once with network access"
        ) from exc
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in DATA_SUFFIXES)
    train = [p for p in files if "train" in p.relative_to(folder).as_posix().lower()]
    if not (train or files):
        raise InputError(
            f"data source {source!r}: the hub snapshot {folder} has no .parquet/.jsonl/.txt file"
        )
    return train or files
