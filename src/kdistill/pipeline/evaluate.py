"""`kdistill eval`: teacher and any number of models on the same held-out blocks."""

from __future__ import annotations

from pathlib import Path

from rich import box
from rich.table import Table

from kdistill.errors import InputError
from kdistill.eval.derived import derive
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
) -> dict:
    """Evaluate the teacher and ``specs`` side by side and write ``out``.

    Causal LMs (bundled names, .gguf, HF folders) on held-out text; trained classifier
    folders (``classifier.json``) on the Fashion-MNIST test split (``--data fashion-mnist``).
    """
    if "teacher" in specs:
        raise InputError("--model teacher=... is reserved; name the teacher with --teacher")
    from kdistill.models.classifiers import is_classifier_folder

    kinds = {is_classifier_folder(s) for s in [teacher_spec, *specs.values()]}
    if kinds == {True}:
        return _run_eval_classifiers(
            teacher_spec, specs, data or "fashion-mnist", max_eval_tokens, out, seed
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
    _check_lm_inputs(teacher_spec, specs, data or "kjv", out)
    return _run_eval_lms(
        teacher_spec, specs, data or "kjv", block_size, held_out_fraction, max_eval_tokens, out
    )


def check_results_path(out: Path) -> None:
    """``--out`` names a file in a folder that can be written (before any model loads)."""
    out = Path(out)
    if out.is_dir() or not out.name:
        raise InputError(f"--out {str(out)!r} is a folder; give a file, e.g. {out}/results.json")
    check_output_folder(out.parent if str(out.parent) else ".", "--out folder")


def _check_lm_inputs(teacher_spec: str, specs: dict[str, str], data: str, out: Path) -> None:
    from kdistill.data.lm import load_records
    from kdistill.models.loading import check_model_files

    check_results_path(out)
    check_model_files(teacher_spec, "--teacher")
    for name, spec in specs.items():
        check_model_files(spec, f"--model {name}")
    load_records(data)


def _run_eval_classifiers(
    teacher_spec: str, specs: dict[str, str], data: str, max_examples: int, out: Path, seed: int
) -> dict:
    from kdistill.data.fashion_mnist import CLASSES, ImageDataset, load_split
    from kdistill.eval.classifier_runner import evaluate_classifiers
    from kdistill.models.classifiers import classifier_folder, load_classifier

    if data != "fashion-mnist":
        raise InputError(f"--data {data!r}: classifier folders are evaluated on fashion-mnist")
    from kdistill.data.fashion_mnist import check_available

    check_results_path(out)
    check_available()
    models, dirs = {}, {}
    for name, spec in {"teacher": teacher_spec, **specs}.items():
        models[name], _ = load_classifier(spec)
        dirs[name] = classifier_folder(spec)
    held = ImageDataset(*load_split("test", limit=max_examples, seed=seed))
    results = evaluate_classifiers(
        models, "teacher", held, model_dirs=dirs, class_names=list(CLASSES)
    )
    for name, r in results.items():
        r["model"] = teacher_spec if name == "teacher" else specs[name]
    atomic_write_json(out, {**results, "derived": derive(results, lm=False)})
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
) -> dict:
    from kdistill.data.lm import CausalCollator, build_lm_datasets
    from kdistill.eval.lm_runner import evaluate_lms
    from kdistill.models.loading import load_causal_lm, resolve_model_path
    from kdistill.models.vocab import shared_vocab_size

    teacher, tok = load_causal_lm(teacher_spec, frozen=True)
    models, dirs = {"teacher": teacher}, {"teacher": resolve_model_path(teacher_spec)[0]}
    for name, spec in specs.items():
        m, m_tok = load_causal_lm(spec, frozen=True)
        shared_vocab_size(
            tok,
            m_tok,
            teacher.get_output_embeddings().weight.shape[0],
            m.get_output_embeddings().weight.shape[0],
        )
        models[name] = m
        dirs[name] = resolve_model_path(spec)[0]
    _, held = build_lm_datasets(
        tok,
        data,
        block_size=block_size,
        held_out_fraction=held_out_fraction,
        max_eval_tokens=max_eval_tokens,
        max_train_tokens=block_size,
    )
    results = evaluate_lms(
        models,
        "teacher",
        held,
        CausalCollator(tok.pad_token_id),
        vocab_size=len(tok),
        model_dirs=dirs,
    )
    for name, r in results.items():
        r["model"] = teacher_spec if name == "teacher" else specs[name]
        if name != "teacher":
            r["perplexity_retention"] = results["teacher"]["perplexity"] / r["perplexity"]
    atomic_write_json(out, {**results, "derived": derive(results, lm=True)})
    table = results_table(results, f"held-out {data} ({results['teacher']['eval_tokens']} tokens)")
    say(table)
    say(f"results: {out}")
    return results


def results_table(results: dict, title: str) -> Table:
    """A rich table of LM results (fits 80 columns): params, perplexity, KL to the teacher,
    top-1 agreement, ECE, forward tokens/s, peak memory."""
    table = _table(title, ("params M", "perplexity", "KL", "agree", "ECE", "tok/s", "peak MB"))
    for name, r in results.items():
        speed = r.get("forward_tokens_per_s")
        table.add_row(
            name,
            f"{r['params'] / 1e6:.1f}",
            f"{r['perplexity']:.2f}",
            f"{r['kl_to_teacher']:.3f}",
            f"{r['top1_agreement']:.1%}",
            f"{r['ece']:.3f}" if r.get("ece") is not None else "-",
            f"{speed:.0f}" if speed else "-",
            _mb(r.get("peak_memory_bytes")),
        )
    return table


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
