"""`kdistill sweep SPEC`: every (arm, grid point, seed) of a sweep spec as an ordinary run of
the base config, one folder per cell, then one results file with a Student-t interval per
(arm, point) and paired per-seed differences against the baseline arm, and a report page.

Resumable: a cell whose ``cell.json`` is written is done and skipped on a re-run (one command,
resumed across days); a cell interrupted mid-run resumes from its own checkpoints. Every
cell's config is validated before the first one runs. A failing cell is recorded (its
``cell.json`` says so; a re-run tries it again), the others still run, and the command exits
non-zero naming it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import Any

from kdistill.config.sweep import SweepSpec, load_sweep
from kdistill.errors import InputError, KdistillError, Preempted
from kdistill.files import atomic_write_json
from kdistill.log import say

CELL_FILE = "cell.json"
RESULTS_FILE = "sweep.json"


class SweepError(KdistillError, RuntimeError):
    """Some cells failed (each recorded in its cell.json with the error)."""


@dataclass
class Cell:
    arm: str
    point: dict[str, Any]
    seed: int
    overrides: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        parts = [self.arm, *(f"{_short(k, self.point)}={_fmt(v)}" for k, v in self.point.items())]
        return _safe("-".join([*parts, f"s{self.seed}"]))

    @property
    def group(self) -> str:
        """The (arm, grid point) this cell is one seed of."""
        return _safe("-".join([self.arm, *(f"{k}={_fmt(v)}" for k, v in self.point.items())]))


def _short(key: str, point: dict) -> str:
    last = key.rsplit(".", 1)[-1]
    clash = sum(k.rsplit(".", 1)[-1] == last for k in point) > 1
    return key if clash else last


def _fmt(v) -> str:
    return json.dumps(v) if not isinstance(v, str) else v


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=+-]+", "_", text)


def plan_cells(spec: SweepSpec) -> list[Cell]:
    """Every cell, seeds innermost-last so that one seed of every point runs before the next
    seed (a sweep stopped early still has comparable cells)."""
    groups = []
    for arm_name, arm in spec.arms.items():
        grid = {k: v for k, v in spec.grid.items() if k not in arm.skip_grid}
        grid.update(arm.grid)
        keys = list(grid)
        for values in product(*(grid[k] for k in keys)):
            point = dict(zip(keys, values))
            over = {**arm.overrides, **point}
            groups.append((arm_name, point, [f"{k}={_fmt(v)}" for k, v in over.items()]))
    return [
        Cell(arm, point, seed, over) for seed in spec.seed_list() for arm, point, over in groups
    ]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def cell_config(base: Path, cell: Cell, cell_dir: Path, threads: int | None):
    from kdistill.config.loader import load_config

    extra = [f"output_dir={cell_dir / 'run'}", f"seed={cell.seed}"]
    if threads:
        extra.append(f"training.num_threads={threads}")
    return load_config(base, [*cell.overrides, *extra])


def _numbers(r: dict) -> dict:
    return {k: v for k, v in r.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def run_cell(base: Path, cell: Cell, cell_dir: Path, threads: int | None) -> dict:
    """Train (and for LMs evaluate) one cell in this process; return its metrics per role."""
    cfg = cell_config(base, cell, cell_dir, threads)
    if cfg.task == "classifier":
        from kdistill.pipeline.classifier import run_distill_classifier

        run_dir = run_distill_classifier(cfg)
        results = json.loads((run_dir / "results.json").read_text())
    else:
        from kdistill.config import builders
        from kdistill.pipeline.distill_lm import run_distill_lm
        from kdistill.pipeline.evaluate import run_eval

        run_dir = run_distill_lm(cfg)
        d = cfg.data

        def evaluate(part: str, name: str) -> dict:
            return run_eval(
                cfg.teacher.model,
                {"student": str(run_dir / "model")},
                d.source,
                d.block_size,
                d.held_out_fraction,
                d.max_eval_tokens,
                cell_dir / name,
                seed=cfg.seed,
                quality_only=True,
                source_parts=builders.source_kwargs(cfg),
                device=cfg.device,
                validation_fraction=d.validation_fraction,
                part=part,
            )

        results = evaluate("test", "eval.json")
        if d.validation_fraction > 0:  # the figures settings are chosen on
            for role, r in evaluate("validation", "eval_validation.json").items():
                results.setdefault(role, {}).update(
                    {f"validation_{k}": v for k, v in _numbers(r).items()}
                )
    me = next(r for r in ("student", "baseline", "teacher") if r in results)
    out = {"cell": _numbers(results[me])}
    if me != "teacher" and "teacher" in results:
        out["teacher"] = _numbers(results["teacher"])
    return out


def _cell_record(cell: Cell, base_sha: str, metrics: dict, seconds: float) -> dict:
    return {
        "name": cell.name,
        "group": cell.group,
        "arm": cell.arm,
        "point": cell.point,
        "seed": cell.seed,
        "overrides": cell.overrides,
        "base_config_sha256": base_sha,
        "metrics": metrics,
        "seconds": seconds,
        "finished_at": time.time(),
    }


def _done(cell_dir: Path, cell: Cell, base_sha: str) -> dict | None:
    path = cell_dir / CELL_FILE
    if not path.is_file():
        return None
    rec = json.loads(path.read_text())
    if rec.get("failed") is not None:  # a failed attempt: run it again
        return None
    if rec.get("overrides") != cell.overrides:
        raise InputError(
            f"{cell_dir} holds a cell with other overrides ({rec.get('overrides')}); "
            "use a new sweep.output_dir"
        )
    if rec.get("base_config_sha256") != base_sha:
        raise InputError(
            f"{cell_dir} was run from another version of the base config; use a new "
            "sweep.output_dir, or pass --fresh to delete the sweep's cells and start over"
        )
    return rec


def _one(base: Path, cell: Cell, cell_dir: Path, threads, base_sha: str, subprocess_run: bool):
    t0 = time.perf_counter()
    if subprocess_run:  # a worker: its own process, its own share of the cores
        job = {"base": str(base), "cell": cell.__dict__, "dir": str(cell_dir), "threads": threads}
        proc = subprocess.run(
            [sys.executable, "-m", "kdistill.pipeline.sweep", json.dumps(job)],
            capture_output=True,
            text=True,
        )
        if proc.returncode > 128:  # the worker was stopped by a signal: stop the sweep
            raise Preempted(proc.returncode - 128, None, str(cell_dir / "run" / "checkpoints"))
        if proc.returncode != 0:
            raise RuntimeError((proc.stderr.strip().splitlines() or ["(no output)"])[-1])
        metrics = json.loads(proc.stdout.strip().splitlines()[-1])
    else:
        metrics = run_cell(base, cell, cell_dir, threads)
    rec = _cell_record(cell, base_sha, metrics, time.perf_counter() - t0)
    atomic_write_json(cell_dir / CELL_FILE, rec)
    return rec


def run_sweep(spec_path: str | Path, overrides: list[str] | None = None, *, fresh: bool = False):
    """Run (or resume) the sweep; write ``sweep.json`` and the report page. Returns the
    results file's path."""
    from kdistill.folders import claim_folder
    from kdistill.pipeline.preflight import check_lm_run

    spec, base = load_sweep(spec_path, overrides)
    base_sha = _sha(base)
    cells = plan_cells(spec)
    out = Path(spec.output_dir)
    cores = os.cpu_count() or 1
    threads = max(1, cores // spec.workers) if spec.workers > 1 else None
    for cell in cells:  # every cell's config is valid before anything runs
        cfg = cell_config(base, cell, out / "cells" / cell.name, threads)
        if cfg.task == "lm":
            check_lm_run(cfg)
    with claim_folder(out, "sweep", field="sweep.output_dir", fresh=fresh):
        records, todo = {}, []
        for cell in cells:
            rec = _done(out / "cells" / cell.name, cell, base_sha)
            if rec is None:
                todo.append(cell)
            else:
                records[cell.name] = rec
        say(f"sweep {out}: {len(cells)} cells, {len(records)} done, {len(todo)} to run")
        failures = _run_cells(spec, base, base_sha, out, todo, threads, records)
        path = write_results(spec, out, cells, records)
        from kdistill.report.sweep import render_sweep

        html_path, _ = render_sweep(path, out)
        say(f"sweep results: {path}  report: {html_path}")
    if failures:
        names = ", ".join(failures)
        raise SweepError(
            f"{len(failures)} cell(s) failed ({names}); see cell.json in each, fix and re-run "
            "the same command (finished cells are kept)"
        )
    return path


def _run_cells(spec, base, base_sha, out, todo, threads, records) -> list[str]:
    failures = []

    def attempt(cell: Cell):
        cell_dir = out / "cells" / cell.name
        cell_dir.mkdir(parents=True, exist_ok=True)
        try:
            return _one(base, cell, cell_dir, threads, base_sha, spec.workers > 1)
        except (KeyboardInterrupt, SystemExit, Preempted):
            raise  # a signal stops the sweep (the cell's checkpoint is kept), not one cell
        except Exception as exc:  # recorded; the other cells still run
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
            # the same file a finished cell writes, marked failed: the next success replaces
            # it atomically, so nothing is ever deleted
            failed = {"name": cell.name, "overrides": cell.overrides, "failed": reason}
            atomic_write_json(cell_dir / CELL_FILE, {**failed, "at": time.time()})
            say(f"[red]cell {cell.name} failed:[/red] {reason}")
            failures.append(cell.name)
            return None

    if spec.workers == 1:
        for i, cell in enumerate(todo, 1):
            say(f"[bold]cell {i}/{len(todo)}: {cell.name}")
            rec = attempt(cell)
            if rec:
                records[cell.name] = rec
    else:
        with ThreadPoolExecutor(spec.workers) as pool:
            for rec in pool.map(attempt, todo):
                if rec:
                    records[rec["name"]] = rec
    return failures


def _value(rec: dict, key: str) -> float | None:
    v = rec["metrics"].get("cell", {}).get(key)
    return float(v) if isinstance(v, (int, float)) else None


def summarise(spec: SweepSpec, cells: list[Cell], records: dict[str, dict]) -> dict:
    """Intervals per (arm, point), the chosen point per arm, and paired differences."""
    from kdistill.eval.intervals import gap_recovered, paired_difference, t_interval

    groups: dict[str, dict] = {}
    for cell in cells:
        g = groups.setdefault(
            cell.group, {"group": cell.group, "arm": cell.arm, "point": cell.point, "seeds": {}}
        )
        rec = records.get(cell.name)
        if rec is not None and _value(rec, spec.metric) is not None:
            g["seeds"][cell.seed] = rec
    val_key = f"validation_{spec.metric}"
    recs = [r for g in groups.values() for r in g["seeds"].values()]
    have_val = any(_value(r, val_key) is not None for r in recs)
    select_key = val_key if spec.select_on == "validation" and have_val else spec.metric
    sign = 1 if spec.goal == "max" else -1
    for g in groups.values():
        vals = {s: _value(r, spec.metric) for s, r in g["seeds"].items()}
        g["values"] = vals
        g["interval"] = t_interval(list(vals.values()), spec.confidence).to_dict() if vals else None
        sel = [_value(r, select_key) for r in g["seeds"].values()]
        sel = [v for v in sel if v is not None]
        g["selection_mean"] = sum(sel) / len(sel) if sel else None
    chosen = {}
    for arm in spec.arms:
        mine = [g for g in groups.values() if g["arm"] == arm and g["selection_mean"] is not None]
        if mine:
            chosen[arm] = max(mine, key=lambda g: sign * g["selection_mean"])["group"]
    teacher_vals = [
        r["metrics"]["teacher"][spec.metric]
        for g in groups.values()
        for r in g["seeds"].values()
        if spec.metric in r["metrics"].get("teacher", {})
    ]
    teacher = sum(teacher_vals) / len(teacher_vals) if teacher_vals else None
    comparisons = []
    if spec.baseline in chosen:
        b = groups[chosen[spec.baseline]]
        for arm, gname in chosen.items():
            if arm == spec.baseline:
                continue
            g = groups[gname]
            try:
                diff, seeds = paired_difference(g["values"], b["values"], spec.confidence)
            except ValueError:
                continue
            row = {
                "arm": arm,
                "group": gname,
                "baseline_group": b["group"],
                "difference": diff.to_dict(),
                "seeds": seeds,
                "better": diff.excludes_zero() and sign * diff.mean > 0,
            }
            if teacher is not None:
                row["gap_recovered"] = gap_recovered(
                    sum(g["values"][s] for s in seeds) / len(seeds),
                    sum(b["values"][s] for s in seeds) / len(seeds),
                    teacher,
                )
            comparisons.append(row)
    for g in groups.values():
        g["seconds"] = sum(r["seconds"] for r in g["seeds"].values())
        g["seeds"] = sorted(g["seeds"])
    one_each = all(sum(g["arm"] == arm for g in groups.values()) <= 1 for arm in spec.arms)
    return {
        "groups": list(groups.values()),
        "chosen": chosen,
        "selected_on": (
            "nothing to choose" if one_each else "validation" if select_key == val_key else "test"
        ),
        "teacher": teacher,
        "comparisons": comparisons,
    }


def write_results(spec: SweepSpec, out: Path, cells: list[Cell], records: dict) -> Path:
    payload = {
        "kind": "kdistill-sweep",
        "spec": spec.model_dump(),
        "metric": spec.metric,
        "goal": spec.goal,
        "baseline": spec.baseline,
        "confidence": spec.confidence,
        "swept_keys": sorted({k for c in cells for k in c.point}),
        "cells": [records[c.name] for c in cells if c.name in records],
        "missing": [c.name for c in cells if c.name not in records],
        **summarise(spec, cells, records),
    }
    path = out / RESULTS_FILE
    atomic_write_json(path, payload)
    return path


def _worker(job_json: str) -> None:
    """A worker process: run one cell, print its metrics as the last line of stdout."""
    job = json.loads(job_json)
    cell = Cell(**job["cell"])
    try:
        metrics = run_cell(Path(job["base"]), cell, Path(job["dir"]), job["threads"])
    except Preempted as exc:  # the parent reads 128 + the signal and stops the sweep
        print(str(exc), file=sys.stderr)
        sys.exit(128 + exc.signum)
    print(json.dumps(metrics))


if __name__ == "__main__":
    _worker(sys.argv[1])
