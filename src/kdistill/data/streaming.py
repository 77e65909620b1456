"""Streamed hub data sets (``data.streaming: true``): rows are read as training needs them,
never the whole set at once, so a set larger than the disk trains.

``datasets`` streams the rows: from the cached snapshot when one is in the Hugging Face cache
(nothing is downloaded), else from the hub itself (``HF_TOKEN`` honoured; with
``HF_HUB_OFFLINE=1`` an uncached id is one line). kdistill then does what it does for a file:

- **held-out split by hash**: row ``i`` of the stream is held out when the hash of
  ``(seed, i)`` says so (:func:`kdistill.data.holdout.is_held_out`, the same rule as for a file),
  so the held-out rows are the same every run without ever listing the set;
- **packing**: training rows' tokens, EOS after each, cut into ``block_size`` blocks;
- **resume by position**: every block knows where it starts (the stream's own
  ``state_dict`` before its row, that row's index, and how many of the row's tokens came
  before the block). A checkpoint stores the position of the first block not yet trained on
  (``stream_position.json``) and a resumed run starts the stream there
  (``IterableDataset.load_state_dict``: whole shards are skipped unread) instead of
  re-reading and re-tokenising everything it had trained on.

Plain-text rows only (a ``text_field`` column): chats, generations, stores and a student's
own tokenizer need the records listed and are refused for a streamed set.
"""

from __future__ import annotations

import copy
import json
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

import torch
from transformers import TrainerCallback

from kdistill.data.examples import BlockDataset
from kdistill.data.holdout import part_of
from kdistill.data.packing import pack_texts
from kdistill.errors import InputError

POSITION_FILE = "stream_position.json"
_KEEP_POSITIONS = 8192  # block starts remembered (well beyond the data loader's prefetch)


def open_stream(source: str, *, subset: str | None = None, split: str = "train"):
    """A ``datasets.IterableDataset`` over one split of hub data set ``source``: the cached
    snapshot when there is one, else the hub (never a download of the whole set)."""
    from kdistill.data.hub import load_split
    from kdistill.hub_cache import cached_snapshot, offline

    repo, _, revision = source.partition("@")
    folder = cached_snapshot(source, repo_type="dataset")
    if folder is None and offline():
        raise InputError(
            f"data source {source!r} not found: a streamed hub data set is neither in the "
            "Hugging Face cache (HF_HUB_CACHE / HF_HOME) nor reachable with HF_HUB_OFFLINE=1; "
            "unset HF_HUB_OFFLINE or download it once"
        )
    where = str(folder) if folder is not None else repo
    extra = {} if folder is not None else {"revision": revision or None}
    return load_split(source, where, subset=subset, split=split, streaming=True, **extra)


def _text(source: str, row: dict, text_field: str, index: int) -> str | None:
    """A row's text, or None for an empty or null one (skipped, and not counted: rows are
    numbered as a listed set numbers its records)."""
    if text_field not in row:
        cols = ", ".join(sorted(row)) or "none"
        raise InputError(
            f"data source {source!r} row {index}: a streamed data set is read as plain text "
            f"from column {text_field!r} (columns: {cols}); set data.text_field, or unset "
            "data.streaming for chats and generations"
        )
    value = row[text_field]
    if value is not None and not isinstance(value, str):
        raise InputError(
            f"data source {source!r} row {index}: {text_field!r} must be text, got "
            f"{value!r:.40}; set data.text_field to a text column"
        )
    return value or None


def _texts(source: str, stream, text_field: str) -> Iterator[tuple[int, str]]:
    """(record index, text) of every row with text, numbered as a listed set would be."""
    index = 0
    for raw, row in enumerate(stream):
        text = _text(source, row, text_field, raw)
        if text is not None:
            yield index, text
            index += 1


def check_stream(
    source: str, text_field: str = "text", *, subset: str | None = None, split: str = "train"
) -> list[str]:
    """The first rows' texts (up to 8), checked: what a run validates before any model
    loads, without reading the set."""
    texts = []
    for i, text in _texts(source, open_stream(source, subset=subset, split=split), text_field):
        texts.append(text)
        if i == 7:
            break
    if not texts:
        raise InputError(
            f"data source {source!r}: split {split!r} has no rows with text in "
            f"{text_field!r}; give another data.split or data.text_field"
        )
    return texts


def held_out_stream(
    source: str,
    *,
    held_out_fraction: float,
    seed: int = 0,
    text_field: str = "text",
    subset: str | None = None,
    split: str = "train",
    max_chars: int,
    validation_fraction: float = 0.0,
    part: str = "test",
) -> list[str]:
    """The held-out (``part``: test or validation) rows' texts in stream order, read until
    ``max_chars`` characters."""
    out, total = [], 0
    stream = open_stream(source, subset=subset, split=split)
    for i, text in _texts(source, stream, text_field):
        if part_of(i, held_out_fraction, seed, validation_fraction) != part:
            continue
        text = text[: max_chars - total]  # the last one cut, as for a listed set
        if text.strip():
            out.append(text)
            total += len(text)
        if total >= max_chars:
            break
    if not out:
        knob = "data.validation_fraction" if part == "validation" else "data.held_out_fraction"
        raise InputError(
            f"data source {source!r}: no {part} rows at held-out fraction {held_out_fraction} "
            f"and validation fraction {validation_fraction}; raise {knob} or add data"
        )
    return out


def streamed_datasets(
    tokenizer,
    source: str,
    *,
    max_eval_tokens: int | None = None,
    part: str = "test",
    held_out: bool = True,
    **blocks,
):
    """(:class:`StreamedBlocks` ``(tokenizer, source, **blocks)``, the training blocks as they
    stream; the first held-out (``part``) rows' blocks, or ``None`` with ``held_out=False``:
    nothing read for them)."""
    train = StreamedBlocks(tokenizer, source, **blocks)
    if not held_out:
        return train, None
    eval_tokens = max_eval_tokens or 16384
    same = ("held_out_fraction", "seed", "text_field", "subset", "split", "validation_fraction")
    texts = held_out_stream(
        source,
        max_chars=8 * (eval_tokens + train.block_size),  # ample: ~4 characters a token
        part=part,
        **{k: blocks[k] for k in same if k in blocks},
    )
    return train, BlockDataset(pack_texts(tokenizer, texts, train.block_size, eval_tokens))


class StreamedBlocks(torch.utils.data.IterableDataset):
    """Packed ``block_size`` training blocks from the training rows of a stream, each with
    the position it starts at (:meth:`position`); ``start`` (a saved position) resumes."""

    def __init__(
        self,
        tokenizer,
        source: str,
        *,
        block_size: int,
        held_out_fraction: float,
        seed: int = 0,
        text_field: str = "text",
        subset: str | None = None,
        split: str = "train",
        max_train_tokens: int | None = None,
        start: dict | None = None,
        validation_fraction: float = 0.0,
    ):
        self.tokenizer = tokenizer
        self.source, self.subset, self.split = source, subset, split
        self.block_size, self.text_field = block_size, text_field
        self.fraction, self.seed = held_out_fraction, seed
        self.validation = validation_fraction
        self.max_blocks = (
            None if max_train_tokens is None else max(1, max_train_tokens // block_size)
        )
        self.start = start
        self.next_block = 0 if start is None else int(start["block"])
        self.pass_no = 0 if start is None else int(start["pass"])
        self.positions: OrderedDict[int, dict] = OrderedDict()
        self.rows_read = 0

    def fresh(self) -> StreamedBlocks:
        """The same stream from its beginning, with its own counters (calibration reads it
        without moving this one)."""
        return StreamedBlocks(
            self.tokenizer,
            self.source,
            block_size=self.block_size,
            held_out_fraction=self.fraction,
            seed=self.seed,
            text_field=self.text_field,
            subset=self.subset,
            split=self.split,
            max_train_tokens=None if self.max_blocks is None else self.max_blocks * self.block_size,
            validation_fraction=self.validation,
        )

    def _remember(self, block: int, position: dict) -> None:
        self.positions[block] = position
        while len(self.positions) > _KEEP_POSITIONS:
            self.positions.popitem(last=False)

    def position(self, block: int) -> dict:
        """Where block number ``block`` (counted over the whole run) starts."""
        if block not in self.positions:
            raise KeyError(f"the start of block {block} is no longer known")
        return self.positions[block]

    def __iter__(self) -> Iterator[dict]:
        """Blocks without end: pass after pass over the stream (the Trainer stops at
        ``training.max_steps``), so block ``n`` is always the ``n``-th the run trained on."""
        start, self.start = self.start, None
        while True:
            made = yield from self._one_pass(start)
            if made == 0:
                raise InputError(
                    f"data source {self.source!r}: its training rows hold fewer than one block "
                    f"of {self.block_size} tokens; lower data.block_size or add data"
                )
            start = None
            self.pass_no += 1

    def _one_pass(self, start: dict | None):
        """One pass over the stream (from ``start`` when resuming); returns blocks made."""
        stream = open_stream(self.source, subset=self.subset, split=self.split)
        row, skip, made = 0, 0, 0
        if start is not None:
            stream.load_state_dict(start["state"])
            row, skip = int(start["row"]), int(start["skip"])
            made = int(start["made"])  # blocks of this pass before the start
        eos = self.tokenizer.eos_token_id
        buf: list[int] = []
        at: dict = {}  # the position of buf[0]
        rows = iter(stream)
        loaded = None if start is None else start["state"]
        while self.max_blocks is None or made < self.max_blocks:
            # before its first row a resumed stream reports its initial state, not the loaded
            # one (datasets 5.2 prepares the iteration lazily): keep the loaded state there
            state = loaded if loaded is not None else copy.deepcopy(stream.state_dict())
            loaded = None
            try:
                item = next(rows)
            except StopIteration:
                break
            self.rows_read += 1
            text = _text(self.source, item, self.text_field, row)
            if text is None:  # an empty row: not a record, not counted
                continue
            index, row = row, row + 1
            if part_of(index, self.fraction, self.seed, self.validation) != "train":
                continue
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            ids.append(eos)
            pos, skip = skip, 0  # the resumed row: its first tokens were trained on
            while pos < len(ids) and (self.max_blocks is None or made < self.max_blocks):
                if not buf:
                    at = {"state": state, "row": index, "skip": pos, "pass": self.pass_no}
                    at["made"] = made
                take = min(self.block_size - len(buf), len(ids) - pos)
                buf.extend(ids[pos : pos + take])
                pos += take
                if len(buf) == self.block_size:
                    self._remember(self.next_block, {**at, "block": self.next_block})
                    block = torch.tensor(buf, dtype=torch.long)
                    self.next_block += 1
                    made += 1
                    buf = []
                    # where the next block will start, known before it is made (a checkpoint
                    # may be saved while the data loader has not asked for it yet): here in
                    # this row, else before the next row (held-out rows in between are skipped)
                    rest = pos < len(ids)
                    self._remember(
                        self.next_block,
                        {
                            "state": state if rest else copy.deepcopy(stream.state_dict()),
                            "row": index if rest else index + 1,
                            "skip": pos if rest else 0,
                            "pass": self.pass_no,
                            "made": made,
                            "block": self.next_block,
                        },
                    )
                    yield {"input_ids": block, "labels": block.clone()}
        return made


class StreamPositionCallback(TrainerCallback):
    """Writes, into each checkpoint before it is marked complete, where the first block not
    yet trained on starts (``global_step`` x the blocks one optimizer step takes)."""

    def __init__(self, dataset: StreamedBlocks):
        self.dataset = dataset

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return control
        per_step = (
            args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
        )
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        position = {**self.dataset.position(state.global_step * per_step), "per_step": per_step}
        tmp = folder / (POSITION_FILE + ".tmp")
        tmp.write_text(json.dumps(position))
        tmp.replace(folder / POSITION_FILE)
        return control


def resume_position(checkpoint: Path, per_step: int) -> dict:
    """The stream position saved with ``checkpoint``, for a run taking ``per_step`` blocks
    an optimizer step (batch x accumulation x processes: what the saved one was made with)."""
    path = Path(checkpoint) / POSITION_FILE
    if not path.is_file():
        raise InputError(
            f"{checkpoint}: no {POSITION_FILE} (the run was not streamed when it was saved); "
            "pass --fresh to start it again, or unset data.streaming"
        )
    position = json.loads(path.read_text())
    if position["per_step"] != per_step:
        raise InputError(
            f"{checkpoint}: saved at {position['per_step']} blocks a step (batch x gradient "
            f"accumulation x processes), resumed at {per_step}; resume it with the same batch "
            "settings and process count, or pass --fresh"
        )
    return position
