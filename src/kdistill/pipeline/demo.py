"""`kdistill demo`: teacher -> distilled student, the same student trained without the teacher
(the named baseline) and the same shape trained from scratch, side by side."""

from __future__ import annotations

import json
import time
from importlib import resources
from pathlib import Path

from rich.rule import Rule

from kdistill.config.loader import load_config
from kdistill.errors import InputError
from kdistill.files import atomic_write_json
from kdistill.log import say

MODELS = ("teacher", "student", "baseline", "scratch")
# seconds for the speed rounds (as a chain's evaluation): at least 3 interleaved rounds each
# of forward and generation; their spread is reported beside the figures
DEMO_SPEED_BUDGET_S = 10.0


def demo_config_path() -> Path:
    return Path(str(resources.files("kdistill") / "configs" / "demo.yaml"))


def demo_configs(output_dir: Path, max_steps: int | None, overrides: list[str] | None = None):
    extra = list(overrides or [])
    if max_steps is not None:
        extra.append(f"training.max_steps={max_steps}")
    student = load_config(demo_config_path(), [f"output_dir={output_dir / 'student'}", *extra])
    baseline = _without_teacher(output_dir / "baseline", extra)
    scratch = _without_teacher(output_dir / "scratch", ["student.from_teacher.init=random", *extra])
    return student, baseline, scratch


def _without_teacher(output_dir: Path, overrides: list[str]):
    """The demo config with ``teacher.kind: none``. It keeps every loss term but those that
    read the teacher's states (e.g. ``hidden``): the student's training without the teacher."""
    cfg = load_config(
        demo_config_path(), [f"output_dir={output_dir}", "teacher.kind=none", *overrides]
    )
    cfg.distill.terms = [t for t in cfg.distill.terms if not t.reads_teacher_states]
    return cfg


def print_table(results: dict) -> None:
    from kdistill.pipeline.evaluate import results_table

    rows = {name: results[name] for name in MODELS}
    say(results_table(rows, "kdistill demo: held-out KJV chapters"))


def run_demo(
    output_dir: str = "runs/demo",
    max_steps: int | None = None,
    *,
    fresh: bool = False,
    overrides: list[str] | None = None,
    jobs: int | None = None,
) -> Path:
    from kdistill.files import check_output_folder
    from kdistill.folders import claim_folder
    from kdistill.pipeline.preflight import check_lm_run

    if jobs is not None and jobs not in (1, 2):
        raise InputError(f"--jobs {jobs}: give 1 (one run after another) or 2 (side by side)")
    out = check_output_folder(output_dir, "--output-dir")
    configs = demo_configs(out, max_steps, overrides)
    for cfg in configs:
        check_lm_run(cfg)
    with claim_folder(out, "demo", field="--output-dir", fresh=fresh):
        return _demo(out, *configs, fresh, demo_jobs(jobs, configs))


def demo_jobs(jobs: int | None, configs) -> int:
    """2 (the student's run beside the baseline's and the from-scratch runs, in two processes
    with half the CPU threads each) when asked, or by default on a CPU with 2 threads or more;
    else 1. Every kernel the runs use gives the same bits at 1 thread as at 2 (checked by
    tests/real/test_threads_same_bits.py), so the figures do not depend on it."""
    import torch

    if jobs is not None:
        return jobs
    accel = torch.cuda.is_available() or torch.backends.mps.is_available()
    on_cpu = all(c.device == "cpu" or (c.device == "auto" and not accel) for c in configs)
    return 2 if on_cpu and torch.get_num_threads() >= 2 else 1


def _demo(out: Path, s_cfg, b_cfg, x_cfg, fresh: bool, jobs: int = 1) -> Path:
    import torch

    from kdistill.config import builders
    from kdistill.data.lm import CausalCollator, build_lm_datasets
    from kdistill.eval.lm_runner import evaluate_lms
    from kdistill.models.loading import load_causal_lm, resolve_model_path
    from kdistill.pipeline.distill_lm import run_distill_lm
    from kdistill.pipeline.evaluate import text_inputs

    timings = {}
    t0 = time.perf_counter()
    dirs = {}
    steps = (
        ("student", s_cfg, "distill", "1/4 distilling the student from the teacher"),
        ("baseline", b_cfg, "baseline", "2/4 training the same student without the teacher"),
        ("scratch", x_cfg, "scratch", "3/4 training the same shape from scratch (no teacher)"),
    )
    if jobs == 2:
        from kdistill.pipeline.demo_jobs import train_side_by_side

        say(Rule("[bold]1-3/4 the student (with the teacher) beside the baseline and scratch runs"))
        seconds = train_side_by_side([(n, c) for n, c, _, _ in steps], out, fresh)
        for name, cfg, key, _ in steps:
            dirs[name] = Path(cfg.output_dir)
            timings[f"{key}_seconds"] = seconds[name]
        timings["side_by_side"] = True
        timings["training_wall_seconds"] = time.perf_counter() - t0
    else:
        for name, cfg, key, title in steps:
            t = time.perf_counter()
            say(Rule(f"[bold]{title}"))
            dirs[name] = run_distill_lm(cfg, fresh=fresh)
            timings[f"{key}_seconds"] = time.perf_counter() - t
    t2 = time.perf_counter()
    say(Rule("[bold]4/4 evaluating all four on held-out text"))
    teacher, tok = load_causal_lm(s_cfg.teacher.model, frozen=True)
    models = {"teacher": teacher}
    for name, d in dirs.items():
        models[name], _ = load_causal_lm(str(d / "model"), frozen=True)
    _, held = build_lm_datasets(tok, s_cfg.data.source, **builders.data_kwargs(s_cfg))
    data = s_cfg.data
    torch.manual_seed(0)
    results = evaluate_lms(
        models,
        "teacher",
        held,
        CausalCollator(tok.pad_token_id),
        vocab_size=len(tok),
        model_dirs={
            "teacher": resolve_model_path(s_cfg.teacher.model)[0],
            **{name: d / "model" for name, d in dirs.items()},
        },
        tokenizers=dict.fromkeys(models, tok),
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
        speed_budget_s=DEMO_SPEED_BUDGET_S,
    )
    timings["eval_seconds"] = time.perf_counter() - t2
    timings["total_seconds"] = time.perf_counter() - t0
    for name, d in dirs.items():
        summary = json.loads((d / "train_summary.json").read_text())
        results[name]["train"] = summary
        results[name]["run_dir"] = str(d)
    results["teacher"]["model"] = s_cfg.teacher.model
    from kdistill.eval.derived import results_file
    from kdistill.eval.roles import build_setup

    setup = build_setup(list(results), roles={"scratch": "baseline"})
    payload = results_file(results, setup, lm=True, timings=timings)
    atomic_write_json(out / "results.json", payload)
    print_table(results)
    d = payload["derived"]
    say(
        f"student: {d['student_size_fraction']:.0%} of the teacher's parameters, "
        f"{d['student_speedup']:.2f}x its forward speed; perplexity "
        f"{results['student']['perplexity']:.2f} vs baseline "
        f"{results['baseline']['perplexity']:.2f} (from scratch "
        f"{results['scratch']['perplexity']:.1f})"
        f" -> teacher {'helped' if d['teacher_helped'] else 'did NOT help'}"
    )
    from kdistill.report import render_report

    html_path, md_path = render_report([out / "results.json"], out)
    say(f"results: {out / 'results.json'}  ({timings['total_seconds']:.0f} s)")
    say(f"report:  {html_path}  (and {md_path.name})")
    return out / "results.json"
