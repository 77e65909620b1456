"""A served teacher that scores text: both server layouts (vLLM's prompt_logprobs, and
llama-cpp-python's echo whose entry i is the distribution at position i) give the dense
teacher's own top-k at every position; a reply recorded from the real llama-cpp-python
server is mapped with the same offset; a server that scores generated tokens only is
refused in one line; text the server tokenises differently loses its targets from there
on; and an on-policy run learns from a served teacher that never enters its process."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from kdistill.cli.main import main
from kdistill.teachers.base import Want
from kdistill.teachers.scorer import ServedScorer, parse_llama_cpp
from kdistill.teachers.served import OpenAICompatibleTeacher, ServedError
from tests.conftest import TINY_TEXT, make_tiny_lm, tiny_overrides
from tests.fakes import FakeScoringServer

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
DEMO = str(REPO / "src/kdistill/configs/demo.yaml")
K = 5


@pytest.fixture(scope="module")
def tiny_model(tiny_tokenizer):
    model = make_tiny_lm(tiny_tokenizer, seed=0)
    with torch.no_grad():
        model.model.norm.weight.mul_(4.0)  # spread the top-k apart
    return model.eval()


def _scorer(server, tok, send="auto"):
    client = OpenAICompatibleTeacher(server.url, "t", mode="completions", max_retries=0)
    return ServedScorer(client, tok, vocab_size=len(tok), top_k=K, send=send)


def _batch(tok, texts):
    rows = [tok(t, add_special_tokens=False)["input_ids"][:12] for t in texts]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tok.pad_token_id)
    mask = torch.zeros_like(ids)
    for r, row in enumerate(rows):  # left padding, as on-policy batches have
        ids[r, width - len(row) :] = torch.tensor(row)
        mask[r, width - len(row) :] = 1
    return {"input_ids": ids, "attention_mask": mask}, rows


@pytest.mark.parametrize("layout", ["vllm", "llama_cpp"])
def test_both_layouts_give_the_teachers_own_top_k_at_each_position(
    layout, tiny_model, tiny_tokenizer
):
    tok = tiny_tokenizer
    server = FakeScoringServer(tiny_model, tok, layout)
    try:
        scorer = _scorer(server, tok)
        batch, rows = _batch(tok, [TINY_TEXT[0], TINY_TEXT[2][:30]])
        sig = scorer.signal(batch, want=Want())
        assert scorer.send == ("ids" if layout == "vllm" else "text")
    finally:
        server.close()
    s = sig.sparse
    checked = 0
    for r, row in enumerate(rows):
        off = batch["input_ids"].shape[1] - len(row)
        with torch.no_grad():
            dense = torch.log_softmax(tiny_model(input_ids=torch.tensor([row])).logits[0], -1)
        # llama.cpp has no distribution for position 0; neither layout scores the last one
        first = 0 if layout == "vllm" else 1
        for p in range(len(row) - 1):
            q = off + p
            assert bool(sig.valid[r, q]) == (p >= first)
            if p < first:
                continue
            kept = s.ids[r, q][s.ids[r, q] >= 0]
            top = set(torch.topk(dense[p], K).indices.tolist())
            if layout == "llama_cpp":  # text keys: an id whose text another id shares is lost
                top = {j for j in top if scorer.pieces.get(tok.decode([j])) == j}
            assert top and top <= set(kept.tolist())  # the top-k (+ the token's own entry)
            lps = s.logprobs[r, q][: len(kept)]
            assert torch.allclose(lps, dense[p, kept], atol=1e-5)
            rest = 1 - float(dense[p, kept].exp().sum())
            assert float(s.log_tail[r, q].exp()) == pytest.approx(rest, abs=1e-5)
            checked += 1
        assert not sig.valid[r, :off].any()  # padding gets no target
    assert checked >= 15


def test_recorded_llama_cpp_reply_is_read_with_its_one_position_offset():
    rec = json.loads((REPO / "tests/golden/llama_cpp_echo_logprobs.json").read_text())
    assert rec["ids_prompt_status"] == 500  # the real server refuses token-id prompts
    pieces = rec["pieces"]

    class Pieces:
        def get(self, piece):
            return pieces.get(piece)

    texts = {i: p for p, i in pieces.items()}
    choice = rec["response"]["choices"][0]
    rows, dropped = parse_llama_cpp(choice, [texts[i] for i in rec["ids"]], Pieces())
    # no distribution before the first token; the last row predicts past the sequence
    assert dropped == 1 and rows[0] is None and rows[-1] is None
    # "In the beginning" -> the row at position 2 predicts " of" (not " God", the token the
    # server lists there, whose token_logprob it read from this same row)
    ids, lps, tail = rows[2]
    best = ids[lps.index(max(lps))]
    assert best == pieces[" of"] and max(lps) == pytest.approx(-0.3543, abs=1e-3)
    # "... God" -> position 3 ranks " created" (the next token) at -2.68
    ids, lps, _ = rows[3]
    assert lps[ids.index(pieces[" created"])] == pytest.approx(-2.680, abs=1e-3)
    assert math.exp(tail) == pytest.approx(1 - sum(math.exp(x) for x in rows[2][1]), abs=1e-6)


def test_a_server_that_scores_generated_tokens_only_is_refused(tiny_model, tiny_tokenizer):
    server = FakeScoringServer(tiny_model, tiny_tokenizer, "short")
    try:
        batch, _ = _batch(tiny_tokenizer, [TINY_TEXT[1]])
        with pytest.raises(ServedError, match="generated tokens only") as err:
            _scorer(server, tiny_tokenizer, send="text").signal(batch, want=Want())
    finally:
        server.close()
    assert "\n" not in str(err.value)


def test_positions_are_matched_by_character_where_the_server_tokenises_otherwise(
    tiny_model, tiny_tokenizer
):
    tok = tiny_tokenizer
    server = FakeScoringServer(tiny_model, tok, "llama_cpp")
    try:
        scorer = _scorer(server, tok, send="text")
        row = tok("And God said", add_special_tokens=False)["input_ids"]
        # spell " God" letter by letter: the same text, a token sequence the server never makes
        split = [tok.convert_tokens_to_ids(c) for c in tok.convert_ids_to_tokens(row[1])]
        ids = torch.tensor([[row[0], *split, *row[2:]]])
        sig = scorer.signal({"input_ids": ids, "attention_mask": torch.ones_like(ids)}, want=Want())
        dropped = scorer.stats.dropped
        full = scorer.signal({"input_ids": torch.tensor([row])}, want=Want())
    finally:
        server.close()
    n, k = ids.shape[1], len(split)
    # inside the letters there is no server position; where " God" ends, the server's
    # distribution after "And God" is the target, as it is for the row tokenised as usual
    want = [False] + [False] * (k - 1) + [True] * (n - k - 1) + [False]
    assert sig.valid[0].tolist() == want
    assert dropped == 1 + (k - 1)  # the first position and the letters before the last
    for a, b in ((k, 1), (k + 1, 2)):
        assert torch.equal(sig.sparse.ids[0, a], full.sparse.ids[0, b])
        assert torch.allclose(sig.sparse.logprobs[0, a], full.sparse.logprobs[0, b])


@pytest.mark.parametrize("estimator", ["exact", "sampled"])
def test_on_policy_run_learns_from_a_served_teacher(
    estimator, tiny_teacher_dir, tiny_text_file, tiny_tokenizer, tmp_path
):
    from kdistill.models.loading import load_causal_lm

    teacher, _ = load_causal_lm(str(tiny_teacher_dir), frozen=True)
    server = FakeScoringServer(teacher, tiny_tokenizer, "llama_cpp")
    extra = {
        "teacher.kind": "served",
        "teacher.base_url": server.url,
        # llama.cpp returns a sampled token's log-prob only inside the top-k: the sampled
        # estimator needs a wide k with a near-uniform tiny teacher
        "teacher.top_k": 8 if estimator == "exact" else 100,
        "distill.on_policy": "{fraction: 1.0, max_new_tokens: 6, prompt_tokens: 4, "
        f"estimator: {estimator}}}",
        "training.max_steps": 2,
        "training.save_steps": 2,
    }
    out = tmp_path / "run"
    try:
        argv = ["distill", DEMO, *tiny_overrides(tiny_teacher_dir, tiny_text_file, out, **extra)]
        assert main(argv) == 0
    finally:
        server.close()
    log = [json.loads(x) for x in (out / "kd_log.jsonl").read_text().splitlines()]
    assert [r["on_policy_share"] for r in log] == [1.0, 1.0]
    # exact: the reverse KL over top-k + tail (> 0); sampled: its one-sample estimate
    assert all(math.isfinite(r["soft_loss"]) and r["soft_loss"] != 0 for r in log)
    assert server.requests >= 2 * 4  # every sampled row was scored by the server
    assert (out / "model" / "model.safetensors").is_file()


def _store_rows(store: Path, block: int):
    from kdistill.cache import StoreReader

    return StoreReader(store).block(block)


def test_kdistill_cache_from_a_served_teacher_matches_the_local_store_and_trains(
    tiny_teacher_dir, tiny_text_file, tmp_path
):
    """`kdistill cache` with teacher.kind=served: the store holds the server's top-k at every
    position it scored, equal to the store the local teacher writes; a re-run skips every
    shard; a sampled store or a re-tempered one is refused; a student trains from it."""
    from kdistill.models.loading import load_causal_lm

    teacher, tok = load_causal_lm(str(tiny_teacher_dir), frozen=True)
    common = {"cache.method": "topk", "cache.k": K, "cache.values": "logprob16"}
    common["cache.shard_blocks"] = 4

    def cache(store, **extra):
        over = tiny_overrides(tiny_teacher_dir, tiny_text_file, tmp_path / "x", **common)
        over += [f"cache.dir={store}", *(f"{k}={v}" for k, v in extra.items())]
        return main(["cache", DEMO, *over])

    local = tmp_path / "local"
    assert cache(local) == 0
    served_store = tmp_path / "served"
    server = FakeScoringServer(teacher, tok, "vllm")
    at = {"teacher.kind": "served", "teacher.base_url": server.url}
    try:
        assert cache(served_store, **at) == 0
        first = server.requests
        assert cache(served_store, **at) == 0  # resumed: every shard already done
        assert server.requests == first
        # refused before any request: the server's top-k cannot give these
        assert cache(tmp_path / "s2", **at, **{"cache.method": "sampled"}) == 2
        assert cache(tmp_path / "s3", **at, **{"cache.cache_temperature": 2.0}) == 2
        assert server.requests == first
    finally:
        server.close()
    assert not (tmp_path / "s2").exists() and not (tmp_path / "s3").exists()
    # llama.cpp has no distribution at position 0: the store keeps none there, and the
    # stored teacher marks it "no target" (not a target of all-tail mass)
    server = FakeScoringServer(teacher, tok, "llama_cpp")
    try:
        assert cache(tmp_path / "lcpp", **{**at, "teacher.base_url": server.url}) == 0
    finally:
        server.close()
    from kdistill.cache import StoreReader
    from kdistill.teachers.base import EXAMPLE_INDEX
    from kdistill.teachers.store import StoreTeacher

    reader = StoreReader(tmp_path / "lcpp")
    blocks = torch.zeros(2, reader.manifest.block_size, dtype=torch.long)
    sig = StoreTeacher(reader, len(reader)).signal(
        {"input_ids": blocks, EXAMPLE_INDEX: torch.tensor([0, 1])}, want=Want()
    )
    assert sig.valid is not None and not sig.valid[:, 0].any() and not sig.valid[:, -1].any()
    assert sig.valid[:, 1:-1].float().mean() > 0.5
    assert torch.isneginf(sig.sparse.log_tail[:, 0]).all()
    checked = 0
    for b in range(3):
        mine, theirs = _store_rows(local, b), _store_rows(served_store, b)
        L = mine.lengths.numel()
        assert int(theirs.lengths[-1]) == 0  # nothing predicts past the block
        assert float(theirs.log_tail[-1]) == float("-inf")
        a0, b0 = 0, 0
        for p in range(L - 1):
            n_m, n_t = int(mine.lengths[p]), int(theirs.lengths[p])
            ids_m, lp_m = mine.ids[a0 : a0 + n_m], mine.logprobs[a0 : a0 + n_m]
            ids_t, lp_t = theirs.ids[b0 : b0 + n_t].tolist(), theirs.logprobs[b0 : b0 + n_t]
            # the server's top-k (+ the token's own entry) holds the local top-k
            assert set(ids_m.tolist()) <= set(ids_t) and n_t <= K + 1
            for j, i in enumerate(ids_m.tolist()):  # fp16 values, renormalised on read
                assert float(lp_t[ids_t.index(i)]) == pytest.approx(float(lp_m[j]), abs=2e-3)
            a0, b0, checked = a0 + n_m, b0 + n_t, checked + 1
    assert checked >= 3 * 15
    out = tmp_path / "student"
    extra = {"teacher.kind": "store", "teacher.path": str(served_store), "training.max_steps": 1}
    argv = ["distill", DEMO, *tiny_overrides(tiny_teacher_dir, tiny_text_file, out, **extra)]
    assert main(argv) == 0
    log = [json.loads(x) for x in (out / "kd_log.jsonl").read_text().splitlines()]
    assert math.isfinite(log[0]["soft_loss"]) and log[0]["soft_loss"] > 0
