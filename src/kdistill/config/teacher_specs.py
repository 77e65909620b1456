"""The ``teacher:`` section: one settings class per teacher kind (``kind`` names it), and
:func:`register_teacher_spec` for kinds defined outside kdistill."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from kdistill.config.base import ClassifierShape


class TeacherSpec(ClassifierShape):
    """Where the teacher's knowledge comes from (``kind``), and the teacher model if any.

    ``model`` is the teacher model: run online (kind ``model``), the one a store or recorded
    log-probs are checked against, the one a student is cut from, the one evaluated beside.
    """

    kind: str = Field(
        "model",
        description="model: the teacher runs beside the student | store: sparse targets "
        "from `kdistill cache` (teacher.path) | recorded: top logprobs stored with the "
        "generations in data.source | served: a server scores the text (teacher.base_url) "
        "| aligned: a teacher model with another tokenizer (teacher.objective) "
        "| none: no teacher (the same-size baseline)",
    )
    model: str | None = Field(
        "smollm2-135m",
        description="bundled name (smollm2-135m, gemma3-270m), a .gguf file, a local HF folder "
        "or a hub id (org/name[@revision], through the Hugging Face cache); "
        "for classifiers an architecture (cnn, mlp) or a trained run's model folder",
    )
    dtype: Literal["float32", "bfloat16", "float16", "int8"] = Field(
        "float32",
        description="weights dtype; int8: the teacher's linear layers held as weight-only int8 "
        "(torchao, the compress extra), its head and the soft-label math in fp32; a student "
        "cut from the teacher (student.from_teacher) is cut from its fp32 weights, and the "
        "teacher is cast after (bfloat16: 2.09x its forward speed on a 2-core AMD EPYC with "
        "avx512_bf16, benchmarks/README.md)",
    )
    ensemble: list[str] = Field(
        default_factory=list,
        description="classifier: more trained teachers' model folders; the teacher is then the "
        "ensemble of teacher.model and these (the mean of their log-probabilities)",
    )


class ModelTeacherSpec(TeacherSpec):
    kind: Literal["model"] = "model"


class StoreTeacherSpec(TeacherSpec):
    kind: Literal["store"] = "store"
    path: str = Field(description="the store folder written by `kdistill cache` (cache.dir)")


class RecordedTeacherSpec(TeacherSpec):
    kind: Literal["recorded"] = "recorded"


class NoTeacherSpec(TeacherSpec):
    kind: Literal["none"] = "none"


class ServedTeacherSpec(TeacherSpec):
    """A teacher behind an OpenAI-compatible server that scores text (vLLM, SGLang,
    llama-cpp-python with --logits_all true): top-k log-probs of every prompt position."""

    kind: Literal["served"] = "served"
    base_url: str = Field(description="the server, e.g. http://127.0.0.1:8000")
    served_model: str = Field("teacher", description="model name sent to the server")
    api_key_env: str = Field("OPENAI_API_KEY", description="environment variable with the key")
    top_k: int = Field(20, ge=1, le=100, description="log-probs per position")
    send: Literal["auto", "ids", "text"] = Field(
        "auto",
        description="prompts as token ids or text (auto: ids, text if the server refuses)",
    )
    extra_body: dict[str, Any] = Field(default_factory=dict, description="extra request fields")
    max_concurrency: int = Field(8, ge=1, description="requests in flight")
    timeout_s: float = Field(60.0, gt=0, description="per-request timeout")
    max_retries: int = Field(6, ge=0, description="retries on 429/5xx/timeouts")


class AlignedTeacherSpec(TeacherSpec):
    """A teacher model with another tokenizer than the student's (cross-tokenizer KD): the
    student's text is re-tokenised for the teacher and positions are aligned by text."""

    kind: Literal["aligned"] = "aligned"
    objective: Literal["mapped", "uld"] = Field(
        "mapped",
        description="mapped: the teacher's mass moved onto student tokens with the same "
        "string, the rest in a tail bucket (any distill.divergence) | uld: Wasserstein-1 "
        "between the sorted probability vectors (no shared strings needed; "
        "distill.divergence unused)",
    )


# teacher.kind -> its settings; register_teacher_spec adds kinds (also from outside kdistill)
TEACHER_SPECS: dict[str, type[TeacherSpec]] = {
    "model": ModelTeacherSpec,
    "store": StoreTeacherSpec,
    "recorded": RecordedTeacherSpec,
    "none": NoTeacherSpec,
    "served": ServedTeacherSpec,
    "aligned": AlignedTeacherSpec,
}


def register_teacher_spec(kind: str, spec: type[TeacherSpec]) -> None:
    """Make ``teacher: {kind: <kind>, ...}`` valid, with ``spec``'s settings."""
    TEACHER_SPECS[kind] = spec


def teacher_spec(data) -> TeacherSpec:
    """The settings class of ``data['kind']`` (default ``model``), validated."""
    if isinstance(data, TeacherSpec):
        return data
    if not isinstance(data, dict):
        raise ValueError("teacher must be a mapping, e.g. {kind: model, model: smollm2-135m}")
    kind = data.get("kind", "model")
    if kind not in TEACHER_SPECS:
        raise ValueError(f"unknown teacher.kind {kind!r}; use one of {', '.join(TEACHER_SPECS)}")
    return TEACHER_SPECS[kind].model_validate(data)
