"""Offline teacher work: the soft-label store (`kdistill cache`) and generation
(`kdistill generate`) with its filters."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from kdistill.config.base import Strict
from kdistill.teachers import DEFAULT_MAX_NEW_TOKENS


class CacheSpec(Strict):
    """`kdistill cache`: run the teacher once over the training data, store sparse targets."""

    dir: str = Field("runs/cache", description="store folder (manifest.json + shards)")
    method: Literal["topk", "sampled"] = Field(
        "sampled", description="topk: k most likely ids + tail; sampled: n draws (unbiased)"
    )
    k: int = Field(16, ge=1, le=255, description="topk: ids kept per position")
    n: int = Field(24, ge=1, le=255, description="sampled: draws per position")
    top_p: float | None = Field(None, gt=0, le=1, description="topk: stop once mass >= top_p")
    values: Literal["logprob8", "logprob16", "count8"] | None = Field(
        None, description="value encoding; default count8 (sampled) / logprob8 (topk)"
    )
    cache_temperature: float = Field(1.0, gt=0, description="teacher softmax temperature")
    shard_blocks: int = Field(64, ge=1, description="blocks per shard file")
    batch_size: int = Field(4, ge=1, description="teacher forward batch size")

    def value_kind(self) -> str:
        return self.values or ("count8" if self.method == "sampled" else "logprob8")


class FilterSpec(Strict):
    """Filters applied to generations, in this order; counts are reported per filter."""

    min_chars: int = Field(1, ge=0, description="drop completions shorter than this")
    max_chars: int | None = Field(None, ge=1, description="drop completions longer than this")
    dedup: bool = Field(True, description="drop repeated completions of the same prompt")
    verify: bool = Field(False, description="check the final answer against `answer`")
    answer_regex: str | None = Field(None, description="regex; group 1 is the final answer")
    answer_checker: str | None = Field(None, description="python module:function(final, ref)")
    require_think: bool = Field(False, description="drop samples without <think>...</think>")
    best_of_n: bool = Field(False, description="keep one per prompt: verified, then log-prob")


class GenerateSpec(Strict):
    """`kdistill generate`: the teacher writes completions for a prompt set."""

    prompts: str = Field(
        "prompts.jsonl", description="JSONL/Parquet: prompt or messages [+id, answer]"
    )
    output_dir: str = Field("runs/generations", description="generations.jsonl, kept.jsonl")
    backend: Literal["local", "openai"] = Field("local", description="local model or HTTP API")
    base_url: str = Field("http://127.0.0.1:8080", description="OpenAI-compatible server")
    api_key_env: str = Field("OPENAI_API_KEY", description="environment variable with the key")
    model: str = Field("teacher", description="model name sent to the server")
    mode: Literal["chat", "completions"] = Field("chat", description="which endpoint")
    n: int = Field(1, ge=1, description="samples per prompt")
    sampling_temperature: float = Field(0.7, ge=0, description="0 = greedy")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling")
    max_tokens: int = Field(DEFAULT_MAX_NEW_TOKENS, ge=1, description="max new tokens per sample")
    stop: list[str] = Field(default_factory=list, description="stop strings")
    system_prompt: str | None = Field(None, description="prepended system message")
    top_logprobs: int = Field(0, ge=0, le=20, description="per-token top logprobs to keep")
    extra_body: dict[str, Any] = Field(
        default_factory=dict,
        description="extra request fields, e.g. {repeat_penalty: 1.0} for llama.cpp greedy",
    )
    max_concurrency: int = Field(8, ge=1, description="requests in flight")
    batch_size: int = Field(8, ge=1, description="local backend: sequences per generate call")
    rate_limit_per_s: float | None = Field(None, gt=0, description="max request starts/s")
    timeout_s: float = Field(60.0, gt=0, description="per-request timeout")
    max_retries: int = Field(6, ge=0, description="retries on 429/5xx/timeouts")
    backoff_base_s: float = Field(0.5, gt=0, description="exponential backoff base")
    cost_per_1k_prompt_tokens: float = Field(0.0, ge=0, description="for cost accounting")
    cost_per_1k_completion_tokens: float = Field(0.0, ge=0, description="for cost accounting")
    filters: FilterSpec = Field(default_factory=FilterSpec)
