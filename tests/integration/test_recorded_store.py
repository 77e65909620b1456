"""The recorded store: API top log-probs written once into checksummed shards and read back
one record at a time: the same targets as building them in memory, the teacher's own tokens
kept beside them, resume by shard, and a clear error for a changed source or a corrupt shard."""

from __future__ import annotations

import json
import math

import pytest
import torch

from kdistill.cache.manifest import StoreError
from kdistill.data.completions import PieceMap, SignalStats, attach_signal, generation_example
from kdistill.teachers.recorded_store import RecordedStore, recorded_datasets
from kdistill.teachers.recorded_write import build_recorded_store, shard_file

pytestmark = pytest.mark.integration

TEXTS = [
    ("And God said,", " Let there be light"),
    ("In the", " beginning God created the heaven"),
    ("And the earth", " was without form, and void"),
    ("And God", " saw the light, that it was good"),
    ("And the evening", " and the morning were the first day"),
]


def _records(tok) -> list[dict]:
    out = []
    for j, (prompt, completion) in enumerate(TEXTS):
        ids = tok(completion, add_special_tokens=False)["input_ids"]
        tokens = [tok.decode([i]) for i in ids]
        # runner-ups include a piece the tokenizer lacks and an invalid log-prob
        tops = [
            [[t, math.log(0.5 + 0.01 * j)], ["<unk>", math.log(0.1)], ["~~~", None]] for t in tokens
        ]
        rec = {"prompt": prompt, "completion": completion, "finish_reason": "length"}
        if j != 2:  # one record without log-probs: hard targets only
            rec.update(teacher_tokens=tokens, teacher_top_logprobs=tops)
        out.append(rec)
    return out


def _build(tok, dest, records, **kw):
    kw.setdefault("identity", {"source": "test"})
    kw.setdefault("shard_records", 2)
    return build_recorded_store(dest, records, tokenizer=tok, block_size=32, **kw)


def test_store_gives_the_in_memory_targets_bit_for_bit(tiny_tokenizer, tmp_path):
    tok, records = tiny_tokenizer, _records(tiny_tokenizer)
    manifest = _build(tok, tmp_path / "rec", records)
    assert manifest["n_records"] == 5 and manifest["n_shards"] == 3
    store = RecordedStore(tmp_path / "rec", max_open_shards=1)  # forces reopening
    pieces, stats = PieceMap(tok), SignalStats()
    for i in [4, 0, 3, 1, 2, 0]:
        ids, labels = generation_example(tok, records[i], 32)
        want = attach_signal(ids, labels, records[i], pieces, stats)
        got = store.example(i)
        assert torch.equal(got["input_ids"], want["input_ids"])
        assert torch.equal(got["labels"], want["labels"])
        g_ids, g_lp, g_tail = store.targets(i)
        assert torch.equal(g_ids, want["teacher_ids"])
        assert torch.equal(g_lp, want["teacher_logprobs"])  # -inf pads included
        assert torch.equal(g_tail, want["teacher_log_tail"])
    summed = store.signal_stats()
    assert (summed.records, summed.records_with_signal) == (5, 4)
    assert summed.unmapped_top_entries > 0  # '~~~' and the None log-prob went to the tail
    with pytest.raises(IndexError):
        store.example(5)


def test_teacher_tokens_offsets_and_top_pieces_round_trip(tiny_tokenizer, tmp_path):
    tok, records = tiny_tokenizer, _records(tiny_tokenizer)
    _build(tok, tmp_path / "rec", records)
    store = RecordedStore(tmp_path / "rec")
    for i, rec in enumerate(records):
        got = store.teacher_tokens(i)
        tokens = rec.get("teacher_tokens", [])
        assert [t["text"] for t in got] == tokens
        # offsets index the completion: each token's text starts where it says
        for t in got:
            assert rec["completion"][t["offset"] :].startswith(t["text"])
        for t, top in zip(got, rec.get("teacher_top_logprobs", []), strict=True):
            assert [p for p, _ in t["top"]] == [p for p, _ in top]
            for (_, lp), (_, want) in zip(t["top"], top, strict=True):
                if want is None:
                    assert lp == float("-inf")
                else:
                    assert lp == pytest.approx(want, rel=1e-6)


def test_resume_recomputes_only_missing_or_corrupt_shards(tiny_tokenizer, tmp_path):
    tok, records = tiny_tokenizer, _records(tiny_tokenizer)
    dest = tmp_path / "rec"
    _build(tok, dest, records)
    first = {p.name: p.read_bytes() for p in dest.glob("recorded-*")}
    (dest / shard_file(1)).unlink()
    mtime0 = (dest / shard_file(0)).stat().st_mtime_ns
    _build(tok, dest, records)
    again = {p.name: p.read_bytes() for p in dest.glob("recorded-*")}
    assert again == first  # byte-identical rebuild
    assert (dest / shard_file(0)).stat().st_mtime_ns == mtime0  # untouched

    # a shard corrupted after the build: the reader refuses it with the fix
    path = dest / shard_file(2)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    store = RecordedStore(dest)
    store.example(0)
    with pytest.raises(StoreError, match="checksum mismatch"):
        store.example(4)


def test_changed_source_or_unfinished_store_is_refused(tiny_tokenizer, tmp_path):
    tok, records = tiny_tokenizer, _records(tiny_tokenizer)
    dest = tmp_path / "rec"
    _build(tok, dest, records)
    with pytest.raises(StoreError, match="different source"):
        _build(tok, dest, records, identity={"source": "other"})
    manifest = json.loads((dest / "manifest.json").read_text())
    manifest["complete"] = False
    (dest / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match="incomplete"):
        RecordedStore(dest)


def test_recorded_datasets_split_and_rebuild_when_the_source_changes(tiny_tokenizer, tmp_path):
    tok = tiny_tokenizer
    kept = tmp_path / "kept.jsonl"
    rows = _records(tok) * 4
    kept.write_text("".join(json.dumps(r) + "\n" for r in rows))
    kw = {"block_size": 32, "held_out_fraction": 0.25, "seed": 0, "store_dir": tmp_path / "s"}
    train, held = recorded_datasets(tok, str(kept), **kw)
    assert len(train) + len(held) == len(rows) and len(held) > 0
    assert "teacher_ids" not in held[0]
    # the held-out records are not in the store: the store's first record is the first
    # training record
    again, _ = recorded_datasets(tok, str(kept), **kw)  # complete store: reused
    assert torch.equal(again[0]["input_ids"], train[0]["input_ids"])
    kept.write_text("".join(json.dumps(r) + "\n" for r in rows[:-2]))
    with pytest.raises(StoreError, match="different source"):
        recorded_datasets(tok, str(kept), **kw)
