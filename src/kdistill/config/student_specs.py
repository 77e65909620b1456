"""The student: a model, one cut from the teacher, LoRA adapters, classifier shapes."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from kdistill.config.base import ClassifierShape, Strict


class StudentFromTeacher(Strict):
    """Build the student from the teacher's own weights: kept layers (every k-th, a list, or the
    most important), optionally narrower, sliced by importance (Minitron-style)."""

    model: str | None = Field(
        None,
        description="the model to cut the student from (default: teacher.model); named on "
        "its own so a store, recorded or no-teacher run can still cut a student",
    )

    keep_layers: list[int] | None = Field(None, description="teacher layer indices to keep")
    every: int | None = Field(None, ge=1, description="keep every k-th layer (and the last)")
    layers: int | None = Field(
        None, ge=1, description="keep this many layers, the most important by depth_metric"
    )
    depth_metric: Literal["block_influence", "skip_kl"] = Field(
        "block_influence",
        description="layer ranking for `layers`: block_influence (1 - cos between a block's "
        "input and output) or skip_kl (KL to the full model with the block skipped; one "
        "forward per layer)",
    )
    hidden_size: int | None = Field(
        None, ge=8, description="narrower residual stream: the most important embedding channels"
    )
    intermediate_size: int | None = Field(
        None, ge=8, description="narrower MLP: the most important neurons of each kept layer"
    )
    num_key_value_heads: int | None = Field(
        None, ge=1, description="fewer attention heads: the most important KV groups per layer"
    )
    calibration_blocks: int = Field(
        16, ge=1, description="training blocks the importance scores are measured on"
    )
    init: Literal["teacher", "random"] = Field(
        "teacher",
        description="teacher: start from the teacher's sliced weights; random: the same "
        "shape with freshly drawn weights (a from-scratch baseline, seeded by `seed`)",
    )
    tokenizer_vocab: int | None = Field(
        None,
        ge=300,
        description="give the student its own byte-level BPE tokenizer of this many ids, "
        "trained on the training split only; its embeddings start from the source's rows "
        "of the same strings. Distil it with teacher.kind=aligned (e.g. 8192)",
    )

    @model_validator(mode="after")
    def _one_choice(self):
        if sum(x is not None for x in (self.keep_layers, self.every, self.layers)) != 1:
            raise ValueError("give exactly one of keep_layers, every or layers")
        return self


class LoraSpec(Strict):
    """LoRA adapters on the student (Hu et al. 2021), through peft."""

    r: int = Field(16, ge=1, description="adapter rank")
    alpha: float = Field(32.0, gt=0, description="scaling numerator (lora_alpha)")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the adapter's input")
    target_modules: str | list[str] = Field(
        "all-linear",
        description="modules that get adapters: all-linear (every linear layer but the output "
        "head) or a list of module names (e.g. [q_proj, v_proj])",
    )


class ModelSpec(ClassifierShape):
    model: str | None = Field(
        None,
        description="bundled name (smollm2-135m, gemma3-270m), a .gguf file, a local HF folder "
        "or a hub id (org/name[@revision], through the Hugging Face cache); "
        "for classifiers an architecture (cnn, mlp) or a trained run's model folder",
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="weights dtype")
    from_teacher: StudentFromTeacher | None = Field(
        None, description="student only: derive from the teacher's layers"
    )
    lora: LoraSpec | None = Field(
        None,
        description="student only: train LoRA adapters (peft) on a frozen student; the run "
        "saves the merged student (model/) and the adapter (adapter/)",
    )
