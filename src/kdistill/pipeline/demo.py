"""`kdistill demo`: teacher -> distilled student and a no-teacher baseline, side by side."""

from __future__ import annotations

import json
import time
from importlib import resources
from pathlib import Path

from rich.rule import Rule

from kdistill.config.loader import load_config
from kdistill.files import atomic_write_json
from kdistill.log import say


def demo_config_path() -> Path:
    return Path(str(resources.files("kdistill") / "configs" / "demo.yaml"))


def demo_configs(output_dir: Path, max_steps: int | None, overrides: list[str] | None = None):
    extra = list(overrides or [])
    if max_steps is not None:
        extra.append(f"training.max_steps={max_steps}")
    student = load_config(demo_config_path(), [f"output_dir={output_dir / 'student'}", *extra])
    baseline = load_config(
        demo_config_path(),
        [f"output_dir={output_dir / 'baseline'}", "teacher.kind=none", *extra],
    )
    return student, baseline


def print_table(results: dict) -> None:
    from kdistill.pipeline.evaluate import results_table

    rows = {name: results[name] for name in ("teacher", "student", "baseline")}
    say(results_table(rows, "kdistill demo: held-out KJV chapters"))


def run_demo(
    output_dir: str = "runs/demo",
    max_steps: int | None = None,
    *,
    fresh: bool = False,
    overrides: list[str] | None = None,
) -> Path:
    from kdistill.files import check_output_folder
    from kdistill.folders import claim_folder
    from kdistill.pipeline.preflight import check_lm_run

    out = check_output_folder(output_dir, "--output-dir")
    s_cfg, b_cfg = demo_configs(out, max_steps, overrides)
    check_lm_run(s_cfg)
    check_lm_run(b_cfg)
    with claim_folder(out, "demo", field="--output-dir", fresh=fresh):
        return _demo(out, s_cfg, b_cfg, fresh)


def _demo(out: Path, s_cfg, b_cfg, fresh: bool) -> Path:
    import torch

    from kdistill.config import builders
    from kdistill.data.lm import CausalCollator, build_lm_datasets
    from kdistill.eval.lm_runner import evaluate_lms
    from kdistill.models.loading import load_causal_lm, resolve_model_path
    from kdistill.pipeline.distill_lm import run_distill_lm
    from kdistill.pipeline.evaluate import text_inputs

    timings = {}
    t0 = time.perf_counter()
    say(Rule("[bold]1/3 distilling the student from the teacher"))
    s_dir = run_distill_lm(s_cfg, fresh=fresh)
    timings["distill_seconds"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    say(Rule("[bold]2/3 training the same-size baseline without the teacher"))
    b_dir = run_distill_lm(b_cfg, fresh=fresh)
    timings["baseline_seconds"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    say(Rule("[bold]3/3 evaluating teacher, student and baseline on held-out text"))
    teacher, tok = load_causal_lm(s_cfg.teacher.model, frozen=True)
    student, _ = load_causal_lm(str(s_dir / "model"), frozen=True)
    baseline, _ = load_causal_lm(str(b_dir / "model"), frozen=True)
    _, held = build_lm_datasets(tok, s_cfg.data.source, **builders.data_kwargs(s_cfg))
    data = s_cfg.data
    torch.manual_seed(0)
    results = evaluate_lms(
        {"teacher": teacher, "student": student, "baseline": baseline},
        "teacher",
        held,
        CausalCollator(tok.pad_token_id),
        vocab_size=len(tok),
        model_dirs={
            "teacher": resolve_model_path(s_cfg.teacher.model)[0],
            "student": s_dir / "model",
            "baseline": b_dir / "model",
        },
        tokenizers={"teacher": tok, "student": tok, "baseline": tok},
        **text_inputs(
            data.source,
            data.held_out_fraction,
            data.max_eval_tokens,
            s_cfg.seed,
            parts={
                **builders.source_kwargs(s_cfg),
                "validation_fraction": data.validation_fraction,
            },
        ),
        window=data.block_size,
    )
    timings["eval_seconds"] = time.perf_counter() - t2
    timings["total_seconds"] = time.perf_counter() - t0
    for name, d in (("student", s_dir), ("baseline", b_dir)):
        summary = json.loads((d / "train_summary.json").read_text())
        results[name]["train"] = summary
        results[name]["run_dir"] = str(d)
    results["teacher"]["model"] = s_cfg.teacher.model
    from kdistill.eval.derived import results_file
    from kdistill.eval.roles import build_setup

    payload = results_file(results, build_setup(list(results)), lm=True, timings=timings)
    atomic_write_json(out / "results.json", payload)
    print_table(results)
    d = payload["derived"]
    say(
        f"student: {d['student_size_fraction']:.0%} of the teacher's parameters, "
        f"{d['student_speedup']:.2f}x its forward speed; perplexity "
        f"{results['student']['perplexity']:.2f} vs baseline "
        f"{results['baseline']['perplexity']:.2f}"
        f" -> teacher {'helped' if d['teacher_helped'] else 'did NOT help'}"
    )
    from kdistill.report import render_report

    html_path, md_path = render_report([out / "results.json"], out)
    say(f"results: {out / 'results.json'}  ({timings['total_seconds']:.0f} s)")
    say(f"report:  {html_path}  (and {md_path.name})")
    return out / "results.json"
