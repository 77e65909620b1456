"""A teacher behind any OpenAI-compatible HTTP API (``/v1/chat/completions`` or
``/v1/completions``): concurrency, rate limit, timeouts, retries with jittered exponential
backoff on 429 / 5xx / timeouts / dropped connections (httpx + tenacity)."""

from __future__ import annotations

import asyncio
import hashlib
import time

import httpx
from tenacity import (
    AsyncRetrying,
    RetryError,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from kdistill.errors import KdistillError
from kdistill.teachers import DEFAULT_MAX_NEW_TOKENS


class ServedError(KdistillError, RuntimeError):
    """A fatal, user-facing server problem (bad key, unreachable, bad request)."""


class _Retryable(Exception):
    def __init__(self, why: str):
        super().__init__(why)
        self.why = why


def sample_seed(prompt_id: str, sample: int) -> int:
    return int(hashlib.sha256(f"{prompt_id}/{sample}".encode()).hexdigest()[:8], 16)


class OpenAICompatibleTeacher:
    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        mode: str = "chat",
        timeout_s: float = 60.0,
        max_retries: int = 6,
        max_concurrency: int = 8,
        rate_limit_per_s: float | None = None,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 8.0,
    ):
        if mode not in ("chat", "completions"):
            raise ValueError(f"generate.mode must be chat or completions, got {mode!r}")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.mode = mode
        self.max_retries = max_retries
        self.backoff = (backoff_base_s, backoff_max_s)
        self.semaphore = asyncio.Semaphore(max_concurrency)
        self.min_interval = 1.0 / rate_limit_per_s if rate_limit_per_s else 0.0
        self._next_start = 0.0
        self._rate_lock = asyncio.Lock()
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(timeout_s), headers=headers)
        self.requests_sent = 0

    async def close(self) -> None:
        await self.client.aclose()

    async def _throttle(self) -> None:
        if not self.min_interval:
            return
        async with self._rate_lock:
            now = time.monotonic()
            wait = self._next_start - now
            self._next_start = max(now, self._next_start) + self.min_interval
        if wait > 0:
            await asyncio.sleep(wait)

    async def _post_once(self, path: str, body: dict) -> dict:
        await self._throttle()
        self.requests_sent += 1
        try:
            resp = await self.client.post(self.base_url + path, json=body)
        except httpx.TimeoutException as exc:
            raise _Retryable("timeout") from exc
        except httpx.TransportError as exc:
            raise _Retryable(f"connection error ({type(exc).__name__})") from exc
        if resp.status_code == 429 or resp.status_code >= 500:
            raise _Retryable(f"HTTP {resp.status_code}")
        if resp.status_code in (401, 403):
            raise ServedError(
                f"server at {self.base_url} refused the API key "
                f"(HTTP {resp.status_code}); set the key's environment variable"
            )
        if resp.status_code >= 400:
            raise ServedError(
                f"server at {self.base_url} rejected the request "
                f"(HTTP {resp.status_code}: {resp.text[:120]!r})"
            )
        try:
            return resp.json()
        except ValueError as exc:
            raise _Retryable("malformed JSON response") from exc

    async def _post(self, path: str, body: dict) -> dict:
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(self.max_retries + 1),
                wait=wait_random_exponential(multiplier=self.backoff[0], max=self.backoff[1]),
                retry=retry_if_exception_type(_Retryable),
                reraise=False,
            ):
                with attempt:
                    return await self._post_once(path, body)
        except RetryError as exc:
            why = exc.last_attempt.exception()
            raise ServedError(
                f"server at {self.base_url} failed {self.max_retries + 1} times "
                f"(last: {getattr(why, 'why', why)}); is it running?"
            ) from exc
        raise AssertionError("unreachable")

    async def post(self, path: str, body: dict) -> dict:
        """``body`` to ``path``, with the retries and rate limit; the parsed JSON reply."""
        return await self._post(path, body)

    async def post_once(self, path: str, body: dict) -> dict:
        """One attempt, no retry (raises on any failure): for probing what a server takes."""
        return await self._post_once(path, body)

    async def generate(self, prompt, sample: int, params: dict) -> dict:
        """One completion for ``(prompt, sample)``: text, total log-prob, top logprobs, usage."""
        body = {
            "model": self.model,
            "temperature": params.get("sampling_temperature", 1.0),
            "top_p": params.get("top_p", 1.0),
            "max_tokens": params.get("max_tokens", DEFAULT_MAX_NEW_TOKENS),
            "seed": sample_seed(prompt.id, sample),
        }
        if params.get("stop"):
            body["stop"] = params["stop"]
        body.update(params.get("extra_body") or {})
        k = params.get("top_logprobs", 0)
        if self.mode == "chat":
            msgs = list(prompt.messages or [{"role": "user", "content": prompt.text}])
            if params.get("system_prompt") and msgs[0].get("role") != "system":
                msgs = [{"role": "system", "content": params["system_prompt"]}, *msgs]
            body["messages"] = msgs
            body["logprobs"] = True
            if k:
                body["top_logprobs"] = k
            path = "/v1/chat/completions"
        else:
            body["prompt"] = (
                prompt.text
                if prompt.text is not None
                else "\n".join(m["content"] for m in prompt.messages)
            )
            body["logprobs"] = max(k, 1)
            path = "/v1/completions"
        async with self.semaphore:
            data = await self._post(path, body)
        return parse_response(data, self.mode)


def parse_response(data: dict, mode: str) -> dict:
    try:
        choice = data["choices"][0]
    except (KeyError, IndexError, TypeError) as exc:
        raise ServedError(f"server response has no choices: {str(data)[:120]}") from exc
    usage = data.get("usage") or {}
    out = {
        "completion": "",
        "logprob": None,
        "top_logprobs": None,
        "tokens": None,
        "finish_reason": choice.get("finish_reason"),
        "usage": {
            "prompt_tokens": usage.get("prompt_tokens", 0),
            "completion_tokens": usage.get("completion_tokens", 0),
        },
    }
    lp = choice.get("logprobs")
    if mode == "chat":
        out["completion"] = (choice.get("message") or {}).get("content") or ""
        content = (lp or {}).get("content") if isinstance(lp, dict) else None
        if content:
            out["logprob"] = float(sum(t["logprob"] for t in content))
            out["tokens"] = [t.get("token") for t in content]
            out["top_logprobs"] = [
                [[a["token"], a["logprob"]] for a in t.get("top_logprobs", [])] for t in content
            ]
    else:
        out["completion"] = choice.get("text") or ""
        if isinstance(lp, dict) and lp.get("token_logprobs"):
            out["logprob"] = float(sum(x for x in lp["token_logprobs"] if x is not None))
            out["tokens"] = lp.get("tokens")
            tops = lp.get("top_logprobs") or []
            out["top_logprobs"] = [
                sorted(([t, v] for t, v in (d or {}).items()), key=lambda x: -x[1]) for d in tops
            ]
    return out
