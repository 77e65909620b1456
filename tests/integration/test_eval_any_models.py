"""Evaluation across tokenizers and many models: bits per byte on real tokenizers (a uniform
byte-level model scores exactly 8.0; two tokenizers cover the same bytes), a student with
another tokenizer judged in bits per byte, interleaved raw timings, and a 6-model report."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch

from kdistill.data.lm import CausalCollator, build_lm_datasets
from kdistill.eval.lm_runner import evaluate_lms, score_span
from kdistill.eval.roles import build_setup
from kdistill.report import render_report
from tests.conftest import TINY_TEXT, make_tiny_lm, make_word_tokenizer

pytestmark = pytest.mark.integration
SPAN = "And God said, Let there be light: and there was light. Naïve café, 日本 🙂!"


def _byte_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    vocab["<s>"] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>")


class _Uniform:
    """Uniform over the 256 byte tokens (the start token gets no mass)."""

    def __call__(self, input_ids, logits_to_keep=0):
        logits = torch.zeros(*input_ids.shape, 257)
        logits[..., 256] = float("-inf")
        return SimpleNamespace(logits=logits[:, -logits_to_keep:])


def test_uniform_byte_model_scores_eight_bits_per_byte():
    tok = _byte_tokenizer()
    assert len(tok(SPAN, add_special_tokens=False)["input_ids"]) == len(SPAN.encode())
    for window in (8, 64, 4096):  # sliding windows change nothing for a uniform model
        bits, n_bytes, n_tokens = score_span(_Uniform(), tok, SPAN, window)
        assert n_bytes == len(SPAN.encode()) == n_tokens
        assert bits / n_bytes == pytest.approx(8.0, abs=1e-9)


def test_bits_equal_a_naive_sum_over_full_logits(tiny_tokenizer):
    """score_span runs the head on the scored rows only: the sum matches every window's full
    logits scored naively."""
    from kdistill.eval.bits import window_plan
    from kdistill.eval.lm_runner import _start_id

    text = " ".join(TINY_TEXT[:3])
    model = make_tiny_lm(tiny_tokenizer, seed=0).eval()
    ids = tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
    seq = torch.tensor([_start_id(tiny_tokenizer), *ids])
    for window in (8, 16):
        nats = 0.0
        with torch.no_grad():
            for start, end, first in window_plan(len(ids), window):
                lp = model(input_ids=seq[None, start:end]).logits[0].double().log_softmax(-1)
                for pos in range(first, end):
                    nats -= float(lp[pos - 1 - start, seq[pos]])
        bits, _, n_tokens = score_span(model, tiny_tokenizer, text, window)
        assert n_tokens == len(ids) > 2 * window
        assert bits == pytest.approx(nats / math.log(2.0), rel=1e-6)


def test_two_tokenizers_cover_the_same_span(tiny_tokenizer):
    word = make_word_tokenizer(TINY_TEXT)
    text = TINY_TEXT[2] + " " + TINY_TEXT[3]
    counts = []
    for tok in (tiny_tokenizer, word, _byte_tokenizer()):
        model = make_tiny_lm(tok, seed=0, pad_vocab_to=max(len(tok), 8))
        bits, n_bytes, n_tokens = score_span(model, tok, text, window=8)
        assert math.isfinite(bits) and bits > 0 and n_tokens > 0
        counts.append(n_bytes)
    assert counts == [len(text.encode())] * 3


def test_student_with_another_tokenizer_is_judged_in_bits_per_byte(
    tiny_tokenizer, tiny_text_file, tmp_path
):
    word = make_word_tokenizer(TINY_TEXT)
    _, held = build_lm_datasets(
        tiny_tokenizer, str(tiny_text_file), block_size=16, held_out_fraction=0.3
    )
    models = {
        "teacher": make_tiny_lm(tiny_tokenizer, seed=0),
        "copy": make_tiny_lm(tiny_tokenizer, seed=0),
        "cross": make_tiny_lm(word, seed=1),
    }
    docs = [TINY_TEXT[1], TINY_TEXT[4]]
    res = evaluate_lms(
        models,
        "teacher",
        held,
        CausalCollator(tiny_tokenizer.pad_token_id),
        vocab_size=len(tiny_tokenizer),
        batch_size=2,
        tokenizers={"teacher": tiny_tokenizer, "copy": tiny_tokenizer, "cross": word},
        documents=docs,
        prompts=[d[:30] for d in docs],
        window=8,
        agreement_chars=16,
        speed_budget_s=0.0,  # the minimum: 3 interleaved rounds each
    )
    assert res["cross"].get("perplexity") is None  # not comparable across tokenizers
    assert res["cross"]["same_tokenizer_as_teacher"] is False
    assert res["copy"]["perplexity"] == pytest.approx(res["teacher"]["perplexity"], rel=1e-6)
    n_bytes = sum(len(d.encode()) for d in docs)
    for name in models:
        assert res[name]["bpb_bytes"] == n_bytes  # every model scored the same bytes
        assert res[name]["bits_per_byte"] > 0
        raw = res[name]["speed_raw"]
        assert len(raw["forward_s"]) == len(raw["generate_s"]) == 3
        assert all(s > 0 for s in raw["forward_s"] + raw["generate_s"])
    assert res["copy"]["bits_per_byte"] == pytest.approx(res["teacher"]["bits_per_byte"])
    assert res["copy"]["text_agreement"] == 1.0
    assert 0.0 <= res["cross"]["text_agreement"] <= 1.0

    # the verdict compares the cross-tokenizer student with its baseline in bits per byte
    setup = build_setup(["teacher", "copy", "cross"], baselines={"cross": "copy"})
    from kdistill.eval.derived import derive

    path = tmp_path / "results.json"
    payload = {**res, "derived": derive(res, lm=True, setup=setup), "setup": setup.to_json()}
    path.write_text(json.dumps(payload))
    assert payload["derived"]["pairs"]["cross"]["metric"] == "bits_per_byte"
    _, md_path = render_report([path], tmp_path / "report")
    assert "Student 'cross' keeps" in md_path.read_text()
    assert "(bits per byte " in md_path.read_text()


def _fake(ppl: float, params: float, speed: float) -> dict:
    return {
        "perplexity": ppl,
        "bits_per_byte": math.log2(ppl) / 4,
        "params": params,
        "kl_to_teacher": 0.1,
        "top1_agreement": 0.5,
        "text_agreement": 0.25,
        "forward_tokens_per_s": speed,
        "latency_p50_s": 0.1,
        "latency_p95_s": 0.2,
    }


def test_report_with_six_models_judges_each_pair(tmp_path):
    res = {
        "teacher": _fake(10.0, 100e6, 100.0),
        "kd": _fake(14.0, 50e6, 180.0),
        "onpolicy": _fake(13.0, 50e6, 180.0),
        "pruned": _fake(16.0, 40e6, 200.0),
        "ta": _fake(12.0, 70e6, 140.0),
        "base": _fake(15.0, 50e6, 180.0),
    }
    setup = build_setup(
        list(res), baselines={"kd": "base", "onpolicy": "base"}, roles={"ta": "assistant"}
    )
    path = tmp_path / "results.json"
    path.write_text(json.dumps({**res, "setup": setup.to_json()}))
    html_path, md_path = render_report([path], tmp_path / "report")
    md = md_path.read_text()
    for name, role in setup.roles.items():
        assert f"| {name} | {role} |" in md
    assert "Student 'kd' keeps 71.4%" in md and "Student 'onpolicy' keeps 76.9%" in md
    assert "improved the student by 6.7% over baseline 'base' (perplexity 14.00 vs 15.00)" in md
    assert md.count("keeps") == 2  # one sentence per student; the variant and assistant none
    assert html_path.read_text().count("<tr>") == 7
