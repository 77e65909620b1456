"""Data sets named by Hugging Face hub id (``data.source: org/name`` or ``org/name@revision``).

The repository's data files (``.parquet``, ``.jsonl``, ``.txt``) are fetched through
``huggingface_hub`` into its cache (``HF_HUB_CACHE`` / ``HF_HOME``; ``HF_TOKEN`` for gated
sets; ``HF_HUB_OFFLINE=1`` reads the cache only) and read by kdistill's own loaders: the
files of the ``train`` split (a path with ``train`` in it), or every data file when none is
named so. kdistill then holds out its own hash-based share of those records, as for a local
file. Not yet: subsets by name, other splits, streaming.
"""

from __future__ import annotations

import re
from pathlib import Path

from kdistill.errors import InputError
from kdistill.hub_cache import snapshot, why_missing

_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")
DATA_SUFFIXES = (".parquet", ".jsonl", ".txt")


def looks_like_dataset_id(source: str) -> bool:
    return bool(_ID.match(source)) and not source.endswith((*DATA_SUFFIXES, ".json"))


def dataset_files(source: str) -> list[Path]:
    """The local data files of hub data set ``source``, train split first (sorted)."""
    try:
        folder = snapshot(
            source, repo_type="dataset", allow_patterns=[f"*{s}" for s in DATA_SUFFIXES]
        )
    except Exception as exc:  # not cached, not found, gated, network
        raise InputError(
            f"data source {source!r} not found: a hub data set {why_missing(exc)}; give "
            "'kjv', a .txt/.jsonl/.parquet file, or a hub data set id downloaded once with "
            "network access"
        ) from exc
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in DATA_SUFFIXES)
    train = [p for p in files if "train" in p.relative_to(folder).as_posix().lower()]
    if not (train or files):
        raise InputError(
            f"data source {source!r}: the hub snapshot {folder} has no .parquet/.jsonl/.txt file"
        )
    return train or files
