"""The ``kdistill sweep`` spec: a base run config, named arms, a grid over dotted config keys,
and seeds. Every (arm, grid point, seed) is one cell, one ordinary run of the base config
with the cell's overrides.

```yaml
sweep:
  config: fmnist_distill.yaml          # the base run config (relative to this file)
  output_dir: runs/sweeps/fmnist_T
  seeds: 5                             # or a list: [0, 1, 2, 3, 4]
  metric: accuracy                     # read from each cell's evaluation
  goal: max                            # max | min (perplexity: min)
  baseline: alone                      # paired differences against this arm
  arms:
    alone: {overrides: {teacher.kind: none}, grid: {training.learning_rate: [0.001, 0.003]}}
    kd: {grid: {training.learning_rate: [0.001, 0.003]}}
  grid: {distill.kd_temperature: [1, 4, 20]}   # applied to every arm that reads it
```
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator

from kdistill.config.loader import ConfigError, format_validation_error
from kdistill.config.schema import Strict


class ArmSpec(Strict):
    overrides: dict[str, Any] = Field(
        default_factory=dict, description="dotted key -> value, fixed for this arm"
    )
    grid: dict[str, list[Any]] = Field(
        default_factory=dict, description="dotted key -> values, swept for this arm"
    )
    skip_grid: list[str] = Field(
        default_factory=list,
        description="keys of the sweep-wide grid this arm ignores (e.g. kd_temperature "
        "for an arm without a teacher)",
    )


class SweepSpec(Strict):
    config: str = Field(description="the base run config (a path; relative to the sweep file)")
    output_dir: str = Field("runs/sweep", description="one folder per cell under cells/")
    seeds: int | list[int] = Field(3, description="a count (0..N-1) or the seeds themselves")
    metric: str = Field(description="the quantity compared: a key of the cell's evaluation")
    goal: Literal["max", "min"] = Field("max", description="max (accuracy) | min (perplexity)")
    select_on: Literal["validation", "test"] = Field(
        "validation",
        description="grid points are chosen on the validation split when cells report one "
        "(validation_<metric>), else on the test metric (and the page says so)",
    )
    grid: dict[str, list[Any]] = Field(default_factory=dict, description="swept for every arm")
    arms: dict[str, ArmSpec] = Field(
        default_factory=lambda: {"run": ArmSpec()}, description="named arms"
    )
    baseline: str | None = Field(None, description="the arm others are compared with, per seed")
    workers: int = Field(1, ge=1, description="cells run at once (threads = cores / workers)")
    confidence: float = Field(0.95, gt=0, lt=1, description="interval confidence")

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v):
        if isinstance(v, int):
            if v < 1:
                raise ValueError("seeds must be at least 1")
            return list(range(v))
        if not v or len(set(v)) != len(v):
            raise ValueError("seeds must be a non-empty list of distinct integers")
        return v

    @field_validator("grid")
    @classmethod
    def _grid(cls, v):
        for key, values in v.items():
            if not values:
                raise ValueError(f"grid key {key!r} has no values")
        return v

    def seed_list(self) -> list[int]:
        return list(self.seeds)  # normalised by the validator


def read_spec(path: Path, section: str, overrides: list[str] | None, model):
    """The ``section:`` of the YAML spec at ``path`` with ``overrides`` applied, validated as
    ``model``; every problem one :class:`ConfigError` line."""
    from kdistill.config.loader import apply_overrides

    if not path.is_file():
        raise ConfigError(
            f"{section} spec {str(path)!r} not found; give a YAML file with {section}:"
        )
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(data, dict) or not isinstance(data.get(section), dict):
        raise ConfigError(f"{path}: put the {section} settings under a top-level '{section}:' key")
    data = apply_overrides(data, [f"{section}.{o}" for o in overrides or []])
    try:
        return model.model_validate(data[section])
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, str(path))) from None


def load_sweep(path: str | Path, overrides: list[str] | None = None) -> tuple[SweepSpec, Path]:
    """The validated spec and the base config's path (resolved against the spec's folder)."""
    path = Path(path)
    spec = read_spec(path, "sweep", overrides, SweepSpec)
    if spec.baseline is not None and spec.baseline not in spec.arms:
        raise ConfigError(
            f"sweep.baseline={spec.baseline!r} is not an arm; use one of {', '.join(spec.arms)}"
        )
    for name, arm in spec.arms.items():
        unknown = [k for k in arm.skip_grid if k not in spec.grid]
        if unknown:
            raise ConfigError(f"sweep.arms.{name}.skip_grid: {unknown} not in sweep.grid")
    return spec, resolve_base_config(spec.config, path, "sweep.config")


def resolve_base_config(config: str, spec_path: Path, key: str) -> Path:
    """A spec's base run config: a path (relative to the spec's folder) or a shipped name."""
    base = Path(config).expanduser()
    if not base.is_absolute():
        base = spec_path.parent / base
        if not base.is_file():  # a shipped config name
            from importlib import resources

            shipped = Path(str(resources.files("kdistill") / "configs" / config))
            base = shipped if shipped.is_file() else base
    if not base.is_file():
        raise ConfigError(f"{key} {config!r} not found next to {spec_path} or shipped")
    return base
