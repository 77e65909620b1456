"""Read a teacher-signal store: verify it, check it matches the run, decode blocks."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load

from kdistill.cache.manifest import Manifest, StoreError, check_shard
from kdistill.softlabels import EncodedPositions, SparseRows, decode_positions
from kdistill.softlabels.encoding import id_bits_for


class StoreReader:
    """Random access to blocks; each shard's checksum is verified when first loaded."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        mpath = self.path / "manifest.json"
        if not mpath.is_file():
            raise StoreError(f"{self.path}: no manifest.json; build the store with kdistill cache")
        self.manifest = Manifest.load(mpath)
        if not self.manifest.complete or len(self.manifest.shards) != self.manifest.n_shards:
            raise StoreError(
                f"{self.path}: store is incomplete ({len(self.manifest.shards)}/"
                f"{self.manifest.n_shards} shards); re-run kdistill cache to finish it"
            )
        # decoded shards stay in memory (a few MB per shard) so shuffled access is cheap
        self._decoded: dict[int, list[SparseRows]] = {}
        self._verified: set[int] = set()  # each shard's checksum is read once

    def check(self, *, tokenizer_hash: str, data_fingerprint: str, block_size: int) -> None:
        m = self.manifest
        if m.tokenizer_hash != tokenizer_hash:
            raise StoreError(
                f"{self.path}: made with a different tokenizer than the student's; rebuild the "
                "store for this tokenizer"
            )
        if m.block_size != block_size:
            raise StoreError(
                f"{self.path}: block_size {m.block_size} != data.block_size {block_size}; "
                f"set data.block_size={m.block_size}"
            )
        if m.data_fingerprint != data_fingerprint:
            raise StoreError(
                f"{self.path}: made from different data (fingerprint {m.data_fingerprint[:12]} "
                f"vs {data_fingerprint[:12]}); use the data config the store was built with"
            )

    def verify_all(self) -> None:
        for shard in range(self.manifest.n_shards):
            self._verify(shard)

    def _verify(self, shard: int) -> Path:
        entry = self.manifest.shards[str(shard)]
        path = self.path / entry["file"]
        if shard in self._verified:
            return path
        check_shard(path, entry["sha256"], "re-run kdistill cache")
        self._verified.add(shard)
        return path

    def _load_shard(self, shard: int) -> list[SparseRows]:
        path = self._verify(shard)
        t = load(path.read_bytes())
        enc = EncodedPositions(
            t["lengths"],
            t["ids"],
            t["values"],
            t["log_tail"],
            id_bits_for(self.manifest.vocab_size),
            self.manifest.encoding["values"],
            int(self.manifest.method.get("n", 0) or 0),
        )
        rows = decode_positions(enc)
        # split per block
        L = self.manifest.block_size
        n_blocks = rows.n_positions // L
        out = []
        offsets = torch.cumsum(rows.lengths, 0)
        for b in range(n_blocks):
            p0, p1 = b * L, (b + 1) * L
            i0 = int(offsets[p0 - 1]) if p0 else 0
            i1 = int(offsets[p1 - 1])
            out.append(
                SparseRows(
                    rows.lengths[p0:p1],
                    rows.ids[i0:i1],
                    rows.logprobs[i0:i1],
                    rows.log_tail[p0:p1],
                    rows.counts[i0:i1] if rows.counts is not None else None,
                    rows.n_samples,
                )
            )
        return out

    def block(self, index: int) -> SparseRows:
        """The sparse teacher targets of block ``index`` (``block_size`` positions)."""
        shard, within = divmod(index, self.manifest.shard_blocks)
        if shard not in self._decoded:
            self._decoded[shard] = self._load_shard(shard)
        return self._decoded[shard][within]

    def __len__(self) -> int:
        return self.manifest.n_blocks
