"""A served teacher that *scores* given text: ``teacher.kind: served``.

Each row of a micro-batch (prompt + the student's sample, or any block) goes to an
OpenAI-compatible ``/v1/completions`` endpoint with ``echo`` and ``logprobs`` (plus vLLM's
``prompt_logprobs``); the per-position top-k log-probs come back as a sparse signal (top-k +
tail), so the student's process never holds the teacher. Two server layouts, both handled:

* vLLM ``prompt_logprobs``: entry ``i`` (keyed by token id) is the distribution that
  predicted token ``i``, i.e. the one at position ``i - 1``; entry 0 is null.
* llama-cpp-python ``echo`` + ``logprobs``: entry ``i`` holds the distribution *at* position
  ``i`` (the one predicting token ``i + 1``), keyed by token text, while its
  ``token_logprobs[i]`` is token ``i`` read from that same row (a one-off shift in the server);
  entry 0 is null. Texts are mapped back to ids through :class:`PieceMap`.

Token ids are sent where the server takes them (vLLM); llama-cpp-python's server takes text
only, so the text is sent, the server tokenises it itself, and its positions are matched to
the row's by character offset (a block cut from a corpus starts mid-word, and a student's
sample may spell a word in pieces the tokenizer would merge): positions inside a stretch
tokenised differently get no target and are counted. A server that returns log-probs for
the generated token only (no echo) is refused with one line.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass

import torch

from kdistill.signals import SparseSignal
from kdistill.teachers.base import TeacherSignal, Want, pad_sparse
from kdistill.teachers.served import OpenAICompatibleTeacher, ServedError

Row = tuple[list[int], list[float], float]  # ids, log-probs, log of the rest (tail)


def _tail(lps: list[float]) -> tuple[list[float], float]:
    kept = sum(math.exp(x) for x in lps)
    if kept > 1.0 + 1e-3:  # a server rounding above 1: renormalise
        lps = [x - math.log(kept) for x in lps]
        kept = 1.0
    rest = 1.0 - kept
    return lps, math.log(rest) if rest > 1e-6 else float("-inf")


def _few_entries(got: int, n: int) -> ServedError:
    return ServedError(
        f"the server returned {got} log-prob entries for {n} prompt tokens: it scores "
        "generated tokens only; use a server that returns prompt log-probs (vLLM, or "
        "llama-cpp-python started with --logits_all true)"
    )


def parse_vllm(choice: dict, ids: list[int]) -> list[Row | None]:
    """Rows ``0 .. n-2`` from vLLM's ``prompt_logprobs`` (entry ``i`` -> row ``i - 1``)."""
    entries = choice.get("prompt_logprobs") or []
    n = len(ids)
    if len(entries) < n:
        raise _few_entries(len(entries), n)
    rows: list[Row | None] = [None] * n
    for i in range(1, n):
        entry = entries[i] or {}
        pairs = {}
        for key, v in entry.items():
            lp = v.get("logprob") if isinstance(v, dict) else v
            if lp is not None and math.isfinite(lp):
                pairs[int(key)] = float(lp)
        lps, tail = _tail(list(pairs.values()))
        rows[i - 1] = (list(pairs), lps, tail)
    return rows


def parse_llama_cpp(choice: dict, texts: list[str], pieces) -> tuple[list[Row | None], int]:
    """Rows from llama-cpp-python's echoed ``logprobs`` (entry ``i`` is the distribution at
    the server's position ``i``), and how many of the ``n - 1`` predicting positions got none.

    ``texts``: the text of each of the row's tokens. The server tokenised the decoded text
    itself, so its positions are matched to the row's by character offset: where a server
    token and a row token end at the same character (with the same text before it), the
    server's distribution there is the teacher's next-token distribution after that text,
    the row's target at that position. Elsewhere (inside a stretch the two tokenised
    differently) the row has no target."""
    lp = choice.get("logprobs") or {}
    tokens, tops = lp.get("tokens") or [], lp.get("top_logprobs") or []
    n = len(texts)
    if len(tokens) <= 1 < n or len(tops) < len(tokens):
        # no echo: the entries are the generated token's (max_tokens = 1), not the prompt's
        raise _few_entries(len(tokens), n)
    ours = "".join(texts)
    ends, at = {}, 0
    for j, t in enumerate(texts[:-1]):  # the last position predicts past the sequence
        at += len(t)
        ends[at] = j
    rows: list[Row | None] = [None] * n
    at = 0
    for i, piece in enumerate(tokens):
        piece = piece or ""
        if ours[at : at + len(piece)] != piece:
            break  # the texts differ from here on
        at += len(piece)
        j = ends.get(at)
        if j is None or not tops[i]:
            continue
        got = {}
        for key, value in tops[i].items():
            k = pieces.get(key)
            if k is not None and value is not None and math.isfinite(value):
                got[k] = float(value)
        lps, tail = _tail(list(got.values()))
        rows[j] = (list(got), lps, tail)
    return rows, sum(r is None for r in rows[: n - 1])


@dataclass
class ScoreStats:
    rows: int = 0
    positions: int = 0
    dropped: int = 0  # positions the server tokenised differently


class ServedScorer:
    """``teacher.kind: served``: top-k log-probs of given token sequences from a server."""

    def __init__(
        self,
        client: OpenAICompatibleTeacher,
        tokenizer,
        *,
        vocab_size: int,
        top_k: int = 20,
        send: str = "auto",
        extra_body: dict | None = None,
    ):
        from kdistill.data.completions import PieceMap

        if send not in ("auto", "ids", "text"):
            raise ValueError(f"teacher.send must be auto, ids or text, got {send!r}")
        self.client = client
        self.tok = tokenizer
        self.pieces = PieceMap(tokenizer)
        self.vocab_size = vocab_size
        self.top_k = top_k
        self.send = send
        self.extra_body = dict(extra_body or {})
        self.stats = ScoreStats()
        self._loop = asyncio.new_event_loop()

    def _body(self, ids: list[int], as_ids: bool) -> dict:
        return {
            "model": self.client.model,
            "prompt": ids if as_ids else self.tok.decode(ids),
            "max_tokens": 1,  # 0 means "to the end of the context" on llama-cpp-python
            "temperature": 0,
            "echo": True,
            "logprobs": self.top_k,
            "prompt_logprobs": self.top_k,
            **self.extra_body,
        }

    async def _score(self, ids: list[int]) -> tuple[list[Row | None], int]:
        if self.send == "auto":  # one attempt with ids; a server that refuses them gets text
            try:
                data = await self.client.post_once("/v1/completions", self._body(ids, True))
                self.send = "ids"
            except Exception:  # llama-cpp-python answers a token-id prompt with HTTP 500
                self.send = "text"
                return await self._score(ids)
        else:
            body = self._body(ids, self.send == "ids")
            data = await self.client.post("/v1/completions", body)
        try:
            choice = data["choices"][0]
        except (KeyError, IndexError, TypeError) as exc:
            raise ServedError(f"server response has no choices: {str(data)[:120]}") from exc
        if choice.get("prompt_logprobs") is not None:
            return parse_vllm(choice, ids), 0
        return parse_llama_cpp(choice, [self.pieces.text(i) for i in ids], self.pieces)

    async def _score_all(self, seqs: list[list[int]]):
        async def one(ids):
            async with self.client.semaphore:
                return await self._score(ids)

        if self.send == "auto" and seqs:  # settle ids vs text on one request first
            first = [await one(seqs[0])]
            return first + list(await asyncio.gather(*(one(s) for s in seqs[1:])))
        return list(await asyncio.gather(*(one(s) for s in seqs)))

    def signal(self, batch, *, want: Want) -> TeacherSignal:
        """Sparse top-k (+ tail) targets for every real position of every row; positions
        without a target (padding, the server's other tokenisation) have an empty row
        (-inf everywhere), and ``valid`` says which positions have one."""
        ids = batch["input_ids"].cpu()
        mask = batch.get("attention_mask")
        mask = torch.ones_like(ids) if mask is None else mask.cpu()
        seqs, where = [], []
        for r in range(ids.shape[0]):
            pos = mask[r].nonzero().squeeze(-1)
            seqs.append(ids[r, pos].tolist())
            where.append(pos)
        scored = self._loop.run_until_complete(self._score_all(seqs))
        length = ids.shape[1]
        per_row, valid = [], torch.zeros(ids.shape, dtype=torch.bool)
        for r, (rows, dropped) in enumerate(scored):
            k = max([len(x[0]) for x in rows if x] + [1])
            r_ids = torch.full((length, k), -1, dtype=torch.long)
            r_lp = torch.full((length, k), float("-inf"))
            r_tail = torch.full((length,), float("-inf"))
            for j, row in enumerate(rows):
                if row is None or not row[0]:
                    continue
                p = int(where[r][j])
                r_ids[p, : len(row[0])] = torch.tensor(row[0])
                r_lp[p, : len(row[1])] = torch.tensor(row[1])
                r_tail[p] = row[2]
                valid[r, p] = True
            per_row.append((r_ids, r_lp, r_tail))
            self.stats.rows += 1
            self.stats.positions += len(seqs[r])
            self.stats.dropped += dropped
        sparse: SparseSignal = pad_sparse(per_row, length, self.vocab_size, 1.0)
        device = batch["input_ids"].device
        sparse = SparseSignal(
            sparse.ids.to(device),
            sparse.logprobs.to(device),
            sparse.log_tail.to(device),
            self.vocab_size,
            1.0,
        )
        return TeacherSignal(sparse=sparse, valid=valid.to(device))
