"""Schedules for any scalar knob (kd_temperature, soft/hard weights, JSD beta).

PURE module. A :class:`Schedule` is a pure function of ``(step, total_steps)``:

* ``constant``: ``start`` throughout.
* ``linear``:   ``start`` -> ``end`` linearly over the steps after warm-up.
* ``cosine``:   ``start`` -> ``end`` along a half cosine after warm-up.
* ``step``:     ``start`` until the first milestone, then ``values[i]`` after milestone ``i``;
                milestones are fractions of ``total_steps`` in (0, 1), increasing.

``warmup_steps`` > 0 ramps linearly from ``warmup_start`` to ``start`` over the first
``warmup_steps`` steps, then the main schedule runs over the remaining steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

SCHEDULE_KINDS = ("constant", "linear", "cosine", "step")


@dataclass(frozen=True)
class Schedule:
    kind: str = "constant"
    start: float = 1.0
    end: float | None = None
    warmup_steps: int = 0
    warmup_start: float = 0.0
    milestones: tuple[float, ...] = field(default_factory=tuple)
    values: tuple[float, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULE_KINDS:
            raise ValueError(
                f"unknown schedule kind {self.kind!r}; choose one of {', '.join(SCHEDULE_KINDS)}"
            )
        for name in ("start", "warmup_start"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"schedule {name} must be finite, got {getattr(self, name)}")
        if self.kind in ("linear", "cosine") and self.end is None:
            raise ValueError(f"a {self.kind} schedule needs `end` (the final value)")
        if self.end is not None and not math.isfinite(self.end):
            raise ValueError(f"schedule end must be finite, got {self.end}")
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be an integer >= 0, got {self.warmup_steps!r}")
        if self.kind == "step":
            if not self.milestones or len(self.milestones) != len(self.values):
                raise ValueError(
                    "a step schedule needs `milestones` and `values` of the same, non-zero length"
                )
            if any(not 0 < m < 1 for m in self.milestones) or list(self.milestones) != sorted(
                set(self.milestones)
            ):
                raise ValueError(
                    "step milestones must be strictly increasing fractions in (0, 1), "
                    f"got {list(self.milestones)}"
                )
            if not all(math.isfinite(v) for v in self.values):
                raise ValueError(f"step schedule values must be finite, got {list(self.values)}")

    def __call__(self, step: int, total_steps: int) -> float:
        return self.value(step, total_steps)

    def value(self, step: int, total_steps: int) -> float:
        """The knob's value at ``step`` (0-based) of ``total_steps``."""
        if total_steps <= 0:
            raise ValueError(f"total_steps must be > 0, got {total_steps}")
        step = min(max(step, 0), total_steps)
        if step < self.warmup_steps:
            frac = step / self.warmup_steps
            return self.warmup_start + (self.start - self.warmup_start) * frac
        main_total = max(total_steps - self.warmup_steps, 1)
        progress = min((step - self.warmup_steps) / main_total, 1.0)
        if self.kind == "constant":
            return float(self.start)
        if self.kind == "linear":
            return self.start + (self.end - self.start) * progress
        if self.kind == "cosine":
            return self.end + (self.start - self.end) * 0.5 * (1 + math.cos(math.pi * progress))
        current = self.start
        for milestone, value in zip(self.milestones, self.values, strict=True):
            if progress >= milestone:
                current = value
        return float(current)


def constant(value: float) -> Schedule:
    return Schedule("constant", start=value)


def as_schedule(spec: float | int | Schedule | dict) -> Schedule:
    """A number means a constant schedule; a dict is passed to :class:`Schedule`."""
    if isinstance(spec, Schedule):
        return spec
    if isinstance(spec, (int, float)):
        return constant(float(spec))
    if isinstance(spec, dict):
        data = dict(spec)
        known = Schedule.__dataclass_fields__
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(
                f"unknown schedule key(s) {', '.join(map(repr, unknown))}; "
                f"valid keys: {', '.join(known)}"
            )
        for key in ("milestones", "values"):
            if key in data:
                data[key] = tuple(data[key])
        return Schedule(**data)
    raise ValueError(f"a schedule is a number or a mapping, got {type(spec).__name__}")
