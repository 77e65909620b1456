"""`kdistill eval`: teacher and any number of models on the same held-out blocks."""

from __future__ import annotations

from pathlib import Path

from rich import box
from rich.table import Table

from kdistill.data.holdout import PARTS
from kdistill.errors import InputError
from kdistill.eval.derived import results_file
from kdistill.eval.roles import EvalSetup, SetupError, build_setup
from kdistill.files import atomic_write_json, check_output_folder
from kdistill.log import say


def run_eval(
    teacher_spec: str,
    specs: dict[str, str],
    data: str | None,
    block_size: int,
    held_out_fraction: float,
    max_eval_tokens: int,
    out: Path,
    *,
    seed: int = 0,
    baselines: dict[str, str] | None = None,
    roles: dict[str, str] | None = None,
    speed_budget_s: float = 30.0,
    own_samples: dict | None = None,
    quality_only: bool = False,
    device: str = "auto",
    source_parts: dict | None = None,
    validation_fraction: float = 0.0,
    part: str = "test",
) -> dict:
    """Evaluate the teacher and ``specs`` side by side and write ``out``
    (``quality_only``: LMs get the teacher-forced figures alone, no speed or text extras).

    Causal LMs (bundled names, .gguf, HF folders) on held-out text; trained classifier
    folders (``classifier.json``) on the Fashion-MNIST test split (``--data fashion-mnist``).
    ``baselines``: student -> the baseline it is compared with; ``roles``: name -> role;
    ``own_samples``: settings of the metrics on each LM's own samples (None: skipped);
    ``source_parts``: ``{subset, split}`` of a hub data set (``data.subset`` / ``data.split``).
    ``part``: LMs are scored on the held-out ``test`` records or on the ``validation`` share
    (``validation_fraction``, as the run's ``data.validation_fraction``).
    """
    parts = source_parts or {}
    if "teacher" in specs:
        raise InputError("--model teacher=... is reserved; name the teacher with --teacher")
    from kdistill.models.placement import resolve_device

    resolve_device(device)  # a device this machine lacks: one line, before any model
    try:
        setup = build_setup(["teacher", *specs], "teacher", baselines=baselines, roles=roles)
    except SetupError as exc:
        raise InputError(str(exc)) from None
    from kdistill.models.classifiers import is_classifier_folder

    kinds = {is_classifier_folder(s) for s in [teacher_spec, *specs.values()]}
    if part not in PARTS or (part == "validation" and validation_fraction <= 0):
        raise InputError(
            f"--part {part!r}: give test, or validation with --validation-fraction above 0 "
            "(the run's data.validation_fraction)"
        )
    if kinds == {True} and part != "test":
        raise InputError(
            "--part validation applies to language models; classifier runs report their "
            "validation images (data.validation_examples) in their results"
        )
    if kinds == {True}:
        return _run_eval_classifiers(
            teacher_spec, specs, data or "fashion-mnist", max_eval_tokens, out, seed, setup, device
        )
    if len(kinds) > 1:
        raise InputError(
            f"--teacher {teacher_spec} and --model mix classifier folders and language models; "
            "evaluate one kind at a time (for classifiers pass --teacher <teacher run folder>)"
        )
    if data == "fashion-mnist":
        raise InputError(
            "--data fashion-mnist needs classifier folders (with classifier.json) for "
            "--teacher and --model, e.g. --teacher runs/fmnist_teacher"
        )
    _check_lm_inputs(teacher_spec, specs, data or "kjv", out, parts)
    return _run_eval_lms(
        teacher_spec,
        specs,
        data or "kjv",
        block_size,
        held_out_fraction,
        max_eval_tokens,
        out,
        setup,
        speed_budget_s,
        own_samples,
        quality_only,
        device=device,
        parts={**parts, "validation_fraction": validation_fraction, "part": part},
        seed=seed,
    )


def check_results_path(out: Path) -> None:
    """``--out`` names a file in a folder that can be written (before any model loads)."""
    out = Path(out)
    if out.is_dir() or not out.name:
        raise InputError(f"--out {str(out)!r} is a folder; give a file, e.g. {out}/results.json")
    check_output_folder(out.parent if str(out.parent) else ".", "--out folder")


def _check_lm_inputs(
    teacher_spec: str, specs: dict[str, str], data: str, out: Path, parts: dict
) -> None:
    from kdistill.data.records import load_records
    from kdistill.models.loading import check_model_files

    check_results_path(out)
    check_model_files(teacher_spec, "--teacher")
    for name, spec in specs.items():
        check_model_files(spec, f"--model {name}")
    load_records(data, **parts)


def _run_eval_classifiers(
    teacher_spec: str,
    specs: dict[str, str],
    data: str,
    max_examples: int,
    out: Path,
    seed: int,
    setup: EvalSetup,
    device: str = "auto",
) -> dict:
    from kdistill.data.fashion_mnist import CLASSES, ImageDataset, load_split
    from kdistill.eval.classifier_runner import evaluate_classifiers
    from kdistill.models.classifiers import classifier_folder, load_classifier
    from kdistill.models.placement import place, resolve_device

    if data != "fashion-mnist":
        raise InputError(f"--data {data!r}: classifier folders are evaluated on fashion-mnist")
    from kdistill.data.fashion_mnist import check_available

    check_results_path(out)
    check_available()
    models, dirs = {}, {}
    for name, spec in {"teacher": teacher_spec, **specs}.items():
        models[name] = place(load_classifier(spec)[0], resolve_device(device))
        dirs[name] = classifier_folder(spec)
    held = ImageDataset(*load_split("test", limit=max_examples, seed=seed))
    results = evaluate_classifiers(
        models, "teacher", held, model_dirs=dirs, class_names=list(CLASSES)
    )
    for name, r in results.items():
        r["model"] = teacher_spec if name == "teacher" else specs[name]
    atomic_write_json(out, results_file(results, setup, lm=False))
    say(classifier_table(results, f"Fashion-MNIST test ({len(held)} images)"))
    say(f"results: {out}")
    return results


def _run_eval_lms(
    teacher_spec: str,
    specs: dict[str, str],
    data: str,
    block_size: int,
    held_out_fraction: float,
    max_eval_tokens: int,
    out: Path,
    setup: EvalSetup,
    speed_budget_s: float = 30.0,
    own_samples: dict | None = None,
    quality_only: bool = False,
    *,
    device: str = "auto",
    parts: dict | None = None,
    seed: int = 0,
) -> dict:
    from kdistill.data.lm import CausalCollator, build_lm_datasets
    from kdistill.eval.lm_runner import evaluate_lms
    from kdistill.models.loading import load_causal_lm, resolve_model_path
    from kdistill.models.vocab import shared_vocab_size, tokenizer_fingerprint

    teacher, tok = load_causal_lm(teacher_spec, frozen=True, device=device)
    models, dirs = {"teacher": teacher}, {"teacher": resolve_model_path(teacher_spec)[0]}
    toks = {"teacher": tok}
    t_rows = teacher.get_output_embeddings().weight.shape[0]
    for name, spec in specs.items():
        models[name], toks[name] = load_causal_lm(spec, frozen=True, device=device)
        dirs[name] = resolve_model_path(spec)[0]
        if tokenizer_fingerprint(toks[name]) == tokenizer_fingerprint(tok):  # else bpb only
            rows = models[name].get_output_embeddings().weight.shape[0]
            shared_vocab_size(tok, toks[name], t_rows, rows)  # checks the output dims
    _, held = build_lm_datasets(
        tok,
        data,
        block_size=block_size,
        held_out_fraction=held_out_fraction,
        max_eval_tokens=max_eval_tokens,
        max_train_tokens=block_size,
        seed=seed,
        **(parts or {}),
    )
    results = evaluate_lms(
        models,
        "teacher",
        held,
        CausalCollator(tok.pad_token_id),
        vocab_size=len(tok),
        model_dirs=dirs,
        **(
            {}
            if quality_only
            else text_inputs(data, held_out_fraction, max_eval_tokens, seed, parts=parts)
        ),
        tokenizers=toks,
        window=block_size,
        speed_budget_s=speed_budget_s,
        own_samples=own_samples,
        quality_only=quality_only,
    )
    for name, r in results.items():
        r["model"] = teacher_spec if name == "teacher" else specs[name]
        if name != "teacher" and r.get("perplexity") is not None:
            r["perplexity_retention"] = results["teacher"]["perplexity"] / r["perplexity"]
    atomic_write_json(out, results_file(results, setup, lm=True))
    tokens = results["teacher"].get("eval_tokens")
    say(results_table({n: results[n] for n in setup.roles}, f"held-out {data} ({tokens} tokens)"))
    say(f"results: {out}")
    return results


def text_inputs(
    data: str, held_out_fraction: float, max_eval_tokens: int, seed: int = 0, parts=None
) -> dict:
    """Held-out text for bits per byte (about 4 characters per evaluation token, at most
    8,000 characters) and three prompts (the documents' first 160 characters, or half of a
    shorter one) for agreement on text."""
    from kdistill.data.lm import held_out_texts

    docs = held_out_texts(
        data,
        held_out_fraction=held_out_fraction,
        seed=seed,
        max_chars=min(8000, 4 * (max_eval_tokens or 2000)),
        **(parts or {}),
    )
    prompts = [d[: min(160, len(d) // 2)] for d in docs if len(d) >= 32][:3]
    return {"documents": docs, "prompts": prompts}


def results_table(results: dict, title: str) -> Table:
    """A rich table of LM results (fits 80 columns): params, perplexity, bits per byte, KL to
    the teacher, top-1 agreement, agreement on text, forward tokens/s, peak memory ("-"
    where a figure does not apply, e.g. perplexity across tokenizers)."""
    columns = ("params M", "ppl", "bits/B", "KL", "agree", "text", "tok/s", "peak MB")
    table = _table(title, columns)
    for name, r in results.items():
        table.add_row(
            name,
            _f(r.get("params"), ".1f", 1e-6),
            _f(r.get("perplexity"), ".2f"),
            _f(r.get("bits_per_byte"), ".3f"),
            _f(r.get("kl_to_teacher"), ".3f"),
            _f(r.get("top1_agreement"), ".1%"),
            _f(r.get("text_agreement"), ".0%"),
            _f(r.get("forward_tokens_per_s"), ".0f"),
            _mb(r.get("peak_memory_bytes")),
        )
    return table


def _f(v, spec: str, scale: float = 1.0) -> str:
    return "-" if v is None else format(v * scale, spec)


def _table(title: str, columns: tuple[str, ...]) -> Table:
    """A borderless table with the model's name first; narrow enough for 80 columns."""
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    table.add_column("model", justify="right", no_wrap=True)
    for col in columns:
        table.add_column(col, justify="right")
    return table


def _mb(n) -> str:
    return f"{n / 1e6:.1f}" if n is not None else "-"


def classifier_table(results: dict, title: str) -> Table:
    """A rich table of classifier results: params, accuracy, agreement, KL, ECE, latency."""
    columns = ("params K", "accuracy", "retained", "agree", "KL", "ECE", "p50 ms", "peak MB")
    table = _table(title, columns)
    for name, r in results.items():
        ret = r.get("accuracy_retention")
        table.add_row(
            name,
            f"{r['params'] / 1e3:.1f}",
            f"{r['accuracy']:.1%}",
            f"{ret:.1%}" if ret is not None else "-",
            f"{r['top1_agreement']:.1%}" if "top1_agreement" in r else "-",
            f"{r['kl_to_teacher']:.3f}" if "kl_to_teacher" in r else "-",
            f"{r['ece']:.3f}",
            f"{r['latency_p50_s'] * 1e3:.2f}",
            _mb(r.get("peak_memory_bytes")),
        )
    return table
