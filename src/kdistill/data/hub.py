"""Data sets named by Hugging Face hub id (``data.source: org/name`` or ``org/name@revision``).

The repository's data files and its README (whose ``configs:`` name the subsets) are
fetched through ``huggingface_hub`` into its cache (``HF_HUB_CACHE`` / ``HF_HOME``;
``HF_TOKEN`` for gated sets; ``HF_HUB_OFFLINE=1`` reads the cache only); ``datasets`` then
reads that snapshot folder with the hub's own conventions: the subset (``data.subset``, a
configuration name) and the split (``data.split``, default ``train``). Rows become kdistill
records (a ``text_field`` column, ``messages``, or generations) and kdistill holds out its
own hash-based share of them, as for a local file. ``data.streaming``: see
:mod:`kdistill.data.streaming`.
"""

from __future__ import annotations

import re
from pathlib import Path

from kdistill.errors import InputError
from kdistill.hub_cache import snapshot, why_missing

_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")
DATA_SUFFIXES = (".parquet", ".jsonl", ".json", ".csv", ".txt")


def looks_like_dataset_id(source: str) -> bool:
    return bool(_ID.match(source)) and not source.endswith(DATA_SUFFIXES)


def dataset_folder(source: str) -> Path:
    """The local snapshot folder of hub data set ``source`` (data files and README only)."""
    patterns = [f"*{s}" for s in DATA_SUFFIXES] + ["README.md"]
    try:
        return snapshot(source, repo_type="dataset", allow_patterns=patterns)
    except Exception as exc:  # not cached, not found, gated, network
        raise InputError(
            f"data source {source!r} not found: a hub data set {why_missing(exc)}; give "
            "'kjv', a .txt/.jsonl/.parquet file, or a hub data set id downloaded once with "
            "network access"
        ) from exc


def load_split(source: str, where: str, *, subset: str | None, split: str, **kwargs):
    """``datasets.load_dataset`` of one split (of one subset) from ``where`` (a snapshot
    folder or a hub id); a subset or split the set lacks is one line naming it."""
    import datasets

    try:
        return datasets.load_dataset(where, name=subset, split=split, **kwargs)
    except (ValueError, FileNotFoundError, datasets.exceptions.DatasetGenerationError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise InputError(
            f"data source {source!r} (subset {subset!r}, split {split!r}): {first}; set "
            "data.subset / data.split to ones the data set has"
        ) from exc


def dataset_rows(source: str, *, subset: str | None = None, split: str = "train") -> list[dict]:
    """The rows of one split (of one subset) of hub data set ``source``, read by ``datasets``
    from the cached snapshot."""
    ds = load_split(source, str(dataset_folder(source)), subset=subset, split=split)
    if len(ds) == 0:
        raise InputError(f"data source {source!r}: split {split!r} has no rows")
    return list(ds)
