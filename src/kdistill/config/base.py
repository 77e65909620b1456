"""The strict base of every config section: unknown keys rejected, values validated on
assignment, no inf/nan."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class ClassifierShape(Strict):
    """The shape of a classifier built by kdistill (teacher or student): ``mlp`` widths,
    ``cnn`` channels, dropout."""

    hidden: list[int] = Field(
        default_factory=lambda: [256], description="classifier mlp: hidden layer widths"
    )
    channels: list[int] = Field(
        default_factory=lambda: [32, 64], description="classifier cnn: conv channels"
    )
    dropout: float = Field(
        0.0, ge=0, lt=1, description="classifier: dropout on each hidden layer while training"
    )
