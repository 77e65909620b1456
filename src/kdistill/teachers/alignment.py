"""Align the positions of two tokenizers over the same text (cross-tokenizer distillation).

Tokens are read as the bytes they add to the text (:func:`kdistill.models.vocab.token_bytes`)
and positions are aligned by byte offset: where both tokenizers end a token at the same offset
of the same bytes, the next-token distributions after those tokens condition on the same text,
so they correspond (byte offsets equal character offsets at every character boundary; a
multi-byte character split into pieces is matched only where both split it at the same byte).

:class:`TextAligner` does this for a student's token rows: it rebuilds the text, tokenises
it with the teacher's tokenizer (the teacher's BOS in front when it wants one), and returns
the teacher's ids plus the ``(student position, teacher position)`` pairs.
:func:`align_chat` aligns two renderings of the same chat by their own templates, matching
only inside the messages' contents.
"""

from __future__ import annotations

from dataclasses import dataclass

from kdistill.models.vocab import BOS_MARK, EOS_MARK, token_bytes


def align_streams(s_pieces: list[bytes], t_pieces: list[bytes]) -> list[tuple[int, int]]:
    """``(i, j)`` pairs: student token ``i`` and teacher token ``j`` both end at the same byte
    offset of the same bytes, and neither adds nothing (the last token ending there).

    The streams are compared from their start up to the first byte where they differ;
    positions past it are not aligned. A leading BOS on either side only is skipped."""

    def ends(pieces):
        out, at, start = {}, 0, 0
        if pieces and pieces[0] == BOS_MARK:
            start = 1
        for k in range(start, len(pieces)):
            if pieces[k]:
                at += len(pieces[k])
                out[at] = k
        return out

    s_ends, t_ends = ends(s_pieces), ends(t_pieces)
    s_all = b"".join(p for k, p in enumerate(s_pieces) if not (k == 0 and p == BOS_MARK))
    t_all = b"".join(p for k, p in enumerate(t_pieces) if not (k == 0 and p == BOS_MARK))
    same = 0
    limit = min(len(s_all), len(t_all))
    while same < limit and s_all[same] == t_all[same]:
        same += 1
    return [(i, t_ends[e]) for e, i in sorted(s_ends.items()) if e <= same and e in t_ends]


def _segments(stream: bytes) -> list[bytes | str]:
    """Text bytes and role markers, in order (markers as ``"eos"`` / ``"bos"``)."""
    out: list[bytes | str] = []
    buf = bytearray()
    k = 0
    while k < len(stream):
        two = stream[k : k + 2]
        if two in (EOS_MARK, BOS_MARK):
            if buf:
                out.append(bytes(buf))
                buf = bytearray()
            out.append("eos" if two == EOS_MARK else "bos")
            k += 2
        else:
            buf.append(stream[k])
            k += 1
    if buf:
        out.append(bytes(buf))
    return out


@dataclass
class RowAlignment:
    """One row: the teacher's ids and the aligned ``(student pos, teacher pos)`` pairs."""

    teacher_ids: list[int]
    pairs: list[tuple[int, int]]


class TextAligner:
    """Student token rows -> the teacher's tokens of the same text, and aligned positions."""

    def __init__(self, student_tokenizer, teacher_tokenizer, *, teacher_bos: bool | None = None):
        self.s_tok, self.t_tok = student_tokenizer, teacher_tokenizer
        self.s_bytes = token_bytes(student_tokenizer)
        self.t_bytes = token_bytes(teacher_tokenizer)
        if teacher_bos is None:  # does the teacher's tokenizer put a BOS in front by itself?
            probe = teacher_tokenizer("a", add_special_tokens=True)["input_ids"]
            bos = teacher_tokenizer.bos_token_id
            teacher_bos = bool(probe) and bos is not None and probe[0] == bos
        self.teacher_bos = teacher_bos

    def _teacher_ids(self, stream: bytes) -> list[int]:
        bos, eos = self.t_tok.bos_token_id, self.t_tok.eos_token_id
        ids: list[int] = [bos] if self.teacher_bos and bos is not None else []
        for n, seg in enumerate(_segments(stream)):
            if seg == "eos":
                ids.append(eos)
            elif seg == "bos":
                if bos is not None and not (n == 0 and ids):
                    ids.append(bos)
            else:
                text = seg.decode("utf-8", errors="ignore")
                ids.extend(self.t_tok(text, add_special_tokens=False)["input_ids"])
        return ids

    def align(self, student_ids: list[int]) -> RowAlignment:
        """The teacher's ids for the text of ``student_ids`` and the aligned positions."""
        s_pieces = [self.s_bytes[i] if 0 <= i < len(self.s_bytes) else b"" for i in student_ids]
        # a block cut from a stream may begin inside a character: those bytes are not text
        skip = 0
        while skip < len(s_pieces) and s_pieces[skip] and s_pieces[skip][0] & 0xC0 == 0x80:
            skip += 1
        stream = b"".join(s_pieces[skip:])
        t_ids = self._teacher_ids(stream)
        t_pieces = [self.t_bytes[i] if 0 <= i < len(self.t_bytes) else b"" for i in t_ids]
        pairs = align_streams(s_pieces[skip:], t_pieces)
        return RowAlignment(t_ids, [(i + skip, j) for i, j in pairs])


def _content_spans(rendered: str, contents: list[str]) -> list[tuple[int, int]]:
    spans, at = [], 0
    for text in contents:
        k = rendered.find(text, at)
        if k < 0:
            raise ValueError(f"message content {text[:30]!r} not found in the rendered chat")
        spans.append((k, k + len(text)))
        at = k + len(text)
    return spans


def align_chat(messages: list[dict], student_tokenizer, teacher_tokenizer):
    """Each tokenizer renders ``messages`` with its own chat template; positions are aligned
    inside the messages' contents only (template text differs and is never matched).

    Returns ``(student_ids, teacher_ids, pairs)``; a pair ``(i, j)`` means student token
    ``i`` and teacher token ``j`` end at the same character of the same message, having read
    that message's content from its start, or both end their template just before it."""
    contents = [m["content"] for m in messages]
    sides = []
    for tok in (student_tokenizer, teacher_tokenizer):
        text = tok.apply_chat_template(messages, tokenize=False)
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
        sides.append((enc["input_ids"], enc["offset_mapping"], _content_spans(text, contents)))
    (s_ids, s_off, s_spans), (t_ids, t_off, t_spans) = sides

    def ends(offsets, spans):
        """(message, characters read into it) -> the last token ending there."""
        out = {}
        for k, (a, b) in enumerate(offsets):
            if b <= a:
                continue
            nxt = offsets[k + 1][0] if k + 1 < len(offsets) else None
            if nxt is not None and nxt < b:
                continue  # a piece of a character another token completes
            for m, (lo, hi) in enumerate(spans):
                if lo < b <= hi and a >= lo:
                    out[(m, b - lo)] = k
                elif b == lo:  # the template's last token before the content: both predict
                    out[(m, 0)] = k  # the content's first token from their own template
        return out

    s_ends, t_ends = ends(s_off, s_spans), ends(t_off, t_spans)
    pairs = sorted((i, t_ends[key]) for key, i in s_ends.items() if key in t_ends)
    return s_ids, t_ids, pairs
