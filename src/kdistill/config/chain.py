"""The ``kdistill chain`` spec: teacher -> assistant(s) -> student (teacher-assistant
distillation, Mirzadeh et al. 2020). Each stage is an ordinary run of the base config with
its own overrides; its teacher is the previous stage's model (or a named earlier stage, or
the base config's teacher).

```yaml
chain:
  config: demo.yaml                  # the base run config (relative to this file or shipped)
  output_dir: runs/chain
  stages:
    - name: assistant
      overrides: {student.from_teacher: {layers: 15}}
    - name: student
      overrides:                     # cut from the base teacher's layers, taught by assistant
        student.from_teacher: {layers: 8, model: smollm2-135m}
  eval: {max_eval_tokens: 4096}
```
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import Field

from kdistill.config.loader import ConfigError
from kdistill.config.schema import Strict

BASE = "base"


class StageSpec(Strict):
    name: str = Field(description="the stage's folder under output_dir (letters, digits, _-)")
    overrides: dict[str, Any] = Field(default_factory=dict, description="dotted key -> value")
    teacher: str | None = Field(
        None,
        description="the stage that teaches this one: an earlier stage's name, or 'base' (the "
        "base config's teacher); default: the previous stage (the first: base)",
    )


class ChainEval(Strict):
    max_eval_tokens: int = Field(4096, ge=1, description="held-out tokens for the evaluation")
    speed_budget_s: float = Field(10.0, ge=1, description="seconds for the speed rounds")


class ChainSpec(Strict):
    config: str = Field(description="the base run config (a path; relative to the chain file)")
    output_dir: str = Field("runs/chain", description="one folder per stage, then eval/")
    stages: list[StageSpec] = Field(min_length=1, description="run in order")
    seed: int | None = Field(None, description="every stage's seed (default: the base config's)")
    eval: ChainEval = Field(default_factory=ChainEval)

    def teacher_of(self, i: int) -> str:
        """``base`` or the name of the stage that teaches stage ``i``."""
        stage = self.stages[i]
        if stage.teacher is not None:
            return stage.teacher
        return BASE if i == 0 else self.stages[i - 1].name


def load_chain(path: str | Path, overrides: list[str] | None = None) -> tuple[ChainSpec, Path]:
    """The validated spec and the base config's path (resolved against the spec's folder)."""
    from kdistill.config.sweep import read_spec, resolve_base_config

    path = Path(path)
    spec = read_spec(path, "chain", overrides, ChainSpec)
    seen: list[str] = []
    for i, stage in enumerate(spec.stages):
        if not re.fullmatch(r"[A-Za-z0-9_-]+", stage.name) or stage.name in (BASE, "eval"):
            raise ConfigError(
                f"chain.stages[{i}].name={stage.name!r}: use letters, digits, _ or - (not "
                "'base' or 'eval')"
            )
        if stage.name in seen:
            raise ConfigError(f"chain.stages[{i}].name={stage.name!r} is used twice")
        teacher = spec.teacher_of(i)
        if teacher != BASE and teacher not in seen:
            raise ConfigError(
                f"chain.stages[{i}].teacher={teacher!r}: name an earlier stage "
                f"({', '.join(seen) or 'none yet'}) or 'base'"
            )
        seen.append(stage.name)
    return spec, resolve_base_config(spec.config, path, "chain.config")
