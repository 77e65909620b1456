"""Cross-tokenizer distillation with tiny models: a Gemma-style (SentencePiece, byte fallback)
teacher and a byte-level BPE student that share no vocabulary."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from kdistill.losses.objective import kd_loss
from kdistill.models.vocab import map_vocab, token_bytes
from kdistill.teachers.aligned import AlignedTeacher
from kdistill.teachers.alignment import TextAligner
from kdistill.teachers.base import Want
from kdistill.teachers.model import ModelTeacher
from tests.conftest import (
    TINY_TEXT,
    demo_as_tested,
    make_sentencepiece_tokenizer,
    make_tiny_lm,
    make_tokenizer,
    tiny_overrides,
)

REPO = Path(__file__).resolve().parents[2]
DEMO = str(REPO / "src/kdistill/configs/demo.yaml")
TEXT = "In the beginning God created 😀 the heaven and the earth. Amen."


@pytest.fixture(scope="module")
def pair():
    """(student tokenizer, teacher tokenizer, teacher model): different vocabularies."""
    s_tok = make_tokenizer(TINY_TEXT, vocab_size=300)
    t_tok = make_sentencepiece_tokenizer(TINY_TEXT, vocab_size=120)
    teacher = make_tiny_lm(t_tok, seed=5)
    with torch.no_grad():
        teacher.model.embed_tokens.weight.mul_(20)  # peaky distributions
    return s_tok, t_tok, teacher.eval()


@pytest.fixture(scope="module")
def sp_teacher_dir(tmp_path_factory, pair) -> Path:
    _, t_tok, teacher = pair
    folder = tmp_path_factory.mktemp("sp_teacher")
    teacher.save_pretrained(folder, safe_serialization=True)
    t_tok.save_pretrained(folder)
    return folder


def test_token_bytes_read_both_tokenizers_markers(pair):
    s_tok, t_tok, _ = pair
    s_bytes, t_bytes = token_bytes(s_tok), token_bytes(t_tok)
    for tok, table in ((s_tok, s_bytes), (t_tok, t_bytes)):
        ids = tok(TEXT, add_special_tokens=False)["input_ids"]
        assert b"".join(table[i] for i in ids) == TEXT.encode()
    assert t_bytes[t_tok.convert_tokens_to_ids("<0xF0>")] == b"\xf0"
    assert t_bytes[t_tok.convert_tokens_to_ids("\u2581the")] == b" the"
    assert s_bytes[s_tok.convert_tokens_to_ids("Ġthe")] == b" the"
    assert s_bytes[s_tok.eos_token_id] == t_bytes[t_tok.eos_token_id]


def test_aligned_pairs_read_the_same_text_on_both_sides(pair):
    s_tok, t_tok, _ = pair
    ids = s_tok(TEXT, add_special_tokens=False)["input_ids"]
    ids = ids + [s_tok.eos_token_id] + s_tok("And God said", add_special_tokens=False)["input_ids"]
    row = TextAligner(s_tok, t_tok).align(ids)
    assert row.teacher_ids[0] == t_tok.bos_token_id
    s_b, t_b = token_bytes(s_tok), token_bytes(t_tok)
    for i, j in row.pairs:  # an independent check: the same bytes read so far
        assert b"".join(s_b[x] for x in ids[: i + 1]) == b"".join(
            t_b[x] for x in row.teacher_ids[1 : j + 1]
        )
    # every place both tokenizations end at the same byte is found (teacher BOS aside)
    s_ends = {len(b"".join(s_b[x] for x in ids[: i + 1])) for i in range(len(ids))}
    t_ends = {
        len(b"".join(t_b[x] for x in row.teacher_ids[1 : j + 1]))
        for j in range(len(row.teacher_ids))
    }
    assert len(row.pairs) == len((s_ends & t_ends) - {0})
    assert len(row.pairs) < len(ids)  # the vocabularies do split words differently


def test_aligned_teacher_targets_are_the_teachers_own_mapped_distribution(pair):
    s_tok, t_tok, teacher = pair
    ids = torch.tensor([s_tok(TEXT, add_special_tokens=False)["input_ids"]])
    aligned = AlignedTeacher(teacher, t_tok, s_tok, objective="mapped", vocab_size=len(s_tok))
    temp = 2.0
    sig = aligned.signal({"input_ids": ids}, want=Want("logits", kd_temperature=temp))
    row = TextAligner(s_tok, t_tok).align(ids[0].tolist())
    with torch.no_grad():  # the teacher on its own tokenisation, mapped by a plain loop
        t_logp = torch.log_softmax(teacher(torch.tensor([row.teacher_ids])).logits[0] / temp, -1)
    t2s = map_vocab(t_tok, s_tok)
    kept = sig.sparse.ids[0, 0].tolist()
    checked = 0
    for i, j in row.pairs:
        if i == ids.shape[1] - 1:
            assert not bool(sig.valid[0, i])  # the last position predicts past the row
            continue
        want = [0.0] * (len(kept) + 1)
        for t_id, p in enumerate(t_logp[j].exp().tolist()):
            s_id = t2s[t_id]
            want[kept.index(s_id) if s_id >= 0 else -1] += p
        tail = math.exp(float(sig.sparse.log_tail[0, i]))
        got = [*sig.sparse.logprobs[0, i].exp().tolist(), tail]
        assert got == pytest.approx(want, abs=2e-6)
        assert bool(sig.valid[0, i])
        checked += 1
    assert checked >= 5 and int(sig.valid.sum()) == checked
    summary = aligned.summary()
    assert summary["aligned_positions"] == checked
    assert 0 < summary["mapped_share"] <= 1.0


@pytest.mark.parametrize("objective", ["mapped", "uld"])
def test_hidden_form_gives_the_same_loss_as_the_logits_form(pair, objective):
    from kdistill.losses.chunked import chunked_kd_loss

    s_tok, t_tok, teacher = pair
    texts = [TEXT, "And God saw the light, that it was good."]
    enc = s_tok(texts, add_special_tokens=False, padding=True, return_tensors="pt")
    batch = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    aligned = AlignedTeacher(teacher, t_tok, s_tok, objective=objective, vocab_size=len(s_tok))
    student = make_tiny_lm(s_tok, seed=9)
    out = student(**batch, output_hidden_states=True)
    labels = torch.where(enc["attention_mask"].bool(), enc["input_ids"], -100)
    labels = torch.cat([labels[:, 1:], torch.full((2, 1), -100)], 1)
    args = dict(kd_temperature=1.5, soft_weight=0.7, hard_weight=0.3)
    logit_sig = aligned.signal(batch, want=Want("logits", kd_temperature=1.5))
    target = logit_sig.sparse if objective == "mapped" else logit_sig.sorted
    from kdistill.losses.objective import combine, kd_sums

    sums = kd_sums(out.logits, target, labels, kd_temperature=1.5, soft_mask=logit_sig.valid)
    full = combine(sums, soft_weight=0.7, hard_weight=0.3, kd_temperature=1.5)
    hid_sig = aligned.signal(batch, want=Want("hidden", kd_temperature=1.5))
    h = out.hidden_states[-1]
    chunked, _ = chunked_kd_loss(
        h.reshape(-1, h.shape[-1]),
        student.get_output_embeddings().weight,
        hid_sig.cross,
        labels.reshape(-1),
        chunk_size=7,
        soft_mask=hid_sig.valid.reshape(-1),
        **args,
    )
    assert float(chunked.detach()) == pytest.approx(float(full.detach()), rel=1e-5)
    # the hard term stays on every student token, aligned or not
    hard_only = kd_sums(
        out.logits, target, labels, kd_temperature=1.5, soft_mask=torch.zeros_like(logit_sig.valid)
    )
    assert float(hard_only.soft_sum.detach()) == 0.0
    assert int(hard_only.count) == int((labels != -100).sum()) > int(logit_sig.valid.sum())


def test_identical_tokenizers_give_exactly_the_online_loss(pair):
    s_tok, _, _ = pair
    teacher = make_tiny_lm(s_tok, seed=2).eval()
    ids = torch.tensor(
        [s_tok("And God said, Let there be light", add_special_tokens=False)["input_ids"]]
    )
    student_logits = make_tiny_lm(s_tok, seed=4)(ids).logits.detach()
    labels = torch.cat([ids[:, 1:], torch.tensor([[-100]])], 1)
    args = dict(kd_temperature=2.0, soft_weight=0.7, hard_weight=0.3)
    aligned = AlignedTeacher(teacher, s_tok, s_tok, objective="mapped", vocab_size=len(s_tok))
    sig = aligned.signal({"input_ids": ids}, want=Want("logits", kd_temperature=2.0))
    assert bool(sig.valid[0, :-1].all())  # every position aligns with itself
    online = ModelTeacher(teacher).signal({"input_ids": ids}, want=Want("logits")).logits
    got = kd_loss(student_logits, sig.sparse, labels, **args)
    want = kd_loss(student_logits, online, labels, **args)
    assert float(got) == pytest.approx(float(want), rel=1e-6)


@pytest.mark.parametrize(("objective", "chunk"), [("mapped", 8), ("uld", 8), ("mapped", "null")])
def test_distill_across_tokenizers_runs_and_reports_the_alignment(
    sp_teacher_dir, tiny_teacher_dir, tiny_text_file, tmp_path, objective, chunk
):
    from kdistill.cli.main import main

    out = tmp_path / "run"
    over = tiny_overrides(
        sp_teacher_dir,
        tiny_text_file,
        out,
        **{
            "teacher.kind": "aligned",
            "teacher.objective": objective,
            "student.from_teacher": f"{{model: {tiny_teacher_dir}, keep_layers: [0, 3]}}",
            "training.max_steps": 2,
            "training.loss_chunk_size": chunk,
        },
    )
    assert main(["distill", DEMO, *over]) == 0
    summary = json.loads((out / "train_summary.json").read_text())
    sig = summary["teacher_signal"]
    assert sig["objective"] == objective
    assert 0 < sig["aligned_share"] < 1
    if objective == "mapped":
        assert 0 < sig["mapped_share"] <= 1
    log = [json.loads(x) for x in (out / "kd_log.jsonl").read_text().splitlines()]
    soft = [r["soft_loss"] for r in log if "soft_loss" in r]
    assert soft and all(math.isfinite(x) and x > 0 for x in soft)


@pytest.mark.parametrize("kind", ["aligned", "none"])
def test_a_student_with_its_own_small_tokenizer_trained_on_the_training_split_only(
    sp_teacher_dir, tiny_teacher_dir, tmp_path, kind
):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kdistill.cli.main import main
    from kdistill.data.holdout import split_held_out
    from kdistill.data.records import load_records

    marker = "zorblaxquuxwimble"
    docs = list(TINY_TEXT)
    held = split_held_out(list(range(len(docs))), 0.2)[1]
    assert held, "the split holds some records out"
    docs[held[0]] = " ".join([marker] * 60)  # a word only the held-out split contains
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(docs))
    train, held_recs = split_held_out(load_records(str(corpus)), 0.2)
    assert any(marker in r for r in held_recs) and not any(marker in r for r in train)
    out = tmp_path / "run"
    over = tiny_overrides(
        sp_teacher_dir,
        corpus,
        out,
        **{
            "teacher.kind": kind,  # none: the same student without a teacher (the baseline)
            "student.from_teacher": f"{{model: {tiny_teacher_dir}, keep_layers: [0, 3], "
            "tokenizer_vocab: 320}",
            "training.max_steps": 1,
        },
    )
    assert main(["distill", DEMO, *over]) == 0
    tok = AutoTokenizer.from_pretrained(out / "model")
    model = AutoModelForCausalLM.from_pretrained(out / "model")
    assert len(tok) == 320 == model.get_input_embeddings().weight.shape[0]
    assert model.config.kdistill_vocab["rows_copied"] > 0
    # frequent training words became tokens; the held-out word was never seen
    assert len(tok(" God", add_special_tokens=False)["input_ids"]) == 1
    assert len(tok(" " + marker, add_special_tokens=False)["input_ids"]) >= 6
    assert tok.eos_token == "</s>" and tok.eos_token_id is not None


def test_chats_aligned_inside_the_contents_under_each_models_own_template(pair):
    from kdistill.teachers.alignment import align_chat

    s_tok, t_tok, _ = pair
    messages = [
        {"role": "user", "content": "Let there be light"},
        {"role": "assistant", "content": "And there was light 😀"},
    ]
    s_ids, t_ids, pairs = align_chat(messages, s_tok, t_tok)
    # each side rendered its own template: <|im_start|>... vs <bos><start_of_turn>...
    assert s_tok.convert_ids_to_tokens(s_ids[:1]) == ["<|im_start|>"]
    assert t_tok.convert_ids_to_tokens(t_ids[:2]) == ["<bos>", "<start_of_turn>"]
    s_text = s_tok.apply_chat_template(messages, tokenize=False)
    t_text = t_tok.apply_chat_template(messages, tokenize=False)
    s_off = s_tok(s_text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    t_off = t_tok(t_text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    by_message = {0: [], 1: []}
    for i, j in pairs:
        s_end, t_end = s_off[i][1], t_off[j][1]
        # the same message, read from its start to the same character on both sides
        for m, msg in enumerate(messages):
            s_lo, t_lo = s_text.index(msg["content"]), t_text.index(msg["content"])
            if s_lo < s_end <= s_lo + len(msg["content"]):
                assert t_lo < t_end <= t_lo + len(msg["content"])
                assert s_text[s_lo:s_end] == t_text[t_lo:t_end]
                by_message[m].append(s_text[s_lo:s_end])
    # hand-worked: student L|e|t|Ġthe|re|Ġbe|Ġlight vs teacher Le|t|▁there|▁be|▁light end
    # together after "Le", "Let", "Let there", "Let there be", "Let there be light"; then
    # "And", "And there", "... was", "... light", "... light " and the emoji's last byte
    assert by_message[0] == ["Le", "Let", "Let there", "Let there be", "Let there be light"]
    assert by_message[1] == [
        "And",
        "And there",
        "And there was",
        "And there was light",
        "And there was light ",
        "And there was light 😀",
    ]
    # plus each content's start: the last template token before it on both sides ("\n")
    starts = [(i, j) for i, j in pairs if s_text[s_off[i][1] - 1] == "\n"]
    assert len(starts) == 2 and len(pairs) == 11 + 2


@pytest.mark.parametrize("kind", ["none", "aligned", "recorded"])
def test_generations_of_one_tokenizer_train_a_student_of_another(
    sp_teacher_dir, tiny_teacher_dir, tmp_path, kind
):
    """Sequence-level KD across tokenizers: the Gemma-style teacher writes text, a byte-level
    student is fine-tuned on it (kind none: SFT; aligned: SFT plus the token-level targets of
    the teacher model; recorded: plus the teacher's recorded top log-probs, aligned by text
    and mapped by string)."""
    from kdistill.cli.main import main
    from kdistill.data.lm import build_lm_datasets

    prompts = tmp_path / "p.jsonl"
    lines = ["And God said", "In the beginning", "And the earth", "Let there be"]
    prompts.write_text(
        "".join(json.dumps({"messages": [{"role": "user", "content": t}]}) + "\n" for t in lines)
    )
    gen = tmp_path / "gen"
    args = [f"teacher.model={sp_teacher_dir}", f"generate.prompts={prompts}"]
    args += [f"generate.output_dir={gen}", "generate.n=2", "generate.max_tokens=8"]
    args += ["generate.top_logprobs=5", "generate.sampling_temperature=1.0"]
    assert main(["generate", DEMO, *args]) == 0
    kept = [json.loads(x) for x in (gen / "kept.jsonl").read_text().splitlines()]
    assert kept and all(r["messages"][-1]["role"] == "assistant" for r in kept)
    run = tmp_path / "sft"
    train = [
        f"output_dir={run}",
        f"teacher.kind={kind}",
        f"teacher.model={sp_teacher_dir}",
        f"student.from_teacher={{model: {tiny_teacher_dir}, keep_layers: [0, 3]}}",
        f"data.source={gen / 'kept.jsonl'}",
        "data.block_size=64",
        "data.held_out_fraction=0.2",
        "training.max_steps=2",
        "training.per_device_batch_size=2",
        "training.save_steps=10",
        *demo_as_tested(),
    ]
    assert main(["distill", DEMO, *train]) == 0
    assert (run / "model" / "model.safetensors").is_file()
    if kind == "recorded":  # different tokenizations, aligned by text instead of dropped
        manifest = json.loads((run / "teacher_signal" / "manifest.json").read_text())
        stats = [shard["stats"] for shard in manifest["shards"].values()]
        assert sum(st["records_aligned"] for st in stats) >= 1
        assert sum(st["positions_with_signal"] for st in stats) > len(kept)
    # the student learned from the teacher's words, in its own tokens
    s_tok = make_tokenizer(TINY_TEXT, vocab_size=300)
    train_ds, held = build_lm_datasets(
        s_tok, str(gen / "kept.jsonl"), block_size=64, held_out_fraction=0.2
    )
    texts = [s_tok.decode(ds[i]["input_ids"]) for ds in (train_ds, held) for i in range(len(ds))]
    for r in kept:
        user, answer = r["messages"][0]["content"], r["messages"][-1]["content"]
        assert any(f"{user}<|im_end|>" in t and f"assistant\n{answer}" in t for t in texts)


def test_a_store_from_a_teacher_with_another_tokenizer(
    sp_teacher_dir, tiny_teacher_dir, tiny_text_file, tmp_path, capsys
):
    """Alignment at cache time: the store holds the mapped targets over the student's ids;
    unaligned positions keep none and still train on their CE."""
    from kdistill.cache import StoreReader
    from kdistill.cli.main import main
    from kdistill.teachers.store import StoreTeacher

    store = tmp_path / "store"
    base = {
        "teacher.kind": "aligned",
        "student.from_teacher": f"{{model: {tiny_teacher_dir}, keep_layers: [0, 3]}}",
        "cache.dir": str(store),
        "cache.method": "topk",
        "cache.k": 8,
    }
    over = tiny_overrides(sp_teacher_dir, tiny_text_file, tmp_path / "unused", **base)
    assert main(["cache", DEMO, *[o for o in over if not o.startswith("output_dir")]]) == 0
    assert "aligned" in capsys.readouterr().out
    reader = StoreReader(store)
    assert reader.manifest.teacher["kind"] == "aligned"
    lengths = torch.cat([reader.block(i).lengths for i in range(len(reader))])
    assert 0 < int((lengths > 0).sum()) < lengths.numel()  # aligned positions only
    sig = StoreTeacher(reader, len(reader)).signal(
        {
            "input_ids": torch.zeros((2, 16), dtype=torch.long),
            "example_index": torch.tensor([0, 1]),
        },
        want=Want(),
    )
    assert sig.valid_for == "soft" and sig.valid is not None
    # uld cannot be cached (a top-k store drops the sorted tail); one line, nothing written
    bad = tiny_overrides(
        sp_teacher_dir,
        tiny_text_file,
        tmp_path / "u",
        **{**base, "teacher.objective": "uld", "cache.dir": str(tmp_path / "store2")},
    )
    assert main(["cache", DEMO, *[o for o in bad if not o.startswith("output_dir")]]) == 2
    assert "uld" in capsys.readouterr().err and not (tmp_path / "store2").exists()
    run = tmp_path / "run"
    train = tiny_overrides(
        sp_teacher_dir,
        tiny_text_file,
        run,
        **{
            "teacher.kind": "store",
            "teacher.path": str(store),
            "student.from_teacher": f"{{model: {tiny_teacher_dir}, keep_layers: [0, 3]}}",
            "training.max_steps": 2,
        },
    )
    assert main(["distill", DEMO, *train]) == 0
    log = [json.loads(x) for x in (run / "kd_log.jsonl").read_text().splitlines()]
    assert any(r.get("soft_loss", 0) > 0 for r in log)


def test_chat_data_give_each_model_its_own_template(
    sp_teacher_dir, tiny_teacher_dir, tiny_chat_file, tmp_path
):
    from kdistill.cli.main import main

    out = tmp_path / "run"
    over = tiny_overrides(
        sp_teacher_dir,
        tiny_chat_file,
        out,
        **{
            "teacher.kind": "aligned",
            "student.from_teacher": f"{{model: {tiny_teacher_dir}, keep_layers: [0, 3]}}",
            "data.block_size": 48,
            "training.max_steps": 2,
        },
    )
    assert main(["distill", DEMO, *over]) == 0
    sig = json.loads((out / "train_summary.json").read_text())["teacher_signal"]
    assert sig["chat_rows_own_templates"] == 2 * 4  # every row of both steps
    assert 0 < sig["aligned_share"] < 1


def test_a_teacher_without_a_chat_template_aligns_chat_rows_by_their_text(
    sp_teacher_dir, tiny_teacher_dir, tiny_chat_file, tmp_path
):
    """A base model (Gemma 3 270M base has no chat template) still teaches on chat data."""
    from kdistill.cli.main import main

    teacher = tmp_path / "base_teacher"
    shutil.copytree(sp_teacher_dir, teacher)
    (teacher / "chat_template.jinja").unlink(missing_ok=True)
    cfg_file = teacher / "tokenizer_config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg.pop("chat_template", None)
    cfg_file.write_text(json.dumps(cfg))
    out = tmp_path / "run"
    over = tiny_overrides(
        teacher,
        tiny_chat_file,
        out,
        **{
            "teacher.kind": "aligned",
            "student.from_teacher": f"{{model: {tiny_teacher_dir}, keep_layers: [0, 3]}}",
            "data.block_size": 48,
            "training.max_steps": 1,
        },
    )
    assert main(["distill", DEMO, *over]) == 0
    sig = json.loads((out / "train_summary.json").read_text())["teacher_signal"]
    assert sig["chat_rows_own_templates"] == 0 and 0 < sig["aligned_share"] < 1
