"""Write a recorded store: generations with their per-token top log-probs, encoded into
shards one record at a time, so memory does not grow with the number of records (a million
API generations build like a thousand). Reading: :mod:`kdistill.teachers.recorded_store`.

Each shard (``recorded-NNNNN.safetensors``, byte-deterministic safetensors) holds up to
``shard_records`` training records in order, as flat arrays with per-record counts:

* the student's view, computed at build time with the student's tokenizer exactly as
  :func:`kdistill.data.completions.attach_signal` does: ``input_ids``/``labels`` (int32) and
  the sparse target rows ``sig_ids``/``sig_logprobs`` (``n x k`` per record) + ``sig_tail``;
* the teacher's own view, untouched by the student's tokenizer, for aligning across
  tokenizers at read time: every teacher token's UTF-8 text, its character offset in the
  completion, and its top log-probs as (piece, log-prob) pairs (pieces in a per-shard table).

``manifest.json`` (written atomically after every shard) records what the store is made of
(the source file's identity, the tokenizer, ``block_size``, the held-out split) and each
shard's checksum. A re-run with the same identity skips every shard whose file still
matches its checksum; a different identity is refused.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from array import array
from collections.abc import Callable, Iterable
from dataclasses import asdict
from pathlib import Path

import torch

from kdistill.cache.manifest import StoreError, sha256_file
from kdistill.cache.writer import serialize_safetensors
from kdistill.data.completions import PieceMap, SignalStats, attach_signal, generation_example
from kdistill.files import atomic_write_bytes
from kdistill.models.vocab import token_bytes
from kdistill.teachers.alignment import align_streams

FORMAT = "kdistill-recorded/1"
SHARD_RECORDS = 1024
MANIFEST = "manifest.json"


def shard_file(i: int) -> str:
    return f"recorded-{i:05d}.safetensors"


def source_identity(path: str | Path) -> dict:
    """What the source file is, cheaply: name, size, mtime and a hash of its first and last
    MiB (a rewritten or appended ``kept.jsonl`` changes at least one of them)."""
    p = Path(path)
    st = p.stat()
    h = hashlib.sha256()
    with open(p, "rb") as fh:
        h.update(fh.read(1 << 20))
        if st.st_size > 2 << 20:
            fh.seek(-(1 << 20), os.SEEK_END)
            h.update(fh.read(1 << 20))
    return {"name": p.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "ends": h.hexdigest()}


def _utf8(texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    raw = [t.encode("utf-8") for t in texts]
    joined = b"".join(raw)
    blob = torch.frombuffer(bytearray(joined), dtype=torch.uint8) if joined else None
    blob = torch.zeros(0, dtype=torch.uint8) if blob is None else blob
    return blob, torch.tensor([len(b) for b in raw], dtype=torch.int32)


def _tensor(values: array, dtype: torch.dtype) -> torch.Tensor:
    if not len(values):
        return torch.zeros(0, dtype=dtype)
    return torch.frombuffer(bytearray(values.tobytes()), dtype=dtype)


def _finite(lp) -> float:
    return float(lp) if isinstance(lp, (int, float)) and math.isfinite(lp) else float("-inf")


def _text_aligner(tokenizer):
    """``(student ids, teacher token texts) -> [(i, j)]``: where student token ``i`` and
    teacher token ``j`` end at the same byte of the same text (the teacher may use any
    tokenizer: only its token texts are known)."""
    s_bytes = token_bytes(tokenizer)

    def align(ids: list[int], texts: list[str]) -> list[tuple[int, int]]:
        s_pieces = [s_bytes[i] if 0 <= i < len(s_bytes) else b"" for i in ids]
        return align_streams(s_pieces, [str(t).encode("utf-8") for t in texts])

    return align


class _ShardBuilder:
    """Collects one shard's records as flat lists, then serialises them."""

    def __init__(self):
        self.rec = {"n": [], "k": [], "n_teacher": []}
        self.ids: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []
        self.sig_ids: list[torch.Tensor] = []
        self.sig_lp: list[torch.Tensor] = []
        self.sig_tail: list[torch.Tensor] = []
        # flat typed arrays (4-8 bytes an entry, not a Python object each)
        self.t_tokens: list[str] = []
        self.t_offsets = array("q")
        self.t_n_top = array("i")
        self.t_top_piece = array("i")
        self.t_top_lp = array("f")
        self.pieces: dict[str, int] = {}
        self.stats = SignalStats()

    def __len__(self) -> int:
        return len(self.rec["n"])

    def add(self, record: dict, tokenizer, piece_map: PieceMap, block_size: int) -> None:
        ids, labels = generation_example(tokenizer, record, block_size)
        item = attach_signal(
            ids, labels, record, piece_map, self.stats, align=_text_aligner(tokenizer)
        )
        n, k = item["teacher_ids"].shape
        self.rec["n"].append(n)
        self.rec["k"].append(k)
        self.ids.append(item["input_ids"].to(torch.int32))
        self.labels.append(item["labels"].to(torch.int32))
        self.sig_ids.append(item["teacher_ids"].reshape(-1).to(torch.int32))
        self.sig_lp.append(item["teacher_logprobs"].reshape(-1))
        self.sig_tail.append(item["teacher_log_tail"])
        tokens = record.get("teacher_tokens") or []
        tops = record.get("teacher_top_logprobs") or []
        self.rec["n_teacher"].append(len(tokens))
        offset = 0
        for j, tok in enumerate(tokens):
            self.t_tokens.append(tok)
            self.t_offsets.append(offset)
            offset += len(tok)
            top = tops[j] if j < len(tops) and isinstance(tops[j], list) else []
            self.t_n_top.append(len(top))
            for piece, lp in top:
                self.t_top_piece.append(self.pieces.setdefault(str(piece), len(self.pieces)))
                self.t_top_lp.append(_finite(lp))

    def serialize(self, shard: int) -> bytes:
        t_bytes, t_nbytes = _utf8(self.t_tokens)
        p_bytes, p_nbytes = _utf8(list(self.pieces))
        tensors = {
            "rec_n": torch.tensor(self.rec["n"], dtype=torch.int64),
            "rec_k": torch.tensor(self.rec["k"], dtype=torch.int64),
            "rec_n_teacher": torch.tensor(self.rec["n_teacher"], dtype=torch.int64),
            "input_ids": torch.cat(self.ids),
            "labels": torch.cat(self.labels),
            "sig_ids": torch.cat(self.sig_ids),
            "sig_logprobs": torch.cat(self.sig_lp).to(torch.float32),
            "sig_tail": torch.cat(self.sig_tail).to(torch.float32),
            "t_token_bytes": t_bytes,
            "t_token_nbytes": t_nbytes,
            "t_char_offsets": _tensor(self.t_offsets, torch.int64),
            "t_n_top": _tensor(self.t_n_top, torch.int32),
            "t_top_piece": _tensor(self.t_top_piece, torch.int32),
            "t_top_logprob": _tensor(self.t_top_lp, torch.float32),
            "piece_bytes": p_bytes,
            "piece_nbytes": p_nbytes,
        }
        return serialize_safetensors(tensors, {"shard": str(shard), "format": FORMAT})


def load_manifest(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise StoreError(f"{path}: not a readable recorded-store manifest ({exc})") from None


def build_recorded_store(
    dest: str | Path,
    records: Iterable[dict],
    *,
    tokenizer,
    block_size: int,
    identity: dict,
    shard_records: int = SHARD_RECORDS,
    progress: Callable[[int], None] | None = None,
) -> dict:
    """Write (or finish) the store of ``records`` (the training records, in order) at
    ``dest``; returns its manifest. ``identity``: what defines the content (source file,
    tokenizer, block size, split); a store made with another identity is refused."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    mpath = dest / MANIFEST
    identity = {"format": FORMAT, "block_size": block_size, **identity}
    manifest = load_manifest(mpath)
    if manifest is not None and manifest["identity"] != identity:
        changed = sorted(
            k for k in identity.keys() | manifest["identity"].keys()
            if identity.get(k) != manifest["identity"].get(k)
        )  # fmt: skip
        raise StoreError(
            f"{dest} holds recorded log-probs made with different {', '.join(changed)}; "
            "use another output_dir or pass --fresh"
        )
    if manifest is None or manifest.get("shard_records") != shard_records:
        manifest = {"identity": identity, "shard_records": shard_records, "shards": {}}
    manifest["complete"] = False
    atomic_write_bytes(mpath, json.dumps(manifest, indent=2, sort_keys=True).encode())
    state = {"piece_map": None}

    def valid(shard: int) -> bool:
        entry = manifest["shards"].get(str(shard))
        path = dest / shard_file(shard)
        return bool(entry) and path.is_file() and sha256_file(path) == entry["sha256"]

    def finish(shard: int, builder: _ShardBuilder | None, count: int) -> None:
        if builder is None:  # kept from an earlier run: its records were only counted
            if count != manifest["shards"][str(shard)]["n_records"]:
                raise StoreError(
                    f"{dest / shard_file(shard)} holds a different number of records than the "
                    "source gives now; use another output_dir or pass --fresh"
                )
        else:
            data = builder.serialize(shard)
            path = dest / shard_file(shard)
            atomic_write_bytes(path, data)
            stats = asdict(builder.stats)
            stats.pop("notes", None)
            manifest["shards"][str(shard)] = {
                "file": path.name,
                "sha256": hashlib.sha256(data).hexdigest(),
                "n_records": count,
                "bytes": len(data),
                "stats": stats,
            }
            atomic_write_bytes(mpath, json.dumps(manifest, indent=2, sort_keys=True).encode())
        if progress:
            progress(count)

    # one record in memory at a time: each is encoded into the open shard as it streams by
    n_records, shard, count, builder = 0, -1, 0, None
    for record in records:
        if n_records % shard_records == 0:
            if shard >= 0:
                finish(shard, builder, count)
            shard, count = shard + 1, 0
            builder = None if valid(shard) else _ShardBuilder()
            if builder is not None and state["piece_map"] is None:
                state["piece_map"] = PieceMap(tokenizer)
        if builder is not None:
            builder.add(record, tokenizer, state["piece_map"], block_size)
        n_records += 1
        count += 1
    if shard >= 0:
        finish(shard, builder, count)
    n_shards = shard + 1
    if n_records == 0:
        raise StoreError("no training records to record; add generations to data.source")
    for stale in [k for k in manifest["shards"] if int(k) >= n_shards]:
        manifest["shards"].pop(stale)
    manifest.update(complete=True, n_records=n_records, n_shards=n_shards)
    atomic_write_bytes(mpath, json.dumps(manifest, indent=2, sort_keys=True).encode())
    return manifest
