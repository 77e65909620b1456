"""Shared fixtures: a tiny Llama teacher + tokenizer built offline, and small text data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

TINY_TEXT = [
    "In the beginning God created the heaven and the earth.",
    "And the earth was without form, and void; and darkness was upon the face of the deep.",
    "And God said, Let there be light: and there was light.",
    "And God saw the light, that it was good: and God divided the light from the darkness.",
    "And God called the light Day, and the darkness he called Night.",
    "And the evening and the morning were the first day.",
    "And God said, Let there be a firmament in the midst of the waters.",
    "And God made the firmament, and divided the waters which were under the firmament.",
] * 6


def make_tokenizer(texts: list[str], vocab_size: int = 300):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="</s>",
    )
    fast.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    return fast


def make_sentencepiece_tokenizer(texts: list[str], vocab_size: int = 200, extra=()):
    """A Gemma-style tokenizer: spaces as ``▁``, BPE with byte fallback (``<0xNN>`` pieces
    for anything not in the vocabulary), ``<bos>`` put in front, a Gemma-like chat template.
    ``extra``: whole pieces to add to the vocabulary (hand-worked splits)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
    tok = Tokenizer(models.BPE(byte_fallback=True))
    tok.normalizer = normalizers.Replace(" ", "\u2581")
    tok.pre_tokenizer = pre_tokenizers.Split("\u2581", behavior="merged_with_next")
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials)
    tok.train_from_iterator(texts, trainer)
    spec = json.loads(tok.to_str())
    vocab, merges = spec["model"]["vocab"], spec["model"]["merges"]
    for piece in [f"<0x{b:02X}>" for b in range(256)]:
        vocab.setdefault(piece, len(vocab))
    for word in extra:  # built left to right, one merge per character
        for k in range(2, len(word) + 1):
            left, right = word[: k - 1], word[k - 1]
            vocab.setdefault(left, len(vocab))
            vocab.setdefault(right, len(vocab))
            if word[:k] not in vocab:
                vocab[word[:k]] = len(vocab)
                merges.insert(0, [left, right])
    spec["decoder"] = {
        "type": "Sequence",
        "decoders": [
            {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"},
        ],
    }
    spec["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [
            {"SpecialToken": {"id": "<bos>", "type_id": 0}},
            {"Sequence": {"id": "A", "type_id": 0}},
        ],
        "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {"<bos>": {"id": "<bos>", "ids": [vocab["<bos>"]], "tokens": ["<bos>"]}},
    }
    fast = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(spec)),
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=["<start_of_turn>", "<end_of_turn>"],
    )
    fast.chat_template = (
        "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ m['role'] }}\n"
        "{{ m['content'] }}<end_of_turn>\n{% endfor %}"
    )
    return fast


def make_tiny_lm(
    tokenizer, *, layers: int = 4, hidden: int = 32, seed: int = 0, pad_vocab_to: int | None = None
):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=pad_vocab_to or len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return make_tokenizer(TINY_TEXT)


@pytest.fixture(scope="session")
def tiny_teacher_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    """A saved tiny Llama (4 layers, width 32) with its tokenizer: a local HF folder."""
    folder = tmp_path_factory.mktemp("tiny_teacher")
    model = make_tiny_lm(tiny_tokenizer)
    model.save_pretrained(folder, safe_serialization=True)
    tiny_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_text_file(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("data")
    path = folder / "corpus.txt"
    path.write_text("\n\n".join(TINY_TEXT))
    return path


@pytest.fixture(scope="session")
def tiny_chat_file(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("chat")
    path = folder / "chat.jsonl"
    rows = []
    for i, text in enumerate(TINY_TEXT[:24]):
        words = text.split()
        cut = 2 + i % 5
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": " ".join(words[:cut])},
                    {"role": "assistant", "content": " ".join(words[cut:])},
                ]
            }
        )
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


# the demo config's loss and split as the tests (and their golden files) were made, not the
# demo's tuned ones: no validation share, soft 0.7 / hard 0.3, no extra loss terms
DEMO_AS_TESTED = {
    "data.validation_fraction": 0.0,
    "distill.soft_weight": 0.7,
    "distill.hard_weight": 0.3,
    "distill.terms": "[]",
}


def demo_as_tested() -> list[str]:
    """:data:`DEMO_AS_TESTED` as CLI overrides."""
    return [f"{k}={v}" for k, v in DEMO_AS_TESTED.items()]


def tiny_overrides(teacher_dir: Path, data: Path, out: Path, **extra) -> list[str]:
    """CLI-style overrides for a fast tiny run."""
    base = {
        "output_dir": str(out),
        "teacher.model": str(teacher_dir),
        "student.from_teacher": "{keep_layers: [0, 3]}",
        "data.source": str(data),
        "data.block_size": 16,
        "data.held_out_fraction": 0.2,
        "training.max_steps": 6,
        "training.per_device_batch_size": 4,
        "training.logging_steps": 1,
        "training.save_steps": 3,
        "training.warmup_steps": 0,
        "training.learning_rate": 0.003,
        "training.loss_chunk_size": 8,  # exercise the chunked loss path (64 tokens/batch)
        **DEMO_AS_TESTED,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def read_log(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "kd_log.jsonl").read_text().splitlines()]


def distill_then_resume(teacher_dir: Path, data: Path, tmp_path: Path, extra: dict, kept: int):
    """A tiny demo-config distillation run to the end in ``ref/``, and the same run as if
    killed right after ``checkpoint-<kept>`` (a copy of ``ref`` without the final model, the
    later checkpoints and log lines) resumed in ``run/``. Returns ``(ref, run)``."""
    import shutil

    from kdistill.cli.main import main

    demo = str(Path(__file__).resolve().parents[1] / "src/kdistill/configs/demo.yaml")
    ref, run = tmp_path / "ref", tmp_path / "run"
    assert main(["distill", demo, *tiny_overrides(teacher_dir, data, ref, **extra)]) == 0
    shutil.copytree(ref, run)
    shutil.rmtree(run / "model")
    for ckpt in (run / "checkpoints").glob("checkpoint-*"):
        if int(ckpt.name.split("-")[1]) > kept:
            shutil.rmtree(ckpt)
    log = read_log(ref)
    (run / "kd_log.jsonl").write_text("".join(f"{json.dumps(r)}\n" for r in log[:kept]))
    assert main(["distill", demo, *tiny_overrides(teacher_dir, data, run, **extra)]) == 0
    return ref, run


def same_weights(a: Path, b: Path) -> bool:
    """The two runs' final students are equal, bit for bit."""
    from safetensors.torch import load_file

    wa, wb = (load_file(str(d / "model/model.safetensors")) for d in (a, b))
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wb)


def make_word_tokenizer(texts: list[str]):
    """A tiny word-level tokenizer (V < 100) so tests can keep every id (k = V <= 255)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(special_tokens=["<unk>", "<s>", "</s>"])
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="</s>"
    )


@pytest.fixture(scope="session")
def word_teacher_dir(tmp_path_factory) -> Path:
    tok = make_word_tokenizer(TINY_TEXT)
    folder = tmp_path_factory.mktemp("word_teacher")
    model = make_tiny_lm(tok, seed=3)
    with torch.no_grad():  # peaky (non-uniform) teacher distributions
        model.model.embed_tokens.weight.mul_(40)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """A run with training.num_threads sets torch's global thread count; put it back so that
    no test depends on which tests ran before it."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
