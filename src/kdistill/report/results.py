"""Reading what a report is made from: results JSON files (any number, models merged in role
order) and each model's ``kd_log.jsonl``."""

from __future__ import annotations

import json
from pathlib import Path

from kdistill.errors import InputError
from kdistill.eval.roles import META_KEYS, SETUP_KEY, EvalSetup, setup_of

ORDER = ("teacher", "student", "baseline")
MODEL_KEYS = (
    "perplexity",
    "bits_per_byte",
    "accuracy",
    "params",
    "nll",
    "kl_to_teacher",
    "top1_agreement",
)


def load_results(paths: list[Path]) -> tuple[dict[str, dict], dict[str, Path], dict]:
    """(models in display order, the file each model came from, {"derived", "timings"} of the
    file that holds the student). A name repeated in a later file with different numbers is
    kept as ``name (folder)`` so no measurement silently replaces another."""
    models: dict[str, dict] = {}
    sources: dict[str, Path] = {}
    meta_by_file: dict[Path, dict] = {}
    setups: list[dict] = []
    for p in map(Path, paths):
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise InputError(f"{p}: not a results JSON file ({exc}); give a results.json") from None
        if not isinstance(data, dict):
            raise InputError(
                f"{p}: a results file is a JSON object of models, got a {type(data).__name__}; "
                "give a results.json written by kdistill eval or demo"
            )
        meta_by_file[p] = {k: data[k] for k in META_KEYS if isinstance(data.get(k), dict)}
        if isinstance(data.get(SETUP_KEY), dict):
            setups.append(data[SETUP_KEY])
        for name, v in data.items():
            if name in META_KEYS or not isinstance(v, dict):
                continue
            if not any(k in v for k in MODEL_KEYS) or models.get(name) == v:
                continue
            key = name if name not in models else f"{name} ({p.parent.name or p.stem})"
            models[key], sources[key] = v, p
    if not models:
        raise InputError(f"no model results (perplexity / accuracy / params) in {list(paths)}")
    setup = _merged_setup(models, setups)
    order = list(setup.roles) if setup else list(ORDER)
    ordered = {k: models[k] for k in order if k in models}
    ordered.update({k: v for k, v in models.items() if k not in ordered})
    meta = meta_by_file.get(sources.get("student"), {}) if "student" in sources else {}
    if not meta and len(meta_by_file) == 1:
        meta = next(iter(meta_by_file.values()))
    meta = {**meta, SETUP_KEY: setup}
    return ordered, sources, meta


def _merged_setup(models: dict, setups: list[dict]) -> EvalSetup | None:
    """The roles of one results file (models merged in from elsewhere are variants), else
    roles inferred from the names (teacher / student / baseline / the rest)."""
    if len(setups) == 1:
        stored = setup_of({SETUP_KEY: setups[0]})
        roles = {n: stored.roles.get(n, "variant") for n in models}
        pairs = [p for p in stored.pairs if p[0] in models and p[1] in models]
        if stored.teacher in models:
            return EvalSetup(stored.teacher, roles, pairs)
    return setup_of(models)


def _read_log(run_dir: Path) -> list[dict]:
    path = run_dir / "kd_log.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # e.g. a half-written last line of a killed run
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def collect_logs(
    models: dict, sources: dict[str, Path], logs_dirs: list[Path] | None
) -> dict[str, list[dict]]:
    """{label: kd_log rows}. Default: each model's ``run_dir``, tried as written (relative to
    the working directory), then relative to its results file's folder, then as a sibling."""
    logs: dict[str, list[dict]] = {}
    if logs_dirs:  # None or [] (an unused CLI option): each model's own run_dir
        for d in map(Path, logs_dirs):
            label = d.name if d.name not in logs else str(d)
            if rows := _read_log(d):
                logs[label] = rows
        return logs
    for name, r in models.items():
        if not isinstance(r.get("run_dir"), str):
            continue
        run_dir, base = Path(r["run_dir"]), sources[name].parent
        for d in (run_dir, base / run_dir, base / run_dir.name):
            if rows := _read_log(d):
                logs[name] = rows
                break
    return logs
