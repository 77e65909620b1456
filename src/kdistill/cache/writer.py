"""Write a teacher-signal store, shard by shard, atomically and resumably.

A shard is written to a temp file in the store folder, fsynced and renamed; then the
manifest (also atomic) records its checksum. A re-run with the same identity skips every
shard the manifest lists whose file still matches its checksum, and computes only the rest.
"""

from __future__ import annotations

import json
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from kdistill.cache.manifest import Manifest, StoreError, sha256_file
from kdistill.files import atomic_write_bytes
from kdistill.softlabels import SparseRows, encode_positions, sampled_rows, topk_rows

TeacherFn = Callable[[torch.Tensor], torch.Tensor]  # (B, L) ids -> (B, L, V) fp32 log-probs
# (B, L) ids + this shard's generator -> B * L positions of sparse targets
RowsFn = Callable[[torch.Tensor, torch.Generator], SparseRows]


@dataclass
class WriteReport:
    computed_shards: list[int]
    skipped_shards: list[int]
    seconds: float
    bytes_per_token: float


_DTYPES = {
    torch.uint8: "U8",
    torch.float16: "F16",
    torch.int16: "I16",
    torch.int32: "I32",
    torch.float32: "F32",
    torch.int64: "I64",
}


def serialize_safetensors(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """Byte-deterministic safetensors (sorted header keys; the library's own writer orders
    its JSON header differently from process to process, which would break checksums)."""
    header: dict = {"__metadata__": metadata}
    blobs, offset = [], 0
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        raw = t.view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[name] = {
            "dtype": _DTYPES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + len(raw)],
        }
        blobs.append(raw)
        offset += len(raw)
    head = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    head += b" " * ((-len(head)) % 8)
    return struct.pack("<Q", len(head)) + head + b"".join(blobs)


def shard_name(i: int) -> str:
    return f"shard-{i:05d}.safetensors"


def _sparsify(logprobs: torch.Tensor, method: dict, generator: torch.Generator):
    if method["name"] == "topk":
        return topk_rows(logprobs, method["k"], method.get("top_p"))
    if method["name"] == "sampled":
        return sampled_rows(logprobs, method["n"], generator)
    raise StoreError(f"unknown cache method {method['name']!r}; use topk or sampled")


def dense_rows(teacher_fn: TeacherFn, method: dict) -> RowsFn:
    """Sparse rows from a teacher that gives dense log-probs: ``method`` (top-k or sampled)
    applied at every position."""

    def rows(blocks: torch.Tensor, generator: torch.Generator) -> SparseRows:
        logprobs = teacher_fn(blocks)
        return _sparsify(logprobs.reshape(-1, logprobs.shape[-1]), method, generator)

    return rows


def _concat(parts: list[SparseRows]) -> SparseRows:
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    return SparseRows(
        torch.cat([p.lengths for p in parts]),
        torch.cat([p.ids for p in parts]),
        torch.cat([p.logprobs for p in parts]),
        torch.cat([p.log_tail for p in parts]),
        torch.cat([p.counts for p in parts]) if first.counts is not None else None,
        first.n_samples,
    )


def encode_shard(
    blocks: torch.Tensor,
    rows_fn: RowsFn,
    manifest: Manifest,
    shard: int,
    batch_size: int,
    seed: int,
) -> tuple[bytes, int]:
    """Ask the teacher about ``blocks (n, L)``; return (safetensors bytes, n_tokens)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + shard)
    starts = range(0, len(blocks), batch_size)
    parts = [rows_fn(blocks[i : i + batch_size], generator) for i in starts]
    enc = encode_positions(_concat(parts), manifest.vocab_size, manifest.encoding["values"])
    meta = {"shard": str(shard), "n_blocks": str(blocks.shape[0])}
    return serialize_safetensors(enc.tensors(), meta), blocks.numel()


def _valid_existing(dest: Path, manifest: Manifest, shard: int) -> bool:
    entry = manifest.shards.get(str(shard))
    path = dest / shard_name(shard)
    return bool(entry) and path.is_file() and sha256_file(path) == entry["sha256"]


def write_store(
    dest: Path,
    blocks: torch.Tensor,
    rows_fn: RowsFn,
    manifest: Manifest,
    *,
    batch_size: int = 4,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> WriteReport:
    """Fill ``dest`` with the store ``manifest`` describes (resuming a partial one), asking
    ``rows_fn`` (see :func:`dense_rows`) for each batch of blocks."""
    dest.mkdir(parents=True, exist_ok=True)
    mpath = dest / "manifest.json"
    if mpath.is_file():
        old = Manifest.load(mpath)
        if old.identity() != manifest.identity():
            changed = sorted(k for k, v in manifest.identity().items() if old.identity()[k] != v)
            raise StoreError(
                f"{dest} holds a store with different {', '.join(changed)}; use a new cache "
                "folder or delete this one"
            )
        manifest.shards = old.shards
    manifest.complete = False
    atomic_write_bytes(mpath, manifest.to_json().encode())
    t0 = time.perf_counter()
    computed, skipped = [], []
    for shard in range(manifest.n_shards):
        if _valid_existing(dest, manifest, shard):
            skipped.append(shard)
            continue
        lo = shard * manifest.shard_blocks
        part = blocks[lo : lo + manifest.shard_blocks]
        data, n_tokens = encode_shard(part, rows_fn, manifest, shard, batch_size, seed)
        path = dest / shard_name(shard)
        atomic_write_bytes(path, data)
        manifest.shards[str(shard)] = {
            "file": path.name,
            "sha256": sha256_file(path),
            "n_blocks": int(part.shape[0]),
            "n_tokens": n_tokens,
            "bytes": len(data),
            "written_at": time.time(),
        }
        atomic_write_bytes(mpath, manifest.to_json().encode())
        computed.append(shard)
        if progress:
            progress(shard + 1, manifest.n_shards)
    manifest.complete = True
    atomic_write_bytes(mpath, manifest.to_json().encode())
    total_bytes = sum(s["bytes"] for s in manifest.shards.values())
    total_tokens = sum(s["n_tokens"] for s in manifest.shards.values())
    return WriteReport(
        computed, skipped, time.perf_counter() - t0, total_bytes / max(total_tokens, 1)
    )
