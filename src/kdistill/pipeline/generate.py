"""`kdistill generate`: teacher generations, exactly once, filtered, ready for training."""

from __future__ import annotations

import asyncio
import json
import math
import os
from pathlib import Path

from rich.console import Console
from rich.progress import Progress

from kdistill.config.schema import RunConfig
from kdistill.data.filters import (
    apply_filters,
    best_of_n_filter,
    dedup_filter,
    length_filter,
    make_answer_checker,
    verifier_filter,
)
from kdistill.data.generations import GenerationStore, load_prompts
from kdistill.errors import ProvenanceError
from kdistill.files import atomic_write_json, atomic_write_jsonl
from kdistill.log import get_logger, say

console = Console()  # progress bars only
log = get_logger(__name__)


def _params(g) -> dict:
    return {
        "sampling_temperature": g.sampling_temperature,
        "top_p": g.top_p,
        "max_tokens": g.max_tokens,
        "stop": g.stop,
        "system_prompt": g.system_prompt,
        "top_logprobs": g.top_logprobs,
        "mode": g.mode,
        "extra_body": g.extra_body,
    }


def _record(prompt, sample: int, result: dict, backend: str, model: str) -> dict:
    return {
        "prompt_id": prompt.id,
        "sample": sample,
        "prompt": prompt.text,
        "messages": prompt.messages,
        "reference_answer": prompt.answer,
        **result,
        "backend": backend,
        "model": model,
    }


async def _run_served(cfg: RunConfig, store: GenerationStore, todo, bar, task) -> int:
    from kdistill.teachers.served import OpenAICompatibleTeacher

    g = cfg.generate
    teacher = OpenAICompatibleTeacher(
        g.base_url,
        g.model,
        api_key=os.environ.get(g.api_key_env),
        mode=g.mode,
        timeout_s=g.timeout_s,
        max_retries=g.max_retries,
        max_concurrency=g.max_concurrency,
        rate_limit_per_s=g.rate_limit_per_s,
        backoff_base_s=g.backoff_base_s,
    )
    params = _params(g)

    async def one(prompt, sample):
        result = await teacher.generate(prompt, sample, params)
        store.add(_record(prompt, sample, result, "openai", g.model))
        bar.advance(task)

    try:
        tasks = [asyncio.create_task(one(p, s)) for p, s in todo]
        try:
            await asyncio.gather(*tasks)
        except BaseException:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
    finally:
        await teacher.close()
    return teacher.requests_sent


def _run_local(cfg: RunConfig, store: GenerationStore, todo, bar, task) -> int:
    from kdistill.models.loading import load_causal_lm
    from kdistill.teachers.local_gen import LocalGenerator

    model, tok = load_causal_lm(
        cfg.teacher.model, cfg.teacher.dtype, frozen=True, device=cfg.device
    )
    gen = LocalGenerator(model, tok)
    params = _params(cfg.generate)
    size = cfg.generate.batch_size
    for start in range(0, len(todo), size):
        batch = todo[start : start + size]
        for (prompt, sample), result in zip(batch, gen.generate_batch(batch, params), strict=True):
            store.add(_record(prompt, sample, result, "local", cfg.teacher.model))
        bar.advance(task, len(batch))
    return len(todo)


def _with_shares(records: list[dict]) -> None:
    """Normalised sequence probabilities across each prompt's samples."""
    by: dict[str, list[dict]] = {}
    for r in records:
        by.setdefault(r["prompt_id"], []).append(r)
    for rs in by.values():
        lps = [r["logprob"] for r in rs]
        if any(lp is None for lp in lps):
            continue
        m = max(lps)
        z = sum(math.exp(lp - m) for lp in lps)
        for r in rs:
            r["sequence_share"] = math.exp(r["logprob"] - m) / z


def _training_record(r: dict, mode: str) -> dict:
    """Chat mode: ``messages`` ending in the assistant's reply; completions mode: ``prompt``
    and ``completion`` text. Both keep the teacher's tokens and per-token top logprobs (when
    the backend gave them) for the soft term of a recorded teacher (``teacher.kind: recorded``)."""
    out = {"prompt_id": r["prompt_id"], "sample": r["sample"]}
    if mode == "completions" and r["prompt"] is not None:
        out.update(prompt=r["prompt"], completion=r["completion"])
    else:
        msgs = list(r["messages"] or [{"role": "user", "content": r["prompt"]}])
        out["messages"] = [*msgs, {"role": "assistant", "content": r["completion"]}]
    out["finish_reason"] = r.get("finish_reason")
    # the sample's total log-prob and its share among the prompt's n samples ("I am hungry 60%")
    out["logprob"] = r.get("logprob")
    out["sequence_share"] = r.get("sequence_share")
    if r.get("tokens") and r.get("top_logprobs"):
        out.update(teacher_tokens=r["tokens"], teacher_top_logprobs=r["top_logprobs"])
    return out


def _filters(f):
    out = [length_filter(f.min_chars, f.max_chars)]
    if f.dedup:
        out.append(dedup_filter())
    if f.verify or f.require_think:
        out.append(
            verifier_filter(make_answer_checker(f.answer_regex, f.answer_checker), f.require_think)
        )
    if f.best_of_n:
        out.append(best_of_n_filter())
    return out


def teacher_identity(cfg: RunConfig) -> dict:
    """Who writes the generations: a served model or the local teacher."""
    from kdistill.models.identity import local_model_identity, served_identity

    g = cfg.generate
    if g.backend == "openai":
        return served_identity(g.base_url, g.model)
    return local_model_identity(cfg.teacher.model)


def _recorded_teacher(out: Path) -> dict | None:
    """The teacher recorded in a generations folder (provenance.json, or for a folder from
    before it existed, the backend and model of its first record)."""
    prov = out / "provenance.json"
    if prov.is_file():
        try:
            return json.loads(prov.read_text()).get("teacher")
        except (OSError, ValueError, AttributeError):
            return None
    gens = out / "generations.jsonl"
    if gens.is_file():
        with open(gens, "rb") as fh:
            try:
                first = json.loads(fh.readline())
            except ValueError:
                return None
        if isinstance(first, dict) and first.get("model"):
            return {"name": f"{first.get('backend')}:{first['model']}", "fingerprint": None}
    return None


def check_provenance(cfg: RunConfig, out: Path, *, allow: bool) -> dict:
    """Refuse to add generations of another teacher to a folder (unless ``allow``)."""
    from kdistill.models.identity import describe, same_teacher

    mine = teacher_identity(cfg)
    recorded = _recorded_teacher(out)
    if recorded is None or allow:
        return mine
    legacy = recorded.get("fingerprint") is None
    g = cfg.generate
    name = f"{g.backend}:{g.model if g.backend == 'openai' else cfg.teacher.model}"
    same = recorded["name"] == name if legacy else same_teacher(recorded, mine)
    if not same:
        raise ProvenanceError(
            f"generate.output_dir={str(out)!r} holds generations of {describe(recorded)}, not "
            f"{describe(mine)}; choose another output_dir, or pass --allow-teacher-change to "
            "add to them"
        )
    return mine


def _estimated_bytes(g, n_prompts: int) -> float:
    """Generous size of the records to write: text, tokens and top logprobs as JSON."""
    per_token = 16 + 48 * g.top_logprobs
    return n_prompts * g.n * (2048 + g.max_tokens * per_token)


def _preflight(cfg: RunConfig, allow_teacher_change: bool):
    """Everything checked before a model loads or the folder is touched."""
    from kdistill.files import check_free_space, check_output_folder
    from kdistill.models.loading import check_model_files

    g = cfg.generate
    out = check_output_folder(g.output_dir, "generate.output_dir")
    prompts = load_prompts(g.prompts)
    _filters(g.filters)  # an invalid regex or checker fails now, not after generating
    if g.backend == "local":
        check_model_files(cfg.teacher.model, "teacher.model")
    identity = check_provenance(cfg, out, allow=allow_teacher_change)
    check_free_space(out, _estimated_bytes(g, len(prompts)), "the generations")
    return out, prompts, identity


def run_generate(cfg: RunConfig, *, allow_teacher_change: bool = False) -> dict:
    from kdistill.folders import claim_folder

    out, prompts, identity = _preflight(cfg, allow_teacher_change)
    with claim_folder(out, "generations", field="generate.output_dir"):
        return _generate(cfg, out, prompts, identity)


def _generate(cfg: RunConfig, out: Path, prompts, identity: dict) -> dict:
    g = cfg.generate
    atomic_write_json(out / "provenance.json", {"teacher": identity})
    store = GenerationStore(out / "generations.jsonl")
    if store.quarantined:
        lost = [e for e in store.quarantined if e["key"] is None]
        log.warning(
            f"{len(store.quarantined)} damaged line(s) of generations.jsonl moved to "
            f"{store.quarantine_path.name} ({len(lost)} without a readable id, generated "
            "again; the others are kept there, not paid for again: delete their lines to "
            "regenerate them)"
        )
    todo = [(p, s) for p in prompts for s in range(g.n) if (p.id, s) not in store.done]
    already = len(prompts) * g.n - len(todo)
    try:
        with Progress(console=console, transient=True) as bar:
            task = bar.add_task("teacher generating", total=len(todo))
            if g.backend == "openai":
                sent = asyncio.run(_run_served(cfg, store, todo, bar, task))
            else:
                sent = _run_local(cfg, store, todo, bar, task)
    finally:
        store.close()
    records = sorted(store.records, key=lambda r: (r["prompt_id"], r["sample"]))
    _with_shares(records)
    kept, counts = apply_filters([dict(r) for r in records], _filters(g.filters))
    atomic_write_jsonl(out / "kept.jsonl", [_training_record(r, g.mode) for r in kept])
    p_tok = sum(r["usage"]["prompt_tokens"] for r in records)
    c_tok = sum(r["usage"]["completion_tokens"] for r in records)
    summary = {
        "prompts": len(prompts),
        "samples_per_prompt": g.n,
        "records": len(records),
        "already_done": already,
        "generated_now": len(todo),
        "requests_sent": sent,
        "prompt_tokens": p_tok,
        "completion_tokens": c_tok,
        "cost": p_tok / 1000 * g.cost_per_1k_prompt_tokens
        + c_tok / 1000 * g.cost_per_1k_completion_tokens,
        "filters": counts,
        "kept": len(kept),
        "quarantined": len(store.quarantined),
    }
    atomic_write_json(out / "summary.json", summary)
    say(
        f"{len(records)} generations ({already} already done, {len(todo)} now); "
        f"kept {len(kept)} after filters -> {out / 'kept.jsonl'}"
    )
    for c in counts:
        say(f"  {c['filter']:10s} kept {c['kept']:5d}  dropped {c['dropped']:5d}")
    return summary
