"""Who is who in an evaluation: every model has a role, and each student names the baseline
it is compared with. PURE module (stdlib only).

Roles: ``teacher`` (the reference: agreement, KL, retention), ``student`` (distilled),
``baseline`` (same size, trained without the teacher), ``assistant`` (a middle model in a
teacher -> assistant -> student chain) and ``variant`` (anything else: a pruned or quantized
copy, another arm of a sweep). Results files carry the setup under ``"setup"``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

ROLES = ("teacher", "student", "baseline", "assistant", "variant")
SETUP_KEY = "setup"
META_KEYS = ("derived", "timings", SETUP_KEY)  # results-file keys that are not models


class SetupError(ValueError):
    """An evaluation setup that names unknown models or roles."""


@dataclass
class EvalSetup:
    teacher: str
    roles: dict[str, str]  # every model, in display order
    pairs: list[tuple[str, str]] = field(default_factory=list)  # (student, its baseline)

    def to_json(self) -> dict:
        return {
            "teacher": self.teacher,
            "roles": dict(self.roles),
            "pairs": [list(p) for p in self.pairs],
        }

    def of_role(self, role: str) -> list[str]:
        return [n for n, r in self.roles.items() if r == role]


def build_setup(
    names: list[str],
    teacher: str = "teacher",
    *,
    baselines: dict[str, str] | None = None,
    roles: dict[str, str] | None = None,
) -> EvalSetup:
    """The setup of models ``names`` (teacher included): ``baselines`` maps each student to
    its baseline; ``roles`` sets roles explicitly. Defaults: a model named ``student`` or on
    the left of a pair is a student, one named ``baseline`` or on the right a baseline, the
    rest variants; with no pairs given, ``student`` is paired with ``baseline``."""
    known = set(names)
    if teacher not in known:
        raise SetupError(f"the teacher {teacher!r} is not among the models {sorted(known)}")
    baselines = dict(baselines or {})
    for s, b in baselines.items():
        for n in (s, b):
            if n not in known:
                raise SetupError(f"--baseline {s}={b}: no model named {n!r}")
        if teacher in (s, b) or s == b:
            raise SetupError(f"--baseline {s}={b}: pair two different models, neither the teacher")
    explicit = dict(roles or {})
    for n, r in explicit.items():
        if n not in known:
            raise SetupError(f"--role {n}={r}: no model named {n!r}")
        if r not in ROLES or r == "teacher":
            choices = ", ".join(x for x in ROLES if x != "teacher")
            raise SetupError(f"--role {n}={r}: use one of {choices} (the teacher is --teacher)")
    if not baselines and {"student", "baseline"} <= known:
        baselines = {"student": "baseline"}
    out: dict[str, str] = {}
    for n in names:
        if n == teacher:
            out[n] = "teacher"
        elif n in explicit:
            out[n] = explicit[n]
        elif n == "student" or n in baselines:
            out[n] = "student"
        elif n == "baseline" or n in baselines.values():
            out[n] = "baseline"
        else:
            out[n] = "variant"
    order = {r: i for i, r in enumerate(ROLES)}
    ordered = dict(sorted(out.items(), key=lambda kv: order[kv[1]]))  # stable within a role
    return EvalSetup(teacher, ordered, list(baselines.items()))


def setup_of(results: dict) -> EvalSetup | None:
    """The setup a results file holds, or one inferred from its model names (files from
    before roles: teacher / student / baseline / others)."""
    raw = results.get(SETUP_KEY)
    if isinstance(raw, dict) and isinstance(raw.get("roles"), dict):
        pairs = [tuple(p) for p in raw.get("pairs", []) if isinstance(p, list) and len(p) == 2]
        return EvalSetup(str(raw.get("teacher", "teacher")), dict(raw["roles"]), pairs)
    names = [k for k, v in results.items() if isinstance(v, dict) and k not in META_KEYS]
    if "teacher" not in names:
        return None
    return build_setup(names, "teacher")


def lm_quality_key(a: dict, b: dict) -> str | None:
    """``perplexity`` when both were scored on the same tokens, else ``bits_per_byte`` if
    both have it (lower is better for both)."""
    same = a.get("tokenizer") == b.get("tokenizer") or "tokenizer" not in a or "tokenizer" not in b
    if same and a.get("perplexity") is not None and b.get("perplexity") is not None:
        return "perplexity"
    if a.get("bits_per_byte") is not None and b.get("bits_per_byte") is not None:
        return "bits_per_byte"
    return None
