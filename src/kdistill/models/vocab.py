"""Teacher/student vocabulary reconciliation.

Same tokenizer, padded embedding matrices (e.g. V_model = 49,280 for a 49,152-token tokenizer):
logits are sliced to the real vocabulary so padded ids never get probability. Different
tokenizers (``teacher.kind: aligned``) meet through the bytes each token adds to the text
(:func:`token_bytes`): byte-level BPE (GPT-2, SmolLM2, Llama 3, Qwen) through its byte
alphabet; SentencePiece (Gemma, Llama 2, Mistral) with ``▁`` read as a space and byte-fallback
pieces ``<0xNN>`` as the byte itself; a document's end (EOS) and start (BOS) as markers no text
can contain (``0xFF`` never occurs in UTF-8); any other special token (chat markers) as
nothing. :func:`map_vocab` matches the two vocabularies by those bytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from functools import lru_cache

from kdistill.errors import InputError


def tokenizer_fingerprint(tokenizer) -> str:
    vocab = tokenizer.get_vocab()
    blob = json.dumps(sorted(vocab.items(), key=lambda kv: kv[1]), ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def shared_vocab_size(
    teacher_tok, student_tok, teacher_logit_dim: int, student_logit_dim: int
) -> int:
    """The number of real token ids both sides share; logits are sliced to this."""
    if tokenizer_fingerprint(teacher_tok) != tokenizer_fingerprint(student_tok):
        raise InputError(
            "teacher and student tokenizers differ: distil across tokenizers with "
            "teacher.kind=aligned, or pick a student from the teacher's family (or build one "
            "with `student.from_teacher`)"
        )
    real = len(teacher_tok)
    if teacher_logit_dim < real or student_logit_dim < real:
        raise InputError(
            f"a model's output dim ({teacher_logit_dim}, {student_logit_dim}) is smaller than "
            f"the tokenizer's {real} ids; the checkpoint does not match its tokenizer"
        )
    return real


EOS_MARK = b"\xff\x01"  # a document's end, in either tokenizer
BOS_MARK = b"\xff\x02"  # a document's start


@lru_cache(maxsize=1)
def _byte_alphabet() -> dict[str, int]:
    """The byte-level BPE alphabet (printable stand-ins for the 256 bytes), inverted."""
    keep = [*range(33, 127), *range(161, 173), *range(174, 256)]
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


def _decoder_kind(tokenizer) -> str:
    """``byte_level`` | ``sentencepiece`` | ``other``, from the fast tokenizer's decoder."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return "other"
    decoder = json.loads(backend.to_str()).get("decoder") or {}
    kinds = {decoder.get("type")} | {d.get("type") for d in decoder.get("decoders") or []}
    if "ByteLevel" in kinds:
        return "byte_level"
    if "ByteFallback" in kinds or "Metaspace" in kinds or "Replace" in kinds:
        return "sentencepiece"
    return "other"


def _piece_bytes(piece: str, kind: str, alphabet: dict[str, int]) -> bytes | None:
    if kind == "byte_level":
        try:
            return bytes(alphabet[c] for c in piece)
        except KeyError:
            return None  # an added token written as plain text
    if kind == "sentencepiece":
        if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            try:
                return bytes([int(piece[3:5], 16)])
            except ValueError:
                pass
        return piece.replace("\u2581", " ").encode("utf-8")
    return None


def token_bytes(tokenizer) -> list[bytes]:
    """The bytes each id adds to the text: ``(len(tokenizer),)`` list; EOS and BOS are
    :data:`EOS_MARK` / :data:`BOS_MARK`, other special tokens ``b""``."""
    cached = getattr(tokenizer, "_kdistill_token_bytes", None)
    if cached is not None:
        return cached
    kind = _decoder_kind(tokenizer)
    alphabet = _byte_alphabet()
    n = len(tokenizer)
    pieces = tokenizer.convert_ids_to_tokens(list(range(n)))
    special = set(tokenizer.all_special_ids)
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    special |= {i for i, t in added.items() if getattr(t, "special", False)}
    out: list[bytes] = []
    for i, piece in enumerate(pieces):
        if i == tokenizer.eos_token_id:
            out.append(EOS_MARK)
        elif i == tokenizer.bos_token_id and i != tokenizer.eos_token_id:
            out.append(BOS_MARK)
        elif i in special or piece is None:
            out.append(b"")
        else:
            raw = _piece_bytes(piece, kind, alphabet)
            out.append(raw if raw is not None else tokenizer.decode([i]).encode("utf-8"))
    with contextlib.suppress(AttributeError):
        tokenizer._kdistill_token_bytes = out
    return out


def _map_keys(tokenizer) -> list[bytes]:
    """What a token is matched by across tokenizers: its bytes; EOS by its role; any other
    special token (BOS, chat markers) by its own string, so identical tokenizers map every
    id onto itself."""
    pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    keys = []
    for raw, piece in zip(token_bytes(tokenizer), pieces, strict=True):
        if raw in (b"", BOS_MARK):
            raw = b"\xff\x03" + (piece or "").encode("utf-8") if piece else b""
        keys.append(raw)
    return keys


def map_vocab(teacher_tokenizer, student_tokenizer) -> list[int]:
    """For each teacher id, the student id with the same bytes (``-1``: none).

    Only the tokenizers' space and byte markers are normalised (:func:`token_bytes`): the
    teacher's ``▁the`` and the student's ``Ġthe`` both read `` the``; EOS maps to EOS and
    other special tokens to the special token of the same string. Where several student
    ids share the bytes, the lowest id is taken; several teacher ids may map to one student
    id (their masses are summed by the loss)."""
    s_index: dict[bytes, int] = {}
    for i, key in enumerate(_map_keys(student_tokenizer)):
        if key:
            s_index.setdefault(key, i)
    return [s_index.get(key, -1) if key else -1 for key in _map_keys(teacher_tokenizer)]
