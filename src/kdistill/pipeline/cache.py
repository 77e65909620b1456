"""`kdistill cache` and `kdistill cache plan`: offline teacher signals."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from kdistill.config import builders
from kdistill.config.schema import RunConfig
from kdistill.errors import InputError
from kdistill.log import say

console = Console()


def _weights_hash(model) -> str:
    """sha256 over the teacher's parameters (name, shape, bytes): identity, not a file path."""
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(p.shape)).encode())
        h.update(p.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _teacher_fn(teacher, vocab: int, temperature: float):
    """(B, L) ids -> (B, L, V) fp32 log-probs at ``temperature``, through the same model
    teacher the online trainer asks."""
    from kdistill.teachers.base import Want
    from kdistill.teachers.model import ModelTeacher

    source = ModelTeacher(teacher)

    @torch.no_grad()
    def run(ids: torch.Tensor) -> torch.Tensor:
        logits = source.signal({"input_ids": ids}, want=Want("logits")).logits
        return torch.log_softmax(logits[..., :vocab].float() / temperature, dim=-1)

    return run


def build_manifest(cfg: RunConfig, teacher, tok, train_ds):
    from kdistill.cache import Manifest
    from kdistill.data.lm import data_fingerprint
    from kdistill.models.vocab import tokenizer_fingerprint

    c = cfg.cache
    method = (
        {"name": c.method, "k": c.k, "top_p": c.top_p}
        if c.method == "topk"
        else {"name": "sampled", "n": c.n}
    )
    tmpl = getattr(tok, "chat_template", None)
    from kdistill.models.identity import local_model_identity

    return Manifest(
        teacher={
            "model": cfg.teacher.model,
            "weights_sha256": _weights_hash(teacher),
            "identity": local_model_identity(cfg.teacher.model),
        },
        tokenizer_hash=tokenizer_fingerprint(tok),
        vocab_size=len(tok),
        chat_template_hash=hashlib.sha256(tmpl.encode()).hexdigest()[:16] if tmpl else None,
        cache_temperature=c.cache_temperature,
        method=method,
        encoding={"ids": "bit-packed", "values": c.value_kind(), "tail": "float16"},
        data_fingerprint=data_fingerprint(train_ds),
        block_size=cfg.data.block_size,
        n_blocks=len(train_ds),
        shard_blocks=c.shard_blocks,
    )


def _train_blocks(cfg: RunConfig, tok):
    from kdistill.data.lm import build_lm_datasets

    train_ds, _ = build_lm_datasets(tok, cfg.data.source, **builders.data_kwargs(cfg))
    if not isinstance(train_ds.examples, torch.Tensor):
        raise InputError("kdistill cache supports packed text data; chat data is not cached yet")
    return train_ds


def estimated_bytes_per_token(c) -> float:
    """A generous upper estimate of the store's size per token (before anything runs):
    ids of up to 18 bits, 1-2 value bytes, a float16 tail and a length byte per kept id."""
    kept = c.k if c.method == "topk" else c.n
    value = 2 if c.value_kind() == "logprob16" else 1
    return kept * (18 / 8 + value) + 3


def _check_store_folder(cfg: RunConfig) -> None:
    """A store already in ``cache.dir`` must be this teacher's (resuming it): one store never
    mixes two teachers' signals."""
    from kdistill.cache import Manifest
    from kdistill.pipeline.preflight import check_store_teacher

    mpath = Path(cfg.cache.dir) / "manifest.json"
    if mpath.is_file():
        check_store_teacher(
            Manifest.load(mpath).teacher,
            cfg.teacher.model,
            allow=False,
            where=f"cache.dir={cfg.cache.dir!r}",
        )


def run_cache(cfg: RunConfig):
    from kdistill.cache import write_store
    from kdistill.files import check_free_space, check_output_folder
    from kdistill.folders import claim_folder
    from kdistill.models.loading import check_model_files, load_causal_lm, load_tokenizer

    if cfg.training.num_threads:
        torch.set_num_threads(cfg.training.num_threads)
    check_output_folder(cfg.cache.dir, "cache.dir")
    check_model_files(cfg.teacher.model, "teacher.model")
    _check_store_folder(cfg)
    tok = load_tokenizer(cfg.teacher.model)
    train_ds = _train_blocks(cfg, tok)
    check_free_space(
        cfg.cache.dir,
        train_ds.examples.numel() * estimated_bytes_per_token(cfg.cache),
        f"the store in cache.dir={cfg.cache.dir!r}",
    )
    with claim_folder(cfg.cache.dir, "cache", field="cache.dir"):
        teacher, tok = load_causal_lm(cfg.teacher.model, cfg.teacher.dtype, frozen=True)
        return _fill_store(cfg, teacher, tok, train_ds, write_store)


def _fill_store(cfg: RunConfig, teacher, tok, train_ds, write_store):
    manifest = build_manifest(cfg, teacher, tok, train_ds)
    dest = Path(cfg.cache.dir)
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("teacher -> store", total=manifest.n_shards)

        def tick(done: int, total: int) -> None:
            bar.update(task, completed=done)

        report = write_store(
            dest,
            train_ds.examples,
            _teacher_fn(teacher, len(tok), cfg.cache.cache_temperature),
            manifest,
            batch_size=cfg.cache.batch_size,
            seed=cfg.seed,
            progress=tick,
        )
    say(
        f"store {dest}: {manifest.n_shards} shards ({len(report.computed_shards)} computed, "
        f"{len(report.skipped_shards)} already done), {report.bytes_per_token:.1f} bytes/token"
    )
    return dest, report


PLAN_SETTINGS = [
    ("topk", {"k": 8}, "logprob8"),
    ("topk", {"k": 16}, "logprob8"),
    ("topk", {"k": 32}, "logprob8"),
    ("topk", {"k": 16}, "logprob16"),
    ("topk", {"k": 64}, "logprob16"),
    ("sampled", {"n": 16}, "count8"),
    ("sampled", {"n": 24}, "count8"),
    ("sampled", {"n": 64}, "count8"),
]


def plan_rows(logprobs: torch.Tensor, vocab: int, seed: int = 0) -> list[dict]:
    """Measure each setting on dense teacher log-probs ``(P, V)``."""
    from kdistill.softlabels import decode_positions, encode_positions, sampled_rows, topk_rows

    out = []
    for name, params, kind in PLAN_SETTINGS:
        gen = torch.Generator().manual_seed(seed)
        rows = (
            topk_rows(logprobs, params["k"])
            if name == "topk"
            else sampled_rows(logprobs, params["n"], gen)
        )
        enc = encode_positions(rows, vocab, kind)
        dec = decode_positions(enc)
        recon = dec.to_signal(vocab, 1.0).to_dense()
        p = logprobs.exp()
        kl = (p * (logprobs - recon)).sum(-1).mean()
        sig = rows.to_signal(vocab, 1.0)
        kept_true = torch.where(
            sig.ids >= 0, logprobs.gather(-1, sig.ids.clamp_min(0)).exp(), torch.zeros(())
        )
        out.append(
            {
                "method": name,
                **params,
                "values": kind,
                "bytes_per_token": enc.nbytes() / logprobs.shape[0],
                "captured_mass": float(kept_true.sum(-1).mean()),
                "kl_full_to_reconstruction": float(kl),
                "mean_ids_per_token": float(rows.lengths.float().mean()),
            }
        )
    return out


def run_cache_plan(cfg: RunConfig, sample_blocks: int = 4) -> list[dict]:
    from kdistill.data.lm import load_records
    from kdistill.models.loading import check_model_files, load_causal_lm

    check_model_files(cfg.teacher.model, "teacher.model")
    load_records(cfg.data.source, cfg.data.text_field)

    teacher, tok = load_causal_lm(cfg.teacher.model, cfg.teacher.dtype, frozen=True)
    train_ds = _train_blocks(cfg, tok)
    blocks = train_ds.examples[:sample_blocks]
    logprobs = _teacher_fn(teacher, len(tok), cfg.cache.cache_temperature)(blocks)
    rows = plan_rows(logprobs.reshape(-1, logprobs.shape[-1]), len(tok), cfg.seed)
    total_tokens = train_ds.examples.numel()
    table = Table(
        title=f"cache plan on {blocks.numel()} sampled tokens (data: {total_tokens} tokens)"
    )
    for col in ("setting", "B/token", "projected size", "captured mass", "KL(full||recon)"):
        table.add_column(col, justify="right")
    for r in rows:
        r["projected_bytes"] = r["bytes_per_token"] * total_tokens
        setting = (
            f"{r['method']} {'k=' + str(r['k']) if 'k' in r else 'n=' + str(r['n'])} {r['values']}"
        )
        table.add_row(
            setting,
            f"{r['bytes_per_token']:.1f}",
            f"{r['projected_bytes'] / 1e6:.1f} MB",
            f"{r['captured_mass']:.3f}",
            f"{r['kl_full_to_reconstruction']:.4f}",
        )
    say(table)
    return rows
