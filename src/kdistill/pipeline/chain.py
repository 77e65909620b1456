"""`kdistill chain SPEC`: teacher -> assistant(s) -> student (teacher-assistant distillation,
Mirzadeh et al. 2020). Each stage is an ordinary run of the base config, in
``<output_dir>/<stage>/``, taught by the model of the stage before it (or a named earlier
stage, or the base teacher); then every stage's model is evaluated beside the teacher in one
run and reported (``eval/results.json``, ``eval/report.html``).

Resumable per stage: a finished stage is left as it is on a re-run, an interrupted one
resumes from its own checkpoints, and the evaluation runs again over all stages. Every
stage's config is validated before the first one runs.
"""

from __future__ import annotations

import json
from pathlib import Path

from kdistill.config.chain import BASE, ChainSpec, load_chain
from kdistill.files import atomic_write_json
from kdistill.log import say


def stage_configs(spec: ChainSpec, base: Path) -> list:
    """Each stage's run config: the base config, the stage's overrides, its folder, and its
    teacher (the model folder of the stage that teaches it)."""
    from kdistill.config.loader import load_config

    out = Path(spec.output_dir)
    configs = []
    for i, stage in enumerate(spec.stages):
        over = [f"{k}={json.dumps(v)}" for k, v in stage.overrides.items()]
        over.append(f"output_dir={out / stage.name}")
        if spec.seed is not None:
            over.append(f"seed={spec.seed}")
        teacher = spec.teacher_of(i)
        if teacher != BASE:
            over.append(f"teacher.model={out / teacher / 'model'}")
        configs.append(load_config(base, over))
    return configs


def _roles(spec: ChainSpec, configs) -> dict[str, str]:
    """A stage without a teacher is a baseline, one that teaches another stage an
    assistant, the rest students."""
    teachers = {spec.teacher_of(i) for i in range(len(spec.stages))}
    roles = {}
    for stage, cfg in zip(spec.stages, configs, strict=True):
        if cfg.teacher.kind == "none":
            roles[stage.name] = "baseline"
        else:
            roles[stage.name] = "assistant" if stage.name in teachers else "student"
    return roles


SETTINGS = "chain_eval.json"


def _evaluated(results: Path, stage_dirs: list[Path], settings: dict) -> bool:
    """The evaluation is newer than every stage's finished model and was made with the same
    evaluation settings (nothing to redo)."""
    from kdistill.pipeline.run_dir import DONE, FINAL

    made_with = results.parent / SETTINGS
    if not results.is_file() or not made_with.is_file():
        return False
    if json.loads(made_with.read_text()) != settings:
        return False
    done = [d / FINAL / DONE for d in stage_dirs]
    return all(f.is_file() and f.stat().st_mtime_ns <= results.stat().st_mtime_ns for f in done)


def run_chain(spec_path: str | Path, overrides: list[str] | None = None, *, fresh: bool = False):
    """Run every stage in order (skipping finished ones), then evaluate them together."""
    from kdistill.pipeline.distill_lm import run_distill_lm

    spec, base = load_chain(spec_path, overrides)
    configs = stage_configs(spec, base)  # every stage validated before the first runs
    if any(cfg.task != "lm" for cfg in configs):
        from kdistill.errors import InputError

        raise InputError("kdistill chain distils language models (task: lm)")
    out = Path(spec.output_dir)
    from kdistill.folders import claim_folder

    # the chain's folder is kdistill's (a folder of someone else's files is refused); each
    # stage claims its own run folder inside it, and --fresh goes to the stages
    with claim_folder(out, "chain", field="chain.output_dir"):
        for i, (stage, cfg) in enumerate(zip(spec.stages, configs, strict=True)):
            by = spec.teacher_of(i)
            say(f"chain stage {i + 1}/{len(configs)}: {stage.name} (taught by {by})")
            run_distill_lm(cfg, fresh=fresh)
        return _evaluate(spec, base, configs, out)


def _evaluate(spec: ChainSpec, base: Path, configs, out: Path) -> Path:
    """Every stage's model beside the base teacher, in one evaluation and report."""
    from kdistill.config import builders
    from kdistill.config.loader import load_config
    from kdistill.pipeline.evaluate import run_eval
    from kdistill.report import render_report

    first = load_config(base, [] if spec.seed is None else [f"seed={spec.seed}"])
    d = first.data
    results_path = out / "eval" / "results.json"
    stage_dirs = [out / s.name for s in spec.stages]
    settings = {**spec.eval.model_dump(), "seed": first.seed}
    if _evaluated(results_path, stage_dirs, settings):
        say(f"chain evaluation is up to date: {results_path}")
        return results_path
    run_eval(
        first.teacher.model,
        {s.name: str(out / s.name / "model") for s in spec.stages},
        d.source,
        d.block_size,
        d.held_out_fraction,
        spec.eval.max_eval_tokens,
        results_path,
        seed=first.seed,
        roles=_roles(spec, configs),
        speed_budget_s=spec.eval.speed_budget_s,
        source_parts=builders.source_kwargs(first),
        device=first.device,
    )
    atomic_write_json(results_path.parent / SETTINGS, settings)
    html, _ = render_report([results_path], results_path.parent, stage_dirs)
    say(f"chain report: {html}")
    return results_path
