"""Command line: ``kdistill distill|train-teacher|demo|--version``.

``main(argv) -> int`` never raises for user mistakes: it prints one line to stderr and
returns 2. Set ``KDISTILL_DEBUG=1`` to see the full traceback instead.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from kdistill import __version__
from kdistill.cli.errors import cli_exception, close_progress_bars, error_line, quiet_third_party
from kdistill.cli.eval_cmd import eval_
from kdistill.cli.options import (
    DEVICE_HELP,
    AllowTeacherOpt,
    ConfigArg,
    FreshOpt,
    OverridesArg,
)
from kdistill.log import say

app = typer.Typer(
    name="kdistill",
    help="Knowledge distillation: train a small student to reproduce a large teacher.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool):
    if value:
        typer.echo(f"kdistill {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="print version")
    ] = False,
):
    """kdistill command line."""


@app.command()
def distill(
    config: ConfigArg,
    overrides: OverridesArg = None,
    fresh: FreshOpt = False,
    resume: Annotated[
        bool, typer.Option(help="continue from the latest complete checkpoint in the run folder")
    ] = True,
    allow_teacher_change: AllowTeacherOpt = False,
):
    """Distil a teacher into a student as CONFIG says (resumes automatically; SIGTERM or
    SIGUSR1 saves a complete checkpoint and exits 128 + the signal number)."""
    from kdistill.config.loader import load_config

    cfg = load_config(config, overrides or [])
    if cfg.task == "classifier":
        from kdistill.pipeline.classifier import run_distill_classifier

        out = run_distill_classifier(cfg, fresh=fresh, resume=resume)
    else:
        from kdistill.pipeline.distill_lm import run_distill_lm

        out = run_distill_lm(
            cfg, fresh=fresh, resume=resume, allow_teacher_change=allow_teacher_change
        )
    say(f"student saved in {out / 'model'}")


@app.command("train-teacher")
def train_teacher(config: ConfigArg, overrides: OverridesArg = None, fresh: FreshOpt = False):
    """Stage 1: train or fine-tune the teacher with hard labels."""
    from kdistill.config.loader import load_config
    from kdistill.pipeline.train_teacher import run_train_teacher

    cfg = load_config(config, overrides or [])
    out = run_train_teacher(cfg, fresh=fresh)
    say(f"teacher saved in {out / 'model'}")


@app.command()
def cache(
    config: Annotated[str, typer.Argument(help="YAML run config, or `plan` then the config")],
    overrides: OverridesArg = None,
):
    """Run the teacher once over the training data and store sparse soft labels in
    cache.dir (resumable). `kdistill cache plan CONFIG` measures settings first."""
    from kdistill.config.loader import load_config

    args = list(overrides or [])
    if config == "plan":
        if not args:
            raise typer.BadParameter("usage: kdistill cache plan CONFIG [key=value ...]")
        from kdistill.pipeline.cache import run_cache_plan

        run_cache_plan(load_config(args[0], args[1:]))
        return
    from kdistill.pipeline.cache import run_cache

    run_cache(load_config(config, args))


@app.command()
def sweep(
    spec: Annotated[Path, typer.Argument(help="sweep spec YAML (a `sweep:` section)")],
    overrides: Annotated[
        list[str] | None,
        typer.Argument(help="overrides of the spec, e.g. seeds=5 workers=2"),
    ] = None,
    fresh: FreshOpt = False,
):
    """Run every (arm, grid point, seed) cell of SPEC as a run of its base config, then write
    sweep.json (mean and Student-t interval per setting, paired per-seed differences against
    the baseline arm) and sweep.html. Re-running the same command skips finished cells."""
    from kdistill.pipeline.sweep import run_sweep

    run_sweep(spec, overrides or [], fresh=fresh)


@app.command()
def chain(
    spec: Annotated[Path, typer.Argument(help="chain spec YAML (a `chain:` section)")],
    overrides: Annotated[
        list[str] | None,
        typer.Argument(help="overrides of the spec, e.g. output_dir=runs/chain2"),
    ] = None,
    fresh: FreshOpt = False,
):
    """Teacher -> assistant(s) -> student: each stage of SPEC distils from the one before it
    (resumable per stage), then all are evaluated beside the teacher and reported."""
    from kdistill.pipeline.chain import run_chain

    run_chain(spec, overrides or [], fresh=fresh)


@app.command()
def inspect(
    prompt: Annotated[str, typer.Option(help="text whose next token the teacher predicts")] = (
        "I am hungry, I want to eat"
    ),
    model: Annotated[str, typer.Option(help="bundled name, .gguf or HF folder")] = "smollm2-135m",
    temperatures: Annotated[str, typer.Option(help="comma-separated T values")] = "0.2,1,2,5,20",
    sequences: Annotated[int, typer.Option(min=0, help="also sample N continuations")] = 0,
    out: Annotated[Path, typer.Option(help="folder for inspect.json and the plot")] = Path(
        "runs/inspect"
    ),
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "auto",
):
    """Show the teacher's next-token soft labels at several temperatures (table + plot)."""
    from kdistill.pipeline.inspect import run_inspect

    try:
        temps = [float(t) for t in temperatures.split(",") if t.strip()]
    except ValueError as exc:
        raise typer.BadParameter(f"--temperatures must be numbers, got {temperatures!r}") from exc
    if not temps or any(t <= 0 for t in temps):
        raise typer.BadParameter("--temperatures must be > 0, e.g. 0.5,1,2")
    run_inspect(model, prompt, temps, sequences, out, device)


@app.command()
def datacheck(
    distill_data: Annotated[str, typer.Option(help="kjv, pydoc, a file; :train/:heldout")],
    production_data: Annotated[str, typer.Option(help="a sample of production text")],
    model: Annotated[str, typer.Option(help="the teacher")] = "smollm2-135m",
    max_tokens: Annotated[int, typer.Option(min=256, help="tokens read from each")] = 2048,
):
    """Score how well the distillation data matches production data; warn on mismatch."""
    from kdistill.pipeline.datacheck import run_datacheck

    run_datacheck(model, distill_data, production_data, max_tokens)


@app.command()
def generate(
    config: ConfigArg,
    overrides: OverridesArg = None,
    allow_teacher_change: AllowTeacherOpt = False,
):
    """Teacher writes completions for generate.prompts (local model or OpenAI-compatible
    server), exactly once per (prompt, sample), resumable; filtered into kept.jsonl."""
    from kdistill.config.loader import load_config
    from kdistill.pipeline.generate import run_generate

    run_generate(load_config(config, overrides or []), allow_teacher_change=allow_teacher_change)


app.command("eval")(eval_)


@app.command()
def report(
    results: Annotated[list[Path], typer.Argument(help="results.json file(s) from demo/eval")],
    logs: Annotated[
        list[Path] | None, typer.Option("--logs", help="run folder(s) with kd_log.jsonl")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="output folder (default: beside the first results file)")
    ] = None,
):
    """Render a self-contained HTML report card (+ Markdown) from results JSON files."""
    from kdistill.errors import MissingFileError
    from kdistill.report import render_report

    for p in results:
        if not p.is_file():
            raise MissingFileError(f"results file {str(p)!r} not found")
    html_path, md_path = render_report(results, out or results[0].parent, logs)
    say(f"report: {html_path} and {md_path}")


@app.command()
def export(
    source: Annotated[
        str, typer.Argument(help="a run folder (config.yaml + model/), a model folder or name")
    ],
    out: Annotated[Path, typer.Option(help="folder for hf/, *.gguf and README.md")],
    gguf: Annotated[
        str | None,
        typer.Option(
            help="GGUF types, comma-separated: f32, f16, q8_0 (gguf), q4_k_m, q5_k_m, "
            "q6_k (llama.cpp's quantizer, the serve extra)"
        ),
    ] = None,
    hf: Annotated[bool, typer.Option("--hf/--no-hf", help="write the Hugging Face folder")] = True,
    int8: Annotated[
        bool,
        typer.Option(
            "--int8", help="also write int8/: weight-only int8 (torchao, the compress extra)"
        ),
    ] = False,
    tokenizer_gguf: Annotated[
        str | None,
        typer.Option(help="GGUF whose tokenizer the student shares (default: the run's teacher)"),
    ] = None,
    gguf_pre: Annotated[
        str | None,
        typer.Option(
            help="llama.cpp pre-tokenizer name, to build the GGUF tokenizer from a "
            "byte-level BPE tokenizer.json"
        ),
    ] = None,
    results: Annotated[
        str | None,
        typer.Option(help="results.json from `kdistill eval`/demo: figures for the card"),
    ] = None,
    name: Annotated[
        str | None, typer.Option(help="the model's name in --results and on the card")
    ] = None,
    fresh: FreshOpt = False,
):
    """Export a student: a Hugging Face folder (safetensors, tokenizer, chat template) and GGUF
    files for llama.cpp, each with a model card (teacher, data, method, figures, license)."""
    from kdistill.pipeline.export import run_export

    run_export(
        source,
        str(out),
        hf=hf,
        int8=int8,
        gguf=[k.strip() for k in gguf.split(",") if k.strip()] if gguf else None,
        tokenizer_gguf=tokenizer_gguf,
        gguf_pre=gguf_pre,
        results=results,
        name=name,
        fresh=fresh,
    )


@app.command()
def demo(
    output_dir: Annotated[Path, typer.Option(help="where runs and results.json go")] = Path(
        "runs/demo"
    ),
    max_steps: Annotated[int | None, typer.Option(min=1, help="training steps per model")] = None,
    fresh: FreshOpt = False,
    jobs: Annotated[
        int | None,
        typer.Option(
            help="2: the student's run beside the other two, in two processes with half the "
            "CPU threads each (the default on a CPU with 2+ threads; the same figures); "
            "1: one run after another"
        ),
    ] = None,
    overrides: OverridesArg = None,
):
    """Distil the bundled SmolLM2-135M into a student pruned from it (16 layers, narrower MLP:
    half its parameters) on KJV, train the same student without the teacher (the baseline)
    and the same shape from scratch, evaluate all four and write results.json. KEY=VALUE
    overrides apply to all three runs (e.g. seed=1)."""
    from kdistill.pipeline.demo import run_demo

    run_demo(str(output_dir), max_steps, fresh=fresh, overrides=overrides or [], jobs=jobs)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; return the exit code (0 ok, 2 user error, 128+N stopped by signal N).

    User mistakes (:class:`~kdistill.errors.KdistillError`, command-line usage errors, a full
    disk or an unwritable path) print one line and return 2; anything else is a bug and keeps
    its traceback."""
    from kdistill.allocator import keep_freed_memory
    from kdistill.errors import KdistillError, Preempted
    from kdistill.files import is_environment_error, output_error

    quiet_third_party()
    command = typer.main.get_command(app)
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv is None:  # the installed entry point: this process is ours to tune
            keep_freed_memory()
        rv = command.main(args=args, prog_name="kdistill", standalone_mode=False)
        return rv if isinstance(rv, int) else 0
    except KdistillError as exc:
        if os.environ.get("KDISTILL_DEBUG"):
            raise
        return error_line(str(exc) or type(exc).__name__)
    except Preempted as exc:
        close_progress_bars()
        print(f"kdistill: {exc}", file=sys.stderr)
        return 128 + exc.signum
    except Exception as exc:
        if cli_exception(exc, "Exit"):
            return exc.exit_code
        if cli_exception(exc, "Abort"):
            print("kdistill: aborted", file=sys.stderr)
            return 130
        if cli_exception(exc, "NoArgsIsHelpError"):
            print(exc.format_message())
            return 2
        if cli_exception(exc, "ClickException"):
            return error_line(exc.format_message())
        if is_environment_error(exc) and not os.environ.get("KDISTILL_DEBUG"):
            return error_line(str(output_error(exc)))
        raise


def run() -> None:
    code = main()
    if code == 0:  # every rank of a torchrun/accelerate launch leaves together
        from kdistill.training.distributed import end_distributed

        end_distributed()
    sys.exit(code)


if __name__ == "__main__":
    run()
