"""Recorded teacher log-probs on disk: generations with their per-token top log-probs, written
once into shards and read back one example at a time, so memory does not grow with the
number of records (a million API generations train like a thousand).

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
matches its checksum; a different identity is refused. The reader verifies each shard's
checksum when it first opens it and reads a record's bytes with ``os.pread`` (no
memory-mapping, so resident memory stays flat however much of the store is read).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from array import array
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import asdict
from pathlib import Path

import torch

from kdistill.cache.manifest import StoreError, check_shard, sha256_file
from kdistill.cache.writer import serialize_safetensors
from kdistill.data.completions import PieceMap, SignalStats, attach_signal, generation_example
from kdistill.data.examples import BlockDataset
from kdistill.data.lm import check_fraction, is_held_out, iter_generation_records
from kdistill.errors import InputError
from kdistill.files import atomic_write_bytes
from kdistill.log import get_logger
from kdistill.models.vocab import tokenizer_fingerprint

log = get_logger(__name__)

FORMAT = "kdistill-recorded/1"
SHARD_RECORDS = 1024
MANIFEST = "manifest.json"
_NP = {"I32": torch.int32, "I64": torch.int64, "F32": torch.float32, "U8": torch.uint8}


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
        item = attach_signal(ids, labels, record, piece_map, self.stats)
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


def _load_manifest(path: Path) -> dict | None:
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
    manifest = _load_manifest(mpath)
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


class _Shard:
    """One open shard: its header, per-record offsets, and a file descriptor for preads."""

    def __init__(self, path: Path):
        self.fd = os.open(path, os.O_RDONLY)
        (n,) = struct.unpack("<Q", os.pread(self.fd, 8, 0))
        header = json.loads(os.pread(self.fd, n, 8))
        header.pop("__metadata__", None)
        self.base = 8 + n
        self.header = header
        rec_n, rec_k, rec_t = (self.read(name) for name in ("rec_n", "rec_k", "rec_n_teacher"))
        zero = torch.zeros(1, dtype=torch.int64)
        self.tok0 = torch.cat([zero, rec_n.cumsum(0)])  # token offsets per record
        self.sig0 = torch.cat([zero, (rec_n * rec_k).cumsum(0)])
        self.t0 = torch.cat([zero, rec_t.cumsum(0)])
        self.rec_n, self.rec_k = rec_n, rec_k

    def read(self, name: str, lo: int = 0, hi: int | None = None) -> torch.Tensor:
        """Elements ``lo:hi`` of tensor ``name``."""
        meta = self.header[name]
        dtype = _NP[meta["dtype"]]
        size = torch.empty((), dtype=dtype).element_size()
        start, end = meta["data_offsets"]
        hi = (end - start) // size if hi is None else hi
        if hi <= lo:
            return torch.zeros(0, dtype=dtype)
        raw = os.pread(self.fd, (hi - lo) * size, self.base + start + lo * size)
        return torch.frombuffer(bytearray(raw), dtype=dtype)

    def close(self) -> None:
        os.close(self.fd)


class RecordedStore:
    """Random access to a complete recorded store, one record at a time."""

    def __init__(self, path: str | Path, *, max_open_shards: int = 16):
        self.path = Path(path)
        manifest = _load_manifest(self.path / MANIFEST)
        if manifest is None or not manifest.get("complete"):
            raise StoreError(
                f"{self.path}: recorded store is missing or incomplete; re-run to finish it"
            )
        self.manifest = manifest
        self.shard_records = int(manifest["shard_records"])
        self._open: OrderedDict[int, _Shard] = OrderedDict()
        self._verified: set[int] = set()
        self._max_open = max_open_shards

    def __len__(self) -> int:
        return int(self.manifest["n_records"])

    def __del__(self):
        for s in getattr(self, "_open", {}).values():
            s.close()

    def signal_stats(self) -> SignalStats:
        stats = SignalStats()
        for entry in self.manifest["shards"].values():
            for key, value in entry["stats"].items():
                setattr(stats, key, getattr(stats, key) + value)
        return stats

    def _shard(self, index: int) -> tuple[_Shard, int]:
        if not 0 <= index < len(self):
            raise IndexError(f"record {index} out of range (store has {len(self)})")
        shard, within = divmod(index, self.shard_records)
        s = self._open.get(shard)
        if s is None:
            entry = self.manifest["shards"][str(shard)]
            path = self.path / entry["file"]
            if shard not in self._verified:
                check_shard(path, entry["sha256"])
                self._verified.add(shard)
            s = self._open[shard] = _Shard(path)
            if len(self._open) > self._max_open:
                self._open.popitem(last=False)[1].close()
        else:
            self._open.move_to_end(shard)
        return s, within

    def example(self, index: int) -> dict:
        """``{input_ids, labels}`` (int64) of training record ``index``."""
        s, r = self._shard(index)
        lo, hi = int(s.tok0[r]), int(s.tok0[r + 1])
        return {
            "input_ids": s.read("input_ids", lo, hi).long(),
            "labels": s.read("labels", lo, hi).long(),
        }

    def targets(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The sparse target rows of record ``index``: ids ``(n, k)``, log-probs ``(n, k)``,
        log tail ``(n,)`` (row ``p`` targets the logits at position ``p``)."""
        s, r = self._shard(index)
        n, k = int(s.rec_n[r]), int(s.rec_k[r])
        lo, hi = int(s.sig0[r]), int(s.sig0[r + 1])
        t_lo = int(s.tok0[r])
        return (
            s.read("sig_ids", lo, hi).long().reshape(n, k),
            s.read("sig_logprobs", lo, hi).reshape(n, k),
            s.read("sig_tail", t_lo, t_lo + n),
        )

    def teacher_tokens(self, index: int) -> list[dict]:
        """The teacher's own tokens of record ``index``: ``{text, offset, top}``, ``offset``
        the character offset in the completion, ``top`` ``[(piece, log-prob), ...]``."""
        s, r = self._shard(index)
        lo, hi = int(s.t0[r]), int(s.t0[r + 1])
        nbytes = s.read("t_token_nbytes")  # the shard's tokens (small: one int per token)
        byte0 = int(nbytes[:lo].sum())
        raw = bytes(s.read("t_token_bytes", byte0, byte0 + int(nbytes[lo:hi].sum())))
        n_top = s.read("t_n_top")
        top0 = int(n_top[:lo].sum())
        pieces = s.read("t_top_piece", top0, top0 + int(n_top[lo:hi].sum())).tolist()
        lps = s.read("t_top_logprob", top0, top0 + len(pieces)).tolist()
        table = _piece_table(s)
        offsets = s.read("t_char_offsets", lo, hi).tolist()
        out, pos, j = [], 0, 0
        for t in range(hi - lo):
            size, count = int(nbytes[lo + t]), int(n_top[lo + t])
            top = [(table[pieces[j + m]], lps[j + m]) for m in range(count)]
            text = raw[pos : pos + size].decode("utf-8")
            out.append({"text": text, "offset": offsets[t], "top": top})
            pos, j = pos + size, j + count
        return out


def _piece_table(s: _Shard) -> list[str]:
    table = getattr(s, "pieces", None)
    if table is None:
        raw = bytes(s.read("piece_bytes"))
        out, pos = [], 0
        for size in s.read("piece_nbytes").tolist():
            out.append(raw[pos : pos + size].decode("utf-8"))
            pos += size
        table = s.pieces = out
    return table


class RecordedExamples(torch.utils.data.Dataset):
    """The training examples of a recorded store (``input_ids``, ``labels``)."""

    def __init__(self, store: RecordedStore):
        self.store = store
        self.signal_stats = store.signal_stats()

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, i: int) -> dict:
        return self.store.example(i)


STORE_DIR = "teacher_signal"  # the recorded store's folder inside a run folder
_TEACHER_FIELDS = ("teacher_tokens", "teacher_top_logprobs")


def recorded_datasets(
    tokenizer,
    source: str,
    *,
    block_size: int,
    held_out_fraction: float,
    seed: int,
    store_dir: str | Path,
    **_unused,
) -> tuple[RecordedExamples, BlockDataset]:
    """(train, held-out) for a recorded teacher: the training records (with their top
    log-probs) go into the recorded store at ``store_dir`` (built or finished here, one
    shard in memory at a time); the held-out records are kept, without their log-probs."""
    check_fraction(held_out_fraction)
    held: list[dict] = []
    seen = {"with_top": False}

    def train_records():
        for i, r in enumerate(iter_generation_records(source)):
            if is_held_out(i, held_out_fraction, seed):
                held.append({k: v for k, v in r.items() if k not in _TEACHER_FIELDS})
                continue
            seen["with_top"] = seen["with_top"] or bool(r.get("teacher_top_logprobs"))
            yield r

    identity = {
        "source": source_identity(source),
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "held_out_fraction": held_out_fraction,
        "seed": seed,
    }
    done = {"records": 0, "next_log": 0}

    def progress(n: int) -> None:
        done["records"] += n
        if done["records"] >= done["next_log"]:
            log.info(f"recorded teacher log-probs: {done['records']} training records stored")
            done["next_log"] += 50 * SHARD_RECORDS

    build_recorded_store(
        store_dir,
        train_records(),
        tokenizer=tokenizer,
        block_size=block_size,
        identity=identity,
        progress=progress,
    )
    store = RecordedStore(store_dir)
    if not held:
        raise InputError(
            f"held-out split of {len(store)} records at fraction {held_out_fraction} left it "
            "empty; add data or raise data.held_out_fraction"
        )
    if store.signal_stats().records_with_signal == 0 and not seen["with_top"]:
        raise InputError(
            "teacher.kind=recorded: these generations hold no per-token top logprobs; "
            "re-run kdistill generate with generate.top_logprobs > 0"
        )
    return RecordedExamples(store), BlockDataset(
        [generation_example(tokenizer, r, block_size) for r in held]
    )
