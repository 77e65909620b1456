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
from kdistill.softlabels import SparseRows

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
        return torch.log_softmax(logits[..., :vocab].float() / temperature, dim=-1).cpu()

    return run


def build_manifest(cfg: RunConfig, tok, train_ds, teacher: dict):
    """The store's manifest; ``teacher``: who fills it (:func:`_teacher_record`)."""
    from kdistill.cache import Manifest
    from kdistill.data.packing import data_fingerprint
    from kdistill.models.vocab import tokenizer_fingerprint

    c = cfg.cache
    method = (
        {"name": c.method, "k": c.k, "top_p": c.top_p}
        if c.method == "topk"
        else {"name": "sampled", "n": c.n}
    )
    tmpl = getattr(tok, "chat_template", None)
    return Manifest(
        teacher=teacher,
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


def _teacher_record(cfg: RunConfig, model=None) -> dict:
    """Who made the store: a local model (its identity and weights hash) or a server."""
    from kdistill.models.identity import local_model_identity, served_identity

    t = cfg.teacher
    if t.kind == "served":
        return {
            "model": t.model,  # the tokenizer's source
            "served_model": t.served_model,
            "base_url": t.base_url,
            "identity": served_identity(t.base_url, t.served_model),
        }
    return {
        "model": t.model,
        "weights_sha256": _weights_hash(model) if model is not None else None,
        "identity": local_model_identity(t.model),
    }


def _train_blocks(cfg: RunConfig, tok):
    from kdistill.data.lm import build_lm_datasets

    train_ds, _ = build_lm_datasets(
        tok, cfg.data.source, **builders.data_kwargs(cfg), held_out=False
    )
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
            identity=_teacher_record(cfg)["identity"],
        )


def _check_served_cache(cfg: RunConfig) -> None:
    """What a served teacher's top-k answer can fill: top-k targets at temperature 1."""
    c = cfg.cache
    if c.method != "topk":
        raise InputError(
            "cache.method=sampled needs the teacher's whole distribution, and a served teacher "
            "returns its top-k log-probs only; use cache.method=topk with teacher.kind=served"
        )
    if c.cache_temperature != 1.0:
        raise InputError(
            f"cache.cache_temperature={c.cache_temperature}: a served teacher's top-k "
            "log-probs are at temperature 1 and its other ids are unknown, so they cannot be "
            "re-tempered; set cache.cache_temperature=1 (distill.kd_temperature still applies)"
        )
    if c.top_p is not None:
        raise InputError(
            "cache.top_p: a served teacher's answer is already cut to its top-k; remove "
            "cache.top_p, or lower cache.k"
        )
    if c.k > 100:
        raise InputError(f"cache.k={c.k}: servers return at most 100 log-probs; use <= 100")


def run_cache(cfg: RunConfig):
    from kdistill.cache import dense_rows
    from kdistill.files import check_free_space, check_output_folder
    from kdistill.folders import claim_folder
    from kdistill.models.loading import check_model_files, load_causal_lm, load_tokenizer

    if cfg.training.num_threads:
        torch.set_num_threads(cfg.training.num_threads)
    served = cfg.teacher.kind == "served"
    aligned = cfg.teacher.kind == "aligned"
    if cfg.teacher.kind not in ("model", "served", "aligned"):
        raise InputError(
            f"kdistill cache asks a teacher model or server, not teacher.kind="
            f"{cfg.teacher.kind}; use teacher.kind=model, served or aligned"
        )
    check_output_folder(cfg.cache.dir, "cache.dir")
    _refuse_streaming(cfg)
    check_model_files(cfg.teacher.model, "teacher.model")
    if served:
        _check_served_cache(cfg)
    if aligned:
        _check_aligned_cache(cfg)
    _check_store_folder(cfg)
    # the store is over the tokens the student trains on: its own, across tokenizers
    tok = load_tokenizer(_student_tokenizer_spec(cfg) if aligned else cfg.teacher.model)
    train_ds = _train_blocks(cfg, tok)
    check_free_space(
        cfg.cache.dir,
        train_ds.examples.numel() * estimated_bytes_per_token(cfg.cache),
        f"the store in cache.dir={cfg.cache.dir!r}",
    )
    with claim_folder(cfg.cache.dir, "cache", field="cache.dir"):
        if served:
            return _fill_from_server(cfg, tok, train_ds)
        if aligned:
            return _fill_from_aligned(cfg, tok, train_ds)
        teacher, tok = load_causal_lm(
            cfg.teacher.model, cfg.teacher.dtype, frozen=True, device=cfg.device
        )
        manifest = build_manifest(cfg, tok, train_ds, _teacher_record(cfg, teacher))
        fn = _teacher_fn(teacher, len(tok), cfg.cache.cache_temperature)
        return _fill_store(cfg, manifest, train_ds, dense_rows(fn, manifest.method))


def _fill_from_server(cfg: RunConfig, tok, train_ds):
    """The store's targets from a server that scores text (``teacher.kind: served``): each
    block's top ``cache.k`` log-probs (+ tail) at every position it scored; positions it did
    not (the last one; position 0 and differently tokenised stretches on llama.cpp) keep none
    and train as "no target"."""
    from kdistill.softlabels import signal_rows
    from kdistill.teachers.base import Want
    from kdistill.teachers.kinds import build_teacher

    settings = {**cfg.teacher.model_dump(), "top_k": cfg.cache.k}
    scorer = build_teacher("served", settings, tokenizer=tok, vocab_size=len(tok))
    manifest = build_manifest(cfg, tok, train_ds, _teacher_record(cfg))

    def rows(blocks: torch.Tensor, _generator) -> SparseRows:
        s = scorer.signal({"input_ids": blocks}, want=Want()).sparse
        k = s.ids.shape[-1]
        return signal_rows(s.ids.reshape(-1, k), s.logprobs.reshape(-1, k), s.log_tail.reshape(-1))

    out = _fill_store(cfg, manifest, train_ds, rows)
    st = scorer.stats
    if st.positions:
        say(
            f"the server gave targets at {st.positions - st.rows - st.dropped} of "
            f"{st.positions - st.rows} predicting positions; the rest train without one"
        )
    return out


def _check_aligned_cache(cfg: RunConfig) -> None:
    """What a teacher over another vocabulary can fill: top-k mapped targets."""
    t, c = cfg.teacher, cfg.cache
    if t.objective != "mapped":
        raise InputError(
            "teacher.objective=uld compares whole sorted distributions, which a top-k store "
            "does not keep; cache with teacher.objective=mapped, or train uld online"
        )
    if c.method != "topk" or c.top_p is not None:
        raise InputError(
            "kdistill cache with teacher.kind=aligned stores the mapped targets' top-k "
            "(+ tail): set cache.method=topk and no cache.top_p"
        )
    _student_tokenizer_spec(cfg)


def _student_tokenizer_spec(cfg: RunConfig) -> str:
    """The model whose tokenizer the student uses (its data are cached in those tokens)."""
    ft = cfg.student.from_teacher
    if ft is not None and ft.tokenizer_vocab:
        raise InputError(
            "kdistill cache: a student with its own trained tokenizer "
            "(student.from_teacher.tokenizer_vocab) is not cached yet; distil it online"
        )
    spec = (ft.model if ft is not None else None) or cfg.student.model
    if not spec:
        raise InputError(
            "kdistill cache with teacher.kind=aligned stores targets over the student's "
            "tokens: name the student's model (student.from_teacher.model or student.model)"
        )
    return spec


def _fill_from_aligned(cfg: RunConfig, tok, train_ds):
    """The store's targets from a teacher with another tokenizer (``teacher.kind:
    aligned``): at every aligned position the top ``cache.k`` of its mass mapped onto the
    student's ids (+ tail); unaligned positions keep none and train on their hard CE."""
    from kdistill.models.loading import load_causal_lm
    from kdistill.models.placement import device_of, on_model
    from kdistill.softlabels import signal_rows
    from kdistill.teachers.aligned import AlignedTeacher
    from kdistill.teachers.base import Want, to_device

    teacher, t_tok = load_causal_lm(
        cfg.teacher.model, cfg.teacher.dtype, frozen=True, device=cfg.device
    )
    aligned = AlignedTeacher(teacher, t_tok, tok, objective="mapped", vocab_size=len(tok))
    aligned.to(device_of(teacher))  # its vocabulary map beside the model
    record = {**_teacher_record(cfg, teacher), "kind": "aligned"}
    manifest = build_manifest(cfg, tok, train_ds, record)
    want = Want("logits", kd_temperature=cfg.cache.cache_temperature)

    def rows(blocks: torch.Tensor, _generator) -> SparseRows:
        sig = aligned.signal({"input_ids": on_model(blocks, teacher)}, want=want)
        s, valid = to_device(sig.sparse, "cpu"), sig.valid.reshape(-1).cpu()
        lp, tail = s.logprobs.reshape(-1, s.k), s.log_tail.reshape(-1)
        top_lp, top = torch.topk(lp, min(cfg.cache.k, s.k), dim=-1)
        rest = torch.cat([lp.scatter(-1, top, float("-inf")), tail[:, None]], dim=-1)
        ids = torch.where(valid[:, None], aligned.vmap.student_ids.cpu()[top], -1)
        return signal_rows(ids, top_lp, torch.logsumexp(rest, dim=-1))

    out = _fill_store(cfg, manifest, train_ds, rows)
    st = aligned.summary()
    say(
        f"aligned {st['aligned_positions']} of {st['positions']} predicting positions; the "
        f"mapped share of the teacher's mass {st.get('mapped_share', 0):.3f}"
    )
    return out


def _fill_store(cfg: RunConfig, manifest, train_ds, rows):
    from kdistill.cache import write_store

    dest = Path(cfg.cache.dir)
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("teacher -> store", total=manifest.n_shards)

        def tick(done: int, total: int) -> None:
            bar.update(task, completed=done)

        report = write_store(
            dest,
            train_ds.examples,
            rows,
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


def _refuse_streaming(cfg: RunConfig) -> None:
    if cfg.data.streaming:
        raise InputError(
            "kdistill cache stores the teacher's targets per listed example; a streamed data "
            "set is not listed (unset data.streaming, or distil online: teacher.kind=model)"
        )


def run_cache_plan(cfg: RunConfig, sample_blocks: int = 4) -> list[dict]:
    from kdistill.data.records import load_records
    from kdistill.models.loading import check_model_files, load_causal_lm

    _refuse_streaming(cfg)
    check_model_files(cfg.teacher.model, "teacher.model")
    load_records(cfg.data.source, cfg.data.text_field, **builders.source_kwargs(cfg))

    teacher, tok = load_causal_lm(
        cfg.teacher.model, cfg.teacher.dtype, frozen=True, device=cfg.device
    )
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
