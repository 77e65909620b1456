"""The store's self-description (``manifest.json``) and atomic file helpers.

Shards are safetensors files: no pickle, memory-mappable, a format the project already
depends on, with named tensors per shard (lengths, packed ids, values, tail). Parquet would
add a second columnar stack for no gain at these sizes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kdistill.errors import KdistillError

FORMAT_VERSION = 1
ALIGNMENT = (
    "next-token: entry i of a block is the teacher distribution for the token at position i+1, "
    "computed from the block's tokens 0..i (the same positions as causal-LM logits[:, i])"
)


class StoreError(KdistillError, ValueError):
    """A store that is missing, incomplete, corrupt or does not match the run."""


@dataclass
class Manifest:
    teacher: dict
    tokenizer_hash: str
    vocab_size: int
    chat_template_hash: str | None
    cache_temperature: float
    method: dict
    encoding: dict
    data_fingerprint: str
    block_size: int
    n_blocks: int
    shard_blocks: int
    format_version: int = FORMAT_VERSION
    alignment: str = ALIGNMENT
    shards: dict[str, dict] = field(default_factory=dict)
    complete: bool = False

    @property
    def n_shards(self) -> int:
        return -(-self.n_blocks // self.shard_blocks)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def load(cls, path: Path) -> Manifest:
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise StoreError(f"{path}: not a readable kdistill store manifest ({exc})") from exc
        if data.get("format_version") != FORMAT_VERSION:
            raise StoreError(
                f"{path}: store format {data.get('format_version')} is not supported "
                f"(this kdistill reads format {FORMAT_VERSION}); rebuild it with kdistill cache"
            )
        return cls(**data)

    def identity(self) -> dict:
        """Everything that defines the store's content (not its progress)."""
        d = asdict(self)
        for key in ("shards", "complete"):
            d.pop(key)
        return d


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_shard(path: Path, sha256: str, rerun: str = "re-run") -> None:
    """The shard at ``path`` exists and has checksum ``sha256``, else one StoreError
    (``rerun``: what rebuilds it, e.g. "re-run kdistill cache")."""
    if not path.is_file():
        raise StoreError(f"{path}: shard missing; {rerun} to rebuild it")
    if sha256_file(path) != sha256:
        raise StoreError(f"{path}: checksum mismatch (corrupt shard); delete it and {rerun}")
