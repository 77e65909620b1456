"""A student with its own, smaller vocabulary (``student.from_teacher.tokenizer_vocab``).

At SmolLM2's width a 49,152-token embedding is 28 M of 135 M parameters; a domain student
can do with far fewer tokens. :func:`train_tokenizer` trains a byte-level BPE tokenizer with
the ``tokenizers`` library on the training texts only (never the held-out split), keeping the
source tokenizer's special tokens and chat template. :func:`revocab` gives a student new
input embeddings and head for it: a new token with the same bytes as a source token starts
from that token's row; any other starts from the mean of the rows of the source's pieces of
its bytes. The student then learns from its teacher across tokenizers
(``teacher.kind: aligned``) or alone (``teacher.kind: none``).
"""

from __future__ import annotations

import torch

from kdistill.errors import InputError
from kdistill.models.vocab import BOS_MARK, token_bytes


def train_tokenizer(texts: list[str], vocab_size: int, like):
    """A byte-level BPE tokenizer of ``vocab_size`` ids trained on ``texts``, with the
    special tokens (BOS/EOS/PAD and the rest), their roles and the chat template of
    ``like`` (the source model's tokenizer)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if not texts:
        raise InputError("student.from_teacher.tokenizer_vocab: the training split has no text")
    specials = list(dict.fromkeys(t for t in like.all_special_tokens if t))
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet) + len(specials) + 1:
        raise InputError(
            f"student.from_teacher.tokenizer_vocab={vocab_size} is too small: a byte-level "
            f"tokenizer needs at least {len(alphabet) + len(specials) + 1} ids (256 bytes + "
            "special tokens); use e.g. 8192"
        )
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=alphabet,
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    roles = {
        name: getattr(like, name)
        for name in ("bos_token", "eos_token", "pad_token", "unk_token")
        if getattr(like, name, None)
    }
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **roles)
    extra = [t for t in specials if t not in roles.values()]
    if extra:
        fast.add_special_tokens({"additional_special_tokens": extra})
    fast.chat_template = getattr(like, "chat_template", None)
    fast.model_max_length = like.model_max_length
    return fast


def _start_rows(source_tok, new_tok, table: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``(V_new, H)`` starting rows and how many were copied whole: the source's row of the
    same bytes, else the mean of the rows of the source's pieces of those bytes."""
    src_index: dict[bytes, int] = {}
    for i, raw in enumerate(token_bytes(source_tok)):
        if raw:
            src_index.setdefault(raw, i)
    mean = table.mean(0)
    rows = []
    copied = 0
    for raw in token_bytes(new_tok):
        i = src_index.get(raw) if raw else None
        if i is not None and i < table.shape[0]:
            rows.append(table[i])
            copied += 1
            continue
        text = raw.decode("utf-8", errors="ignore") if raw and raw != BOS_MARK else ""
        ids = [
            k for k in source_tok(text, add_special_tokens=False)["input_ids"] if k < table.shape[0]
        ]
        rows.append(table[ids].mean(0) if ids else mean)
    return torch.stack(rows), copied


@torch.no_grad()
def revocab(student, source_tok, new_tok) -> dict:
    """Give ``student`` (built with ``source_tok``) input embeddings and a head for
    ``new_tok``, in place. Returns counts for the run's log and the model's config."""
    emb = student.get_input_embeddings()
    head = student.get_output_embeddings()
    tied = bool(getattr(student.config, "tie_word_embeddings", False))
    before = sum(p.numel() for p in student.parameters())
    rows, copied = _start_rows(source_tok, new_tok, emb.weight.detach().float())
    new_emb = torch.nn.Embedding(rows.shape[0], rows.shape[1], dtype=emb.weight.dtype)
    new_emb.weight.copy_(rows.to(emb.weight.dtype))
    student.set_input_embeddings(new_emb)
    if tied:
        student.get_output_embeddings().weight = new_emb.weight
    else:
        head_rows, _ = _start_rows(source_tok, new_tok, head.weight.detach().float())
        new_head = torch.nn.Linear(
            rows.shape[1], rows.shape[0], bias=False, dtype=head.weight.dtype
        )
        new_head.weight.copy_(head_rows.to(head.weight.dtype))
        student.set_output_embeddings(new_head)
    cfg = student.config
    cfg.vocab_size = len(new_tok)
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        setattr(cfg, name, getattr(new_tok, name, None))
    gen = getattr(student, "generation_config", None)
    if gen is not None:
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            setattr(gen, name, getattr(new_tok, name, None))
    after = sum(p.numel() for p in student.parameters())
    info = {
        "tokenizer_vocab": len(new_tok),
        "rows_copied": copied,
        "rows_from_pieces": len(new_tok) - copied,
        "parameters_before": before,
        "parameters_after": after,
    }
    cfg.kdistill_vocab = info
    return info
