"""YAML -> validated :class:`RunConfig`, with dotted ``key.sub=value`` overrides.

Every user mistake becomes a :class:`ConfigError` with one line naming the key path and,
for unknown keys, the nearest valid name.
"""

from __future__ import annotations

import difflib
from pathlib import Path

import yaml
from pydantic import BaseModel, ValidationError

from kdistill.config.schema import RunConfig
from kdistill.errors import KdistillError
from kdistill.files import atomic_write_text


class ConfigError(KdistillError, ValueError):
    """A one-line, user-facing configuration error."""


def parse_override(text: str) -> tuple[list[str], object]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.sub=value")
    key, raw = text.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} has an empty key part; use key.sub=value")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc.problem})") from exc
    return key.split("."), value


def _named_item(items: list, name: str, text: str) -> dict:
    """The entry of a named list (``distill.terms``) called ``name``."""
    for item in items:
        if isinstance(item, dict) and item.get("name") == name:
            return item
    have = ", ".join(str(i.get("name")) for i in items if isinstance(i, dict)) or "none"
    raise ConfigError(f"override {text!r}: no entry named {name!r} in that list (have: {have})")


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Set each ``a.b.c=value``; a part that follows a list of named entries (``distill.terms``)
    picks the entry by its ``name`` (``distill.terms.hidden.weight=0.5``)."""
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            child = node.get(part) if isinstance(node, dict) else _named_item(node, part, text)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, (dict, list)):
                raise ConfigError(f"override {text!r}: {part} is not a section")
            node = child
        if isinstance(node, list):
            raise ConfigError(f"override {text!r}: name an entry of {path[-2]}, then its key")
        node[path[-1]] = value
    return data


def _model_at(loc: tuple) -> type[BaseModel] | None:
    model: type[BaseModel] = RunConfig
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        ann = field.annotation
        candidates = [ann, *getattr(ann, "__args__", ())]
        nxt = next(
            (c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None
        )
        if nxt is None:
            return None
        model = nxt
    return model


def format_validation_error(exc: ValidationError, source: str) -> str:
    err = exc.errors()[0]
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p in ("ScheduleSpec",)))
    loc = tuple(p for p in loc if not str(p).startswith(("float", "function-")))
    key = ".".join(str(p) for p in loc) or "(top level)"
    if err["type"] == "extra_forbidden":
        model = _model_at(loc)
        hint = ""
        if model is not None:
            near = difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=1)
            hint = (
                f"; did you mean {near[0]!r}?"
                if near
                else (f"; valid keys: {', '.join(model.model_fields)}")
            )
        return f"{source}: unknown key {key!r}{hint}"
    value = err.get("input")
    shown = "" if isinstance(value, dict) else f" (got {value!r})"
    return f"{source}: {key}: {err['msg']}{shown}"


# settings replaced by the one `teacher:` section: (section, key) -> how to say it now
OLD_KEYS = {
    ("teacher", "cache"): "teacher.kind=store with teacher.path=<the store folder>",
    ("data", "teacher_logprobs"): "teacher.kind=recorded",
    ("distill", "baseline"): "teacher.kind=none",
}


def _old_keys(data: dict) -> list[tuple[str, str]]:
    return [
        (sec, key) for sec, key in OLD_KEYS if isinstance(data.get(sec), dict) and key in data[sec]
    ]


def refuse_old_keys(data: dict, source: str) -> None:
    """One line naming the new setting for a key the teacher section replaced."""
    for sec, key in _old_keys(data):
        raise ConfigError(f"{source}: {sec}.{key} is gone; use {OLD_KEYS[(sec, key)]}")


def migrate_old_keys(data: dict) -> dict:
    """A config saved before the teacher section (a run folder being resumed), in today's
    form: ``teacher.cache`` -> kind store, ``data.teacher_logprobs`` -> kind recorded,
    ``distill.baseline`` -> kind none (the first that applies wins, as the old code did)."""
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    cache = data.get("teacher", {}).pop("cache", None)
    recorded = data.get("data", {}).pop("teacher_logprobs", False)
    baseline = data.get("distill", {}).pop("baseline", False)
    teacher = data.setdefault("teacher", {})
    if baseline:
        teacher["kind"] = "none"
    elif cache is not None:
        teacher.update(kind="store", path=cache)
    elif recorded:
        teacher["kind"] = "recorded"
    teacher.setdefault("kind", "model")
    data.get("student", {}).pop("cache", None)
    return data


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Read YAML (or start from defaults when ``path`` is None), apply overrides, validate."""
    data: dict = {}
    source = "config"
    if path is not None:
        p = Path(path)
        source = p.name
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} not found; pass the path of a YAML file")
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark else ""
            raise ConfigError(f"{source}: invalid YAML{where}") from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{source}: the top level must be a mapping of sections")
        data = loaded
    data = apply_overrides(data, overrides or [])
    refuse_old_keys(data, source)
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from exc


def save_config(cfg: RunConfig, path: Path) -> None:
    """Write the resolved config as YAML (atomically; each process through its own temporary
    file, so ranks of a distributed run that all write it cannot race on the rename)."""
    atomic_write_text(path, yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
