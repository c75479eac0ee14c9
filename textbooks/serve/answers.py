"""Reading an OpenAI-compatible server's answers: JSON bodies, server-sent event streams, token usage, error
messages and ``Retry-After`` headers.

An answer that cannot be used but may be fine on a second try (malformed JSON, a stream cut before ``[DONE]``,
an error event inside a stream, a body without ``choices[0]`` text) raises :class:`RetryableAnswer` with a
``kind`` that the client counts its retries by. What to retry and how long to wait is the client's
(:class:`textbooks.serve.client.OpenAIClient`); this module only reads.
"""

from __future__ import annotations

import dataclasses
import email.utils
import json
import time
from typing import Any, Mapping

import aiohttp


class RetryableAnswer(Exception):
    """An attempt failed in a way worth retrying.

    Attributes:
        retry_after: the server's wish in seconds (``Retry-After``), or None.
        kind: what went wrong, for the retry counts ('malformed', 'truncated', 'timeout', 'http_503', ...).
    """

    def __init__(self, message: str, *, retry_after: float | None = None, kind: str = "error"):
        super().__init__(message)
        self.retry_after = retry_after
        self.kind = kind


@dataclasses.dataclass(frozen=True)
class Usage:
    """Token counts of one or more requests, as reported by the server."""

    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: "Usage") -> "Usage":
        return Usage(self.prompt_tokens + other.prompt_tokens, self.completion_tokens + other.completion_tokens)

    def to_dict(self) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.total_tokens}

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any] | None) -> "Usage | None":
        if not isinstance(obj, Mapping):
            return None
        try:
            return cls(int(obj.get("prompt_tokens") or 0), int(obj.get("completion_tokens") or 0))
        except (TypeError, ValueError):
            return None


# What one answer holds: (text, finish_reason, usage, model name); the last three as the server gave them.
Answer = tuple[str, "str | None", "Usage | None", "str | None"]


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (seconds or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def error_message(body: str) -> str:
    """The server's error message from an OpenAI-style JSON error, else the (shortened) body."""
    try:
        obj = json.loads(body)
    except ValueError:
        return body.strip()[:500] or "(empty body)"
    if isinstance(obj, dict):
        err = obj.get("error", obj)
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])[:1000]
        if isinstance(err, str):
            return err[:1000]
        if obj.get("message"):
            return str(obj["message"])[:1000]
    return body.strip()[:500]


def parse_body(raw: bytes, *, chat: bool) -> Answer:
    """Reads a non-streaming answer (the JSON body of ``/completions`` or, ``chat``, ``/chat/completions``).

    Raises:
        RetryableAnswer: the body is not JSON or has no ``choices[0]`` text.
    """
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise RetryableAnswer(f"malformed JSON in the answer: {raw[:80]!r}", kind="malformed") from e
    try:
        choice = obj["choices"][0]
        text = choice["message"]["content"] if chat else choice["text"]
        if not isinstance(text, str):
            raise TypeError(f"text is {type(text).__name__}")
    except (KeyError, IndexError, TypeError) as e:
        raise RetryableAnswer(f"answer lacks choices[0] text ({type(e).__name__}: {e})", kind="malformed") from e
    return text, choice.get("finish_reason"), Usage.from_dict(obj.get("usage")), obj.get("model")


async def read_stream(resp: aiohttp.ClientResponse, *, chat: bool) -> Answer:
    """Reads a streaming answer (server-sent events ending with ``data: [DONE]``) into one text.

    Raises:
        RetryableAnswer: an event is not a JSON object, the stream carries an error event, or it ends before
            ``[DONE]``.
    """
    pieces: list[str] = []
    finish = model = None
    usage = None
    done = False
    async for raw_line in resp.content:
        line = raw_line.decode("utf-8", "replace").strip()
        if not line or line.startswith(":") or not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            done = True
            break
        try:
            chunk = json.loads(data)
        except ValueError as e:
            raise RetryableAnswer(f"malformed JSON in stream event: {data[:80]!r}", kind="malformed") from e
        if not isinstance(chunk, dict):
            raise RetryableAnswer(f"stream event is not an object: {data[:80]!r}", kind="malformed")
        if isinstance(chunk.get("error"), dict):
            raise RetryableAnswer(f"error event in stream: {error_message(data)}", kind="stream_error")
        model = chunk.get("model", model)
        usage = Usage.from_dict(chunk.get("usage")) or usage
        for choice in chunk.get("choices") or []:
            piece = (choice.get("delta") or {}).get("content") if chat else choice.get("text")
            if piece:
                pieces.append(piece)
            finish = choice.get("finish_reason") or finish
    if not done:
        raise RetryableAnswer("stream ended before [DONE]", kind="truncated")
    return "".join(pieces), finish, usage, model
