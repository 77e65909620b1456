"""Generations as training data: the teacher's per-token top logprobs become sparse targets
aligned with the logits that predict each completion token."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from kdistill.data.completions import (
    PieceMap,
    SignalStats,
    attach_signal,
    generation_datasets,
    prompt_completion_example,
    top_to_sparse,
)
from kdistill.data.generations import Prompt
from kdistill.data.lm import IGNORE_INDEX, CausalCollator, IndexedDataset
from kdistill.losses.objective import kd_sums
from kdistill.teachers.base import Want
from kdistill.teachers.local_gen import LocalGenerator
from kdistill.teachers.recorded import RecordedTeacher
from kdistill.teachers.recorded_store import RecordedExamples, RecordedStore, recorded_datasets
from kdistill.teachers.recorded_write import build_recorded_store
from tests.conftest import TINY_TEXT, make_tiny_lm, make_word_tokenizer

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


class _Pieces:
    def __init__(self, ids: dict[str, int]):
        self.ids = ids

    def get(self, piece):
        return self.ids.get(piece)


def test_top_to_sparse_hand_values():
    pieces = _Pieces({"a": 5, "b": 7})
    stats = SignalStats()
    ids, lps, tail = top_to_sparse(
        [["a", math.log(0.5)], ["b", math.log(0.3)], ["?", math.log(0.1)]], pieces, stats
    )
    assert ids == [5, 7] and lps == pytest.approx([math.log(0.5), math.log(0.3)])
    assert tail == pytest.approx(math.log(0.2))  # the unmapped 0.1 went to the tail
    assert stats.unmapped_top_entries == 1
    ids, lps, tail = top_to_sparse([["a", 0.0]], pieces)
    assert ids == [5] and tail == float("-inf")
    _, lps, _ = top_to_sparse([["a", math.log(0.7)], ["b", math.log(0.4)]], pieces)
    assert sum(math.exp(x) for x in lps) == pytest.approx(1.0)  # rounded above 1: renormalised


def test_piece_map_is_unique_and_round_trips(tiny_tokenizer):
    pieces = PieceMap(tiny_tokenizer)
    ids = tiny_tokenizer(" the earth was", add_special_tokens=False)["input_ids"]
    assert [pieces.get(tiny_tokenizer.decode([i])) for i in ids] == ids
    assert len(set(pieces.ids.values())) == len(pieces.ids)


def _record(tok, prompt: str, completion: str, tops=None) -> dict:
    ids = tok(completion, add_special_tokens=False)["input_ids"]
    tokens = [tok.decode([i]) for i in ids]
    if tops is None:  # the true token at p = 0.6 and one runner-up
        tops = [[[t, math.log(0.6)], ["<unk>", math.log(0.1)]] for t in tokens]
    return {
        "prompt": prompt,
        "completion": completion,
        "finish_reason": "length",
        "teacher_tokens": tokens,
        "teacher_top_logprobs": tops,
    }


def test_attach_signal_rows_predict_the_next_token(tiny_tokenizer):
    tok = tiny_tokenizer
    rec = _record(tok, "And God said,", " Let there be light")
    ids, labels = prompt_completion_example(tok, rec["prompt"], rec["completion"], 64, eos=False)
    stats = SignalStats()
    item = attach_signal(ids, labels, rec, PieceMap(tok), stats)
    first = next(p for p, lab in enumerate(labels) if lab != IGNORE_INDEX)
    n_c = len(rec["teacher_tokens"])
    assert stats.records_with_signal == 1 and stats.positions_with_signal == n_c
    for j in range(n_c):
        row = first + j - 1  # logits at row predict token first + j
        assert int(item["teacher_ids"][row, 0]) == ids[first + j]
        assert float(item["teacher_logprobs"][row, 0]) == pytest.approx(math.log(0.6))
        assert float(item["teacher_log_tail"][row]) == pytest.approx(math.log(0.3))
    # every other row is a one-hot target on its label (0 where masked)
    assert int(item["teacher_ids"][first - 2, 0]) == 0
    assert float(item["teacher_logprobs"][first - 2, 0]) == 0.0
    # tokens the student's tokeniser would not produce: no soft target from the record
    bad = dict(rec, teacher_tokens=["X", *rec["teacher_tokens"][1:]])
    item = attach_signal(ids, labels, bad, PieceMap(tok), stats)
    assert stats.tokenisation_mismatch == 1
    assert bool((item["teacher_logprobs"][:, 0] == 0).all())


def test_full_vocab_logprobs_give_the_online_soft_loss(tmp_path):
    """With the teacher's whole distribution as its 'top logprobs', the soft term from the
    stored signal equals the soft term against the teacher run online: alignment is exact.
    (A word-level vocabulary, so that every id has its own text and none goes to the tail.)"""
    tok = make_word_tokenizer(TINY_TEXT)
    teacher = make_tiny_lm(tok, seed=0)
    student = make_tiny_lm(tok, seed=3)
    gen = LocalGenerator(teacher, tok)
    params = {"sampling_temperature": 0.0, "max_tokens": 8, "top_logprobs": len(tok)}
    params["mode"] = "completions"
    records = []
    for i, text in enumerate(["And God said,", "In the beginning", "And the earth"]):
        out = gen.generate(Prompt(id=str(i), text=text), 0, params)
        records.append(
            {
                "prompt": text,
                "completion": out["completion"],
                "finish_reason": "length",
                "teacher_tokens": out["tokens"],
                "teacher_top_logprobs": out["top_logprobs"],
            }
        )
    # through the recorded store, as a run reads it (block of 2 records: two shards)
    build_recorded_store(
        tmp_path / "rec", records, tokenizer=tok, block_size=64, identity={}, shard_records=2
    )
    ds = RecordedExamples(RecordedStore(tmp_path / "rec"))
    assert ds.signal_stats.records_with_signal == 3, ds.signal_stats.line()
    assert ds.signal_stats.unmapped_top_entries == 0
    batch = CausalCollator(tok.pad_token_id)([IndexedDataset(ds)[i] for i in range(3)])
    labels = batch["shift_labels"]
    with torch.no_grad():
        s = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        t = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    # what the trainer gets from the recorded teacher for this batch
    sig = RecordedTeacher(ds.store, len(tok)).signal(batch, want=Want()).sparse
    for div in ("forward_kl", "reverse_kl", "jsd"):
        stored = kd_sums(s, sig, labels, kd_temperature=2.0, divergence=div)
        online = kd_sums(s, t, labels, kd_temperature=2.0, divergence=div)
        assert float(stored.soft_sum) == pytest.approx(float(online.soft_sum), rel=2e-4), div
        assert float(stored.hard_sum) == pytest.approx(float(online.hard_sum), rel=1e-5)


def test_distill_trains_on_api_logprobs_without_a_teacher_model(
    tiny_tokenizer, tiny_teacher_dir, tmp_path
):
    from kdistill.cli.main import main
    from tests.conftest import tiny_overrides

    tok = tiny_tokenizer
    kept = tmp_path / "kept.jsonl"
    texts = ["And God said, Let there be light", "And the earth was without form"] * 10
    rows = [_record(tok, t[:12], t[12:]) for t in texts]
    kept.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = tmp_path / "run"
    argv = ["distill", str(REPO / "src/kdistill/configs/demo.yaml")]
    argv += tiny_overrides(tiny_teacher_dir, kept, run, **{"training.max_steps": 3})
    argv += ["teacher.kind=recorded", "data.block_size=32"]
    assert main(argv) == 0
    log = [json.loads(x) for x in (run / "kd_log.jsonl").read_text().splitlines()]
    assert log and all(r["soft_loss"] > 0 and math.isfinite(r["loss"]) for r in log)
    # the same file without logprobs: a clear error
    plain = tmp_path / "plain.jsonl"
    plain.write_text("".join(json.dumps({"prompt": "a", "completion": "b"}) + "\n" for _ in rows))
    argv2 = [*argv, f"data.source={plain}", f"output_dir={tmp_path / 'r2'}"]
    assert main(argv2) == 2


def test_held_out_generations_use_no_signal(tiny_tokenizer):
    tok = tiny_tokenizer
    rows = [_record(tok, "And God", " said") for _ in range(4)]
    tr, ho = generation_datasets(tok, rows[:3], rows[3:], 32)
    assert "teacher_ids" not in tr[0] and "teacher_ids" not in ho[0]
    batch = CausalCollator(tok.pad_token_id)([tr[0]])
    assert int((batch["shift_labels"] != IGNORE_INDEX).sum()) == len(rows[0]["teacher_tokens"])


def test_text_source_refuses_teacher_logprobs(tiny_tokenizer, tiny_text_file, tmp_path):
    with pytest.raises(ValueError, match="holds no generations"):
        recorded_datasets(
            tiny_tokenizer,
            str(tiny_text_file),
            block_size=16,
            held_out_fraction=0.3,
            seed=0,
            store_dir=tmp_path / "rec",
        )


def test_batched_local_generation_equals_one_at_a_time(tiny_tokenizer):
    """Left padding must not change greedy tokens or log-probs (prompts of unequal length)."""
    teacher = make_tiny_lm(tiny_tokenizer, seed=2)
    gen = LocalGenerator(teacher, tiny_tokenizer)
    texts = ["And", "In the beginning God created", "And the earth was without form, and"]
    pairs = [(Prompt(id=str(i), text=t), 0) for i, t in enumerate(texts)]
    for mode in ("completions", "chat"):
        params = {"sampling_temperature": 0, "max_tokens": 10, "top_logprobs": 3, "mode": mode}
        batched = gen.generate_batch(pairs, params)
        single = [gen.generate(p, s, params) for p, s in pairs]
        for b, s in zip(batched, single, strict=True):
            assert b["tokens"] == s["tokens"] and b["finish_reason"] == s["finish_reason"]
            assert b["logprob"] == pytest.approx(s["logprob"], abs=1e-4)
            assert b["usage"] == s["usage"]
            assert [t for t, _ in b["top_logprobs"][0]] == [t for t, _ in s["top_logprobs"][0]]


def test_batched_generation_ends_each_row_at_its_own_eos(tiny_tokenizer):
    """A row that stops early is padded by generate; its record ends at its first EOS."""
    tok = tiny_tokenizer
    teacher = make_tiny_lm(tok, seed=2)
    eos = tok.eos_token_id
    god = tok(" God", add_special_tokens=False)["input_ids"][-1]
    seen = {}

    def remember_ids(module, args, kwargs):
        seen["ids"] = kwargs.get("input_ids", args[0] if args else None)

    def eos_after_god(module, inputs, out):  # the model says EOS right after " God"
        out = out.clone()
        last = seen["ids"][:, -out.shape[1] :]  # the positions whose logits were computed
        out[..., eos] += 100.0 * (last == god).to(out.dtype)
        return out

    teacher.register_forward_pre_hook(remember_ids, with_kwargs=True)
    teacher.lm_head.register_forward_hook(eos_after_god)
    gen = LocalGenerator(teacher, tok)
    pairs = [(Prompt(id="a", text="In the beginning God"), 0), (Prompt(id="b", text="And"), 0)]
    params = {"sampling_temperature": 0, "max_tokens": 6, "mode": "completions"}
    single = [gen.generate(p, s, params) for p, s in pairs]
    assert single[0]["finish_reason"] == "stop" and single[0]["usage"]["completion_tokens"] == 1
    assert single[1]["usage"]["completion_tokens"] == 6, "the other row must run to the limit"
    batched = gen.generate_batch(pairs, params)
    assert [r["tokens"] for r in batched] == [r["tokens"] for r in single]
    assert [r["finish_reason"] for r in batched] == ["stop", single[1]["finish_reason"]]
    assert [r["usage"] for r in batched] == [r["usage"] for r in single]
    assert batched[0]["logprob"] == pytest.approx(single[0]["logprob"], abs=1e-4)
