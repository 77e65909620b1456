"""The run configuration, documented field by field (CLI help and docs come from here).

Unknown keys are rejected (``extra="forbid"``); the loader turns pydantic errors into one line
naming the key's path and the nearest valid name.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, SerializeAsAny, field_validator, model_validator

from kdistill.config.base import Strict
from kdistill.config.offline_specs import CacheSpec, FilterSpec, GenerateSpec  # noqa: F401
from kdistill.config.student_specs import LoraSpec, ModelSpec, StudentFromTeacher  # noqa: F401
from kdistill.config.teacher_specs import (  # noqa: F401  (the teacher kinds, re-exported)
    TEACHER_SPECS,
    AlignedTeacherSpec,
    ModelTeacherSpec,
    NoTeacherSpec,
    RecordedTeacherSpec,
    ServedTeacherSpec,
    StoreTeacherSpec,
    TeacherSpec,
    register_teacher_spec,
    teacher_spec,
)
from kdistill.schedules import as_schedule


class ScheduleSpec(Strict):
    """A scalar that changes with training progress (see kdistill.schedules)."""

    kind: Literal["constant", "linear", "cosine", "step"] = Field(
        "constant", description="constant | linear | cosine | step"
    )
    start: float = Field(description="value after warm-up (first value of the main schedule)")
    end: float | None = Field(None, description="final value (linear, cosine)")
    warmup_steps: int = Field(0, ge=0, description="linear ramp from warmup_start over N steps")
    warmup_start: float = Field(0.0, description="value at step 0 when warmup_steps > 0")
    milestones: list[float] = Field(default_factory=list, description="step: fractions in (0,1)")
    values: list[float] = Field(
        default_factory=list, description="step: value after each milestone"
    )


Scalar = float | ScheduleSpec


class DataSpec(Strict):
    source: str = Field(
        "kjv",
        description="kjv | fashion-mnist | path to .txt/.jsonl/.parquet | a hub data set id "
        "(org/name[@revision]: its train files, through the Hugging Face cache)",
    )
    text_field: str = Field("text", description="text column of a JSONL/Parquet source")
    subset: str | None = Field(
        None, description="hub data sets: the subset (configuration) name, as datasets names it"
    )
    split: str = Field(
        "train",
        description="hub data sets: the split read (kdistill then holds out its own "
        "hash-based share of it for evaluation)",
    )
    streaming: bool = Field(
        False,
        description="hub data sets: read rows as training goes (never the whole set), "
        "plain text only; the held-out share by hash, resume by stream position",
    )
    block_size: int = Field(256, ge=8, description="tokens per packed block / max chat length")
    held_out_fraction: float = Field(0.05, gt=0, lt=1, description="share of records held out")
    validation_fraction: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="LM: share of the remaining records set aside by another hash, never "
        "trained on, for choosing settings (sweeps report validation_* beside the held-out "
        "figures; kdistill eval --part validation)",
    )
    max_train_tokens: int | None = Field(None, ge=1, description="cap on training tokens")
    max_eval_tokens: int | None = Field(16384, ge=1, description="cap on held-out tokens")
    max_train_examples: int | None = Field(None, ge=1, description="classifier: cap on examples")
    validation_examples: int = Field(
        0,
        ge=0,
        description="classifier: training images set aside (the same ones for every seed) and "
        "reported as validation_accuracy, for choices made without the test set",
    )
    omit_class: int | None = Field(
        None,
        ge=0,
        description="classifier: leave this class out of the training images (Hinton's "
        "omitted-class test); results then report its accuracy before and after a bias on its "
        "logit chosen on the validation images (which keep it)",
    )
    jitter: int = Field(
        0,
        ge=0,
        le=8,
        description="classifier: shift each training image by up to N pixels per step (the "
        "teacher sees the same shifted image)",
    )
    flip: bool = Field(
        False,
        description="classifier: mirror each training image left-right with probability 1/2 "
        "(the teacher sees the same image)",
    )
    mixup: float = Field(
        0.0,
        ge=0,
        le=10,
        description="classifier: blend each batch with a shuffled copy of itself, the share "
        "drawn from Beta(a, a) (function matching: the online teacher labels the blended "
        "image; needs a teacher and distill.hard_weight 0); 0 = off",
    )


class TermSpec(Strict):
    """A loss term beyond ``kd`` and ``ce`` (whose weights are soft_weight / hard_weight)."""

    # a term that reads the teacher's hidden states needs a teacher model (teacher.kind=model)
    reads_teacher_states: ClassVar[bool] = True

    name: str = Field(description="the term: hidden (or a registered one)")
    weight: Scalar = Field(1.0, description="the term's weight (a number or a schedule)")


class HiddenTermSpec(TermSpec):
    """Intermediate layers: DistilBERT's cosine, or TinyBERT's MSE through a learned
    projection when widths differ."""

    name: Literal["hidden"] = "hidden"
    loss: Literal["cosine", "mse"] = Field("cosine", description="cosine | mse")
    layer_map: dict[int, int] | None = Field(
        None,
        description="{student_layer: teacher_layer}, pairing layer outputs; default for a "
        "student cut from the teacher: each student layer with the end of the teacher block "
        "it replaces (the last layer left out)",
    )


TERM_SPECS: dict[str, type[TermSpec]] = {"hidden": HiddenTermSpec}


def register_term_spec(name: str, spec: type[TermSpec]) -> None:
    """Make ``distill.terms: [{name: <name>, ...}]`` valid, with ``spec``'s settings."""
    TERM_SPECS[name] = spec


def term_spec(data) -> TermSpec:
    if isinstance(data, TermSpec):
        return data
    if not isinstance(data, dict) or data.get("name") not in TERM_SPECS:
        name = data.get("name") if isinstance(data, dict) else data
        raise ValueError(f"unknown loss term {name!r}; use one of {', '.join(TERM_SPECS)}")
    return TERM_SPECS[data["name"]].model_validate(data)


Divergence = Literal["forward_kl", "reverse_kl", "jsd", "skew_kl", "skew_reverse_kl", "tvd"]


class OnPolicySpec(Strict):
    """``distill.on_policy``: the student samples, the teacher scores its samples (GKD)."""

    fraction: float = Field(
        1.0, ge=0, le=1, description="share of micro-batches sampled by the student (GKD lambda)"
    )
    max_new_tokens: int = Field(64, ge=1, description="tokens the student samples per prompt")
    sampling_temperature: float = Field(1.0, gt=0, description="the student's sampling temperature")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling threshold")
    prompt_tokens: int = Field(
        64,
        ge=1,
        description="prompt length taken from text blocks (rows with a masked prompt use it)",
    )
    divergence: Divergence = Field(
        "reverse_kl", description="per-token divergence on the student's own tokens"
    )
    estimator: Literal["exact", "sampled"] = Field(
        "exact",
        description="exact: the divergence over the vocabulary (or a server's top-k + tail) "
        "| sampled: the sampled-token reverse-KL estimator (needs only the teacher's "
        "log-prob of each sampled token)",
    )
    forward_kl_share: float = Field(
        0.0,
        ge=0,
        le=1,
        description="s in (1 - s) * divergence + s * forward KL on sampled tokens (against "
        "entropy collapse on long samples)",
    )
    min_new_tokens: int = Field(0, ge=0, description="sample at least this many tokens")


class DistillSpec(Strict):
    kd_temperature: Scalar = Field(2.0, description="softmax temperature T of the soft term")
    soft_weight: Scalar = Field(0.7, description="weight of T^2 * D(teacher_T || student_T)")
    hard_weight: Scalar = Field(0.3, description="weight of the cross-entropy on labels")
    divergence: Divergence = Field("forward_kl", description="the divergence D")
    beta: Scalar = Field(0.5, description="generalized JSD mixture weight in [0, 1]")
    skew_alpha: float = Field(0.1, ge=0, le=1, description="skew KL mixture weight")
    scale_by_t2: bool = Field(True, description="multiply the soft term by T^2 (Hinton 2015)")
    terms: list[SerializeAsAny[TermSpec]] = Field(
        default_factory=list,
        description="more named loss terms beside kd and ce, e.g. [{name: hidden, weight: 1}]",
    )
    on_policy: OnPolicySpec | None = Field(
        None,
        description="on-policy distillation: the student samples continuations of the "
        "prompts and learns the teacher's per-token judgement of them, e.g. {fraction: 0.5}",
    )

    @field_validator("terms", mode="before")
    @classmethod
    def _term_kinds(cls, value):
        if not isinstance(value, list):
            raise ValueError("distill.terms must be a list, e.g. [{name: hidden, weight: 1.0}]")
        specs = [term_spec(v) for v in value]
        names = [t.name for t in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"each term once, got {names}")
        for t in specs:
            w = as_schedule(
                t.weight.model_dump() if isinstance(t.weight, ScheduleSpec) else t.weight
            )
            points = [w.start, *([w.end] if w.end is not None else []), *w.values]
            if not all(v >= 0 for v in points):
                raise ValueError(f"term {t.name} weight must stay >= 0, got {points}")
        return specs

    @model_validator(mode="after")
    def _check_knobs(self):
        limits = {
            "kd_temperature": (lambda v: v > 0, "must stay > 0"),
            "soft_weight": (lambda v: v >= 0, "must stay >= 0"),
            "hard_weight": (lambda v: v >= 0, "must stay >= 0"),
            "beta": (lambda v: 0 <= v <= 1, "must stay in [0, 1]"),
        }
        for name, (ok, why) in limits.items():
            spec = getattr(self, name)
            sched = as_schedule(spec.model_dump() if isinstance(spec, ScheduleSpec) else spec)
            points = [sched.start, *([sched.end] if sched.end is not None else []), *sched.values]
            if sched.warmup_steps:
                points.append(sched.warmup_start)
            if not all(ok(v) for v in points):
                raise ValueError(f"{name} {why}, got {points}")
        return self


class FsdpSpec(Strict):
    """FSDP2 over the processes of a torchrun / accelerate launch (transformers' own FSDP2
    plan for the model: each decoder layer and the whole model ``fully_shard``-ed)."""

    enabled: bool = Field(False, description="shard the student with FSDP2")
    teacher: Literal["replicate", "shard"] = Field(
        "replicate",
        description="replicate: a whole teacher in every process | shard: the teacher sharded "
        "too (each layer gathered for its forward)",
    )


class TrainingSpec(Strict):
    max_steps: int = Field(200, ge=1, description="optimizer steps")
    per_device_batch_size: int = Field(8, ge=1, description="sequences per device per micro-batch")
    gradient_accumulation_steps: int = Field(1, ge=1, description="micro-batches per step")
    learning_rate: float = Field(5e-4, gt=0, description="peak learning rate (AdamW)")
    lr_scheduler: str = Field("cosine", description="transformers scheduler name")
    warmup_steps: int = Field(10, ge=0, description="learning-rate warm-up steps")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    max_grad_norm: float = Field(1.0, gt=0, description="gradient clipping")
    logging_steps: int = Field(10, ge=1, description="log every N steps")
    save_steps: int = Field(100, ge=1, description="checkpoint every N steps")
    save_total_limit: int = Field(2, ge=1, description="complete checkpoints kept")
    bf16: bool = Field(
        False,
        description="bf16 autocast (GPUs, CPUs with fast bf16 matmuls; measured 0.69x fp32 "
        "on an Intel Xeon, 1.10x on the demo on an AMD EPYC with avx512_bf16, "
        "benchmarks/README.md)",
    )
    gradient_checkpointing: bool = Field(
        False,
        description="recompute the student's activations in backward (less memory, more "
        "compute; exact)",
    )
    fsdp: FsdpSpec = Field(default_factory=lambda: FsdpSpec())
    report_to: list[str] = Field(default_factory=list, description="e.g. [tensorboard]")
    num_threads: int | None = Field(None, ge=1, description="torch CPU threads")
    loss_chunk_size: int | None = Field(
        128,
        ge=1,
        description="causal LMs: build logits this many positions at a time "
        "(memory-bounded KD loss) when a micro-batch has more positions than this; "
        "null = always the full-logit loss. 128 measured fastest on CPU (a KD step 1.2-1.4x "
        "the full-logit one, benchmarks/README.md); not measured on GPU",
    )
    extra: dict = Field(default_factory=dict, description="passed to TrainingArguments as is")


class RunConfig(Strict):
    """One distillation (or teacher-training) run."""

    task: Literal["lm", "classifier"] = Field("lm", description="lm | classifier")
    output_dir: str = Field("runs/distill", description="run folder (checkpoints, model, logs)")
    device: str = Field(
        "auto",
        description="where models run: auto (a CUDA GPU, else MPS, else the CPU), cpu, cuda, "
        "cuda:N or mps; training follows Accelerate's choice unless this is cpu",
    )
    seed: int = Field(0, description="seed for init, data order and splits")
    teacher: SerializeAsAny[TeacherSpec] = Field(default_factory=ModelTeacherSpec)
    student: ModelSpec = Field(default_factory=ModelSpec)
    data: DataSpec = Field(default_factory=DataSpec)
    distill: DistillSpec = Field(default_factory=DistillSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    cache: CacheSpec = Field(default_factory=CacheSpec)
    generate: GenerateSpec = Field(default_factory=GenerateSpec)

    @field_validator("teacher", mode="before")
    @classmethod
    def _teacher_kind(cls, value):
        return teacher_spec(value)
