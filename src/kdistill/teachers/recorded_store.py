"""Read a recorded store (written by :mod:`kdistill.teachers.recorded_write`) one record at
a time, and build a recorded teacher's training and held-out examples from generations.

The reader verifies each shard's checksum when it first opens it and reads a record's bytes
with ``os.pread`` (no memory-mapping, so resident memory stays flat however much of the
store is read); per-record offsets are computed once per open shard.
"""

from __future__ import annotations

import json
import os
import struct
from collections import OrderedDict
from itertools import pairwise
from pathlib import Path

import torch

from kdistill.cache.manifest import StoreError, check_shard
from kdistill.data.completions import SignalStats, generation_example
from kdistill.data.examples import BlockDataset
from kdistill.data.holdout import check_fraction, is_held_out
from kdistill.data.records import iter_generation_records
from kdistill.errors import InputError
from kdistill.log import get_logger
from kdistill.models.vocab import tokenizer_fingerprint
from kdistill.teachers.recorded_write import (
    MANIFEST,
    SHARD_RECORDS,
    build_recorded_store,
    load_manifest,
    source_identity,
)

log = get_logger(__name__)

_NP = {"I32": torch.int32, "I64": torch.int64, "F32": torch.float32, "U8": torch.uint8}


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
        self._teacher: _TeacherView | None = None

    def teacher_view(self) -> _TeacherView:
        """Offsets and the piece table of the teacher's view, read once per open shard."""
        if self._teacher is None:
            self._teacher = _TeacherView(self)
        return self._teacher

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


class _TeacherView:
    """Per teacher token of a shard: the start of its UTF-8 bytes (``byte0``) and of its top
    entries (``top0``), one extra end entry each; and the shard's piece table."""

    def __init__(self, s: _Shard):
        zero = torch.zeros(1, dtype=torch.int64)
        self.byte0 = torch.cat([zero, s.read("t_token_nbytes").long().cumsum(0)])
        self.top0 = torch.cat([zero, s.read("t_n_top").long().cumsum(0)])
        raw = bytes(s.read("piece_bytes"))
        ends = [0, *s.read("piece_nbytes").long().cumsum(0).tolist()]
        self.pieces = [raw[a:b].decode("utf-8") for a, b in pairwise(ends)]


class RecordedStore:
    """Random access to a complete recorded store, one record at a time."""

    def __init__(self, path: str | Path, *, max_open_shards: int = 16):
        self.path = Path(path)
        manifest = load_manifest(self.path / MANIFEST)
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
        view = s.teacher_view()
        lo, hi = int(s.t0[r]), int(s.t0[r + 1])
        b_lo, b_hi = int(view.byte0[lo]), int(view.byte0[hi])
        p_lo, p_hi = int(view.top0[lo]), int(view.top0[hi])
        raw = bytes(s.read("t_token_bytes", b_lo, b_hi))
        pieces = s.read("t_top_piece", p_lo, p_hi).tolist()
        lps = s.read("t_top_logprob", p_lo, p_hi).tolist()
        offsets = s.read("t_char_offsets", lo, hi).tolist()
        out = []
        for t in range(lo, hi):
            a, b = int(view.byte0[t]) - b_lo, int(view.byte0[t + 1]) - b_lo
            tops = range(int(view.top0[t]) - p_lo, int(view.top0[t + 1]) - p_lo)
            out.append(
                {
                    "text": raw[a:b].decode("utf-8"),
                    "offset": offsets[t - lo],
                    "top": [(view.pieces[pieces[m]], lps[m]) for m in tops],
                }
            )
        return out


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
