"""Command-line argument and option types shared by the commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

ConfigArg = Annotated[Path, typer.Argument(help="YAML run config (see src/kdistill/configs/)")]
OverridesArg = Annotated[
    list[str] | None, typer.Argument(help="dotted overrides, e.g. training.max_steps=50")
]
FreshOpt = Annotated[
    bool,
    typer.Option(
        "--fresh",
        help="delete what kdistill wrote in the run folder (never other files) and start over",
    ),
]
AllowTeacherOpt = Annotated[
    bool,
    typer.Option(
        "--allow-teacher-change",
        help="use stored signals or generations made by another teacher than the config's",
    ),
]
DEVICE_HELP = "where the models run: auto (a CUDA GPU, else MPS, else CPU), cpu, cuda[:N], mps"
