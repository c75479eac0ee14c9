"""Async client for OpenAI-compatible completion servers (vLLM, TGI, llama.cpp server, hosted APIs, `textbooks serve`).

One :class:`OpenAIClient` talks to one endpoint and model through ``/v1/completions`` and
``/v1/chat/completions``, non-streaming or streaming (server-sent events). It bounds the number of requests in
flight, retries what is worth retrying (429 honoring ``Retry-After``, 5xx, time-outs, connection errors,
malformed JSON, streams cut before ``[DONE]``) with exponential backoff and jitter, and fails at once with the
server's message on any other 4xx. It counts tokens from the ``usage`` fields and estimates cost from
configurable prices. The API key is read from an environment variable and never appears in reprs, logs or
error messages. Reading the answers (JSON bodies, event streams, usage, error messages, ``Retry-After``) is
:mod:`textbooks.serve.answers`'s.

Example::

    async with OpenAIClient("http://127.0.0.1:8000/v1", "phi-1.5", concurrency=16) as client:
        result = await client.complete("def fib(n):", max_tokens=64, temperature=0.2)
        print(result.text, result.usage.completion_tokens)
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import random
import time
from typing import Any, Mapping, Sequence

import aiohttp

from textbooks.serve.answers import (Answer, RetryableAnswer, Usage, error_message, parse_body, parse_retry_after,
                                     read_stream)

logger = logging.getLogger(__name__)

# Statuses worth retrying besides 5xx: request timeout, conflict, too early, rate limited.
RETRY_STATUSES = frozenset({408, 409, 425, 429})
# 4xx statuses that mean every request of a run would be refused (key, payment, permissions, model name).
FATAL_STATUSES = frozenset({401, 402, 403, 404})
# Sampling fields the client sets itself; passing them in ``**sampling`` is a mistake.
_RESERVED = frozenset({"model", "prompt", "messages", "stream"})


class ClientError(Exception):
    """Base class of the errors this client raises."""


class APIStatusError(ClientError):
    """The server refused the request with a status that retrying will not fix (a 4xx other than 429).

    Attributes:
        status: the HTTP status.
        message: the server's error message (from ``{"error": {"message": ...}}`` or the body text).
        fatal: the status refuses every request alike (:data:`FATAL_STATUSES`: key, permissions, model name),
            so a run should stop at the first one rather than count it against one prompt.
    """

    def __init__(self, status: int, message: str, url: str):
        self.status = status
        self.message = message
        self.url = url
        self.fatal = status in FATAL_STATUSES
        super().__init__(f"HTTP {status} from {url}: {message}")


class RetriesExhaustedError(ClientError):
    """Every attempt failed with a retryable error; ``last_error`` says how the last one failed."""

    def __init__(self, message: str, attempts: int, last_error: str):
        self.attempts = attempts
        self.last_error = last_error
        super().__init__(message)


class EndpointUnreachableError(RetriesExhaustedError):
    """No attempt could connect to the endpoint (wrong host or port, server down)."""


@dataclasses.dataclass(frozen=True)
class Pricing:
    """Prices in currency units per 1,000 tokens (0 for a local server)."""

    prompt_per_1k: float = 0.0
    completion_per_1k: float = 0.0

    def cost(self, usage: Usage) -> float:
        return (usage.prompt_tokens * self.prompt_per_1k + usage.completion_tokens * self.completion_per_1k) / 1000.0


@dataclasses.dataclass(frozen=True)
class Completion:
    """The text of one completion and how it came about.

    Attributes:
        text: generated text (for chat, the assistant message content).
        finish_reason: 'stop', 'length', ... as the server said (None when it did not).
        usage: token counts, or None when the server reported none.
        model: the model name the server answered with.
        attempts: how many HTTP attempts it took.
        latency_s: seconds from the first attempt to the answer, backoff included.
    """

    text: str
    finish_reason: str | None
    usage: Usage | None
    model: str
    attempts: int = 1
    latency_s: float = 0.0


@dataclasses.dataclass
class ClientStats:
    """Running totals over all requests of a client."""

    requests: int = 0
    succeeded: int = 0
    failed: int = 0
    retries: int = 0
    retry_reasons: dict[str, int] = dataclasses.field(default_factory=dict)
    usage: Usage = Usage()
    missing_usage: int = 0
    cost: float = 0.0

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["usage"] = self.usage.to_dict()
        return d


def normalize_base_url(base_url: str) -> str:
    """``http://host:port`` -> ``http://host:port/v1``; a URL with a path is kept as given (sans trailing /)."""
    url = base_url.strip().rstrip("/")
    if "://" not in url:
        raise ValueError(f"endpoint {base_url!r} must be a URL such as http://127.0.0.1:8000/v1")
    scheme_host, _, path = url.partition("://")[2].partition("/")
    return url if path else url + "/v1"


class OpenAIClient:
    """An async client for one OpenAI-compatible endpoint and model.

    Args:
        base_url: e.g. ``http://127.0.0.1:8000/v1`` (``/v1`` is appended when the URL has no path).
        model: model name sent with every request.
        api_key_env: name of the environment variable holding the API key; when it is unset or empty the
            requests carry no ``Authorization`` header (local servers), unless ``require_api_key``.
        require_api_key: raise at construction when the variable is unset (hosted APIs).
        concurrency: most requests in flight at once.
        timeout: seconds allowed for one attempt (connect, send, and read the whole answer or stream).
        max_retries: retries after the first attempt (so ``max_retries + 1`` attempts in all).
        backoff_base: first backoff in seconds; doubled each retry, with jitter, capped at ``backoff_max``.
        backoff_max: longest exponential backoff in seconds.
        max_retry_after: longest ``Retry-After`` honored (a longer one is waited for this long).
        stream: use server-sent events (streaming) for every request.
        pricing: prices per 1,000 tokens for the cost estimate.
        seed: seeds the jitter (tests); None draws from the OS.
        headers: extra HTTP headers (e.g. an organization id).

    Raises:
        ValueError: a malformed URL or non-positive limits.
        ClientError: ``require_api_key`` and the variable is unset.
    """

    def __init__(self, base_url: str, model: str, *, api_key_env: str | None = "OPENAI_API_KEY",
                 require_api_key: bool = False, concurrency: int = 8, timeout: float = 120.0,
                 max_retries: int = 6, backoff_base: float = 0.5, backoff_max: float = 60.0,
                 max_retry_after: float = 300.0, stream: bool = False, pricing: Pricing | None = None, seed: int | None = None,
                 headers: Mapping[str, str] | None = None):
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        self.base_url = normalize_base_url(base_url)
        self.model = model
        self.api_key_env = api_key_env
        self._api_key = os.environ.get(api_key_env, "") if api_key_env else ""
        if require_api_key and not self._api_key:
            raise ClientError(f"the API key variable {api_key_env!r} is not set; export {api_key_env}=... "
                              f"or set require_api_key=False for a local server")
        self.concurrency = concurrency
        self.timeout = float(timeout)
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.max_retry_after = max_retry_after
        self.stream = stream
        self.pricing = pricing or Pricing()
        self.stats = ClientStats()
        self._headers = dict(headers or {})
        self._rng = random.Random(seed)
        self._semaphore: asyncio.Semaphore | None = None
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        key = "set" if self._api_key else "unset"
        return (f"OpenAIClient(base_url={self.base_url!r}, model={self.model!r}, api_key_env={self.api_key_env!r} "
                f"[{key}], concurrency={self.concurrency}, timeout={self.timeout}, max_retries={self.max_retries})")

    # ------------------------------------------------------------------------------------------------------
    # Session life cycle.

    async def __aenter__(self) -> "OpenAIClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        """Closes the HTTP session (a later request opens a new one)."""
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None
        self._semaphore = None

    def _ensure_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            headers = {"Content-Type": "application/json", **self._headers}
            if self._api_key:
                headers["Authorization"] = f"Bearer {self._api_key}"
            connector = aiohttp.TCPConnector(limit=self.concurrency)
            self._session = aiohttp.ClientSession(headers=headers, connector=connector)
            self._semaphore = asyncio.Semaphore(self.concurrency)
        return self._session

    def _redact(self, text: str) -> str:
        return text.replace(self._api_key, "***") if self._api_key else text

    # ------------------------------------------------------------------------------------------------------
    # Public API.

    async def complete(self, prompt: str, **sampling: Any) -> Completion:
        """Completes ``prompt`` through ``/completions``.

        Args:
            prompt: the prompt text.
            **sampling: OpenAI sampling fields (``max_tokens``, ``temperature``, ``top_p``, ``stop``, ``seed``,
                ...), sent as given; ``stream=`` is taken from the client.

        Returns:
            The :class:`Completion`.

        Raises:
            APIStatusError: a 4xx other than 408/409/425/429 (carries the server's message).
            EndpointUnreachableError: no attempt could connect.
            RetriesExhaustedError: all attempts failed with retryable errors.
        """
        return await self._request("completions", {"prompt": prompt}, sampling)

    async def chat(self, messages: Sequence[Mapping[str, str]], **sampling: Any) -> Completion:
        """Completes a conversation through ``/chat/completions``; see :meth:`complete`."""
        if not messages or not all(isinstance(m, Mapping) and "role" in m and "content" in m for m in messages):
            raise ValueError("messages must be a non-empty list of {'role': ..., 'content': ...} mappings")
        return await self._request("chat/completions", {"messages": [dict(m) for m in messages]}, sampling)

    async def complete_many(self, prompts: Sequence[str], **sampling: Any) -> list[Completion]:
        """Completes many prompts concurrently (bounded by ``concurrency``); results in prompt order."""
        return list(await asyncio.gather(*(self.complete(p, **sampling) for p in prompts)))

    # ------------------------------------------------------------------------------------------------------
    # Requests and retries.

    def _backoff(self, retry: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.max_retry_after)
        ceiling = min(self.backoff_max, self.backoff_base * (2 ** retry))
        return ceiling / 2 + self._rng.uniform(0, ceiling / 2)  # "equal jitter": never 0, spreads retries.

    async def _request(self, path: str, body: dict, sampling: Mapping[str, Any]) -> Completion:
        bad = sorted(_RESERVED & set(sampling))
        if bad:
            raise ValueError(f"sampling may not set {', '.join(bad)}: the client sets them")
        session = self._ensure_session()
        url = f"{self.base_url}/{path}"
        payload = {"model": self.model, **body, **sampling}
        if self.stream:
            payload["stream"] = True
            payload.setdefault("stream_options", {"include_usage": True})
        self.stats.requests += 1
        start = time.monotonic()
        connect_failures = 0
        last = ""
        for attempt in range(self.max_retries + 1):
            try:
                assert self._semaphore is not None
                async with self._semaphore:
                    text, finish, usage, model = await self._attempt(session, url, payload, path)
            except RetryableAnswer as e:
                last = self._redact(str(e))
                connect_failures += e.kind == "connect"
                if attempt == self.max_retries:
                    break
                self.stats.retries += 1
                self.stats.retry_reasons[e.kind] = self.stats.retry_reasons.get(e.kind, 0) + 1
                delay = self._backoff(attempt, e.retry_after)
                logger.debug("retry %d/%d of %s in %.2fs: %s", attempt + 1, self.max_retries, url, delay, last)
                await asyncio.sleep(delay)
                continue
            except APIStatusError:
                self.stats.failed += 1
                raise
            self.stats.succeeded += 1
            if usage is None:
                self.stats.missing_usage += 1
            else:
                self.stats.usage = self.stats.usage + usage
                self.stats.cost += self.pricing.cost(usage)
            return Completion(text=text, finish_reason=finish, usage=usage, model=model or self.model,
                              attempts=attempt + 1, latency_s=time.monotonic() - start)
        self.stats.failed += 1
        attempts = self.max_retries + 1
        if connect_failures == attempts:
            raise EndpointUnreachableError(
                    f"cannot reach {url} after {attempts} attempts ({last}); is the server running and is the "
                    f"endpoint right?", attempts, last)
        raise RetriesExhaustedError(f"request to {url} failed after {attempts} attempts; last error: {last}",
                                    attempts, last)

    async def _attempt(self, session: aiohttp.ClientSession, url: str, payload: dict, path: str) -> Answer:
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        try:
            async with session.post(url, json=payload, timeout=timeout) as resp:
                if resp.status >= 400:
                    body = await resp.text(errors="replace")
                    message = self._redact(error_message(body))
                    if resp.status >= 500 or resp.status in RETRY_STATUSES:
                        kind = "rate_limited" if resp.status == 429 else f"http_{resp.status}"
                        raise RetryableAnswer(f"HTTP {resp.status}: {message}", kind=kind,
                                         retry_after=parse_retry_after(resp.headers.get("Retry-After")))
                    raise APIStatusError(resp.status, message, url)
                if payload.get("stream"):
                    return await read_stream(resp, chat=path.startswith("chat"))
                raw = await resp.read()
        except (asyncio.TimeoutError, TimeoutError) as e:
            raise RetryableAnswer(f"no complete answer within {self.timeout:g}s", kind="timeout") from e
        except aiohttp.ClientConnectorError as e:
            raise RetryableAnswer(f"connection failed: {e.os_error or e}", kind="connect") from e
        except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError) as e:
            raise RetryableAnswer(f"answer cut short: {e}", kind="truncated") from e
        except aiohttp.ClientError as e:
            raise RetryableAnswer(f"{type(e).__name__}: {e}", kind="connection") from e
        return parse_body(raw, chat=path.startswith("chat"))
