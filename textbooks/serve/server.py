"""An OpenAI-compatible HTTP server for the project's checkpoints (``textbooks serve``).

Routes: ``GET /v1/models``, ``POST /v1/completions``, ``POST /v1/chat/completions`` (streaming with server-sent
events or not), ``GET /health``. Requests are validated the way the OpenAI API does (types, ranges, unknown
fields, context length) and refused with a 4xx JSON error ``{"error": {"message", "type", "param", "code"}}``;
no request can crash the server. Concurrent requests are batched by :class:`textbooks.serve.engine.Engine`.

Chat messages are rendered with the model's own chat template when its tokenizer has one (a GGUF file's,
or a transformers folder's ``tokenizer_config.json``/``chat_template.jinja``; rendered exactly as transformers'
``apply_chat_template`` with ``add_generation_prompt=True``, see :mod:`textbooks.vocab.chat_template`), and
generation ends at the model's end-of-sequence token. Models without one (the phi models have no chat tokens)
get a plain template::

    System: <system message>

    User: <user message>

    Assistant: <assistant message>

    User: ...

    Assistant:

and generation stops at ``"\\nUser:"`` in addition to the request's own stop strings.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
import uuid
from typing import Any, Callable, Mapping

from aiohttp import web

from textbooks.serve.engine import Engine, Job, Overloaded

logger = logging.getLogger(__name__)

CHAT_STOP = "\nUser:"
_ROLES = {"system": "System", "user": "User", "assistant": "Assistant"}
_NUMBER = (int, float)

# field -> (accepted types, check of the value or None). Fields with only a default value accepted are
# listed in _DEFAULT_ONLY.
_COMMON = {
    "model": ((str,), None),
    "max_tokens": ((int, type(None)), lambda v: v is None or v >= 1),
    "temperature": (_NUMBER, lambda v: 0 <= v <= 2),
    "top_p": (_NUMBER, lambda v: 0 < v <= 1),
    "top_k": ((int,), lambda v: v >= -1),
    "n": ((int,), lambda v: v == 1),
    "stream": ((bool,), None),
    "stream_options": ((dict, type(None)), None),
    "stop": ((str, list, type(None)), None),
    "seed": ((int, type(None)), None),
    "user": ((str,), None),
    "presence_penalty": (_NUMBER, lambda v: v == 0),
    "frequency_penalty": (_NUMBER, lambda v: v == 0),
    "logit_bias": ((dict, type(None)), lambda v: not v),
}
_RANGES = {"max_tokens": "an integer >= 1", "temperature": "between 0 and 2", "top_p": "in (0, 1]",
           "top_k": "-1 or 0 (off) or a positive integer", "n": "1 (this server returns one choice per prompt)",
           "presence_penalty": "0 (penalties are not supported)", "frequency_penalty": "0 (penalties are not supported)",
           "logit_bias": "empty (not supported)", "logprobs": "null or false (not supported)",
           "echo": "false (not supported)", "best_of": "1", "suffix": "null (not supported)",
           "max_completion_tokens": "an integer >= 1", "top_logprobs": "null (not supported)",
           "response_format": "null or {\"type\": \"text\"}", "tools": "null or empty (not supported)",
           "tool_choice": "null or \"none\"", "parallel_tool_calls": "null"}
COMPLETION_FIELDS = {
    **_COMMON,
    "prompt": ((str, list), None),
    "logprobs": ((int, bool, type(None)), lambda v: v is None or v is False),
    "echo": ((bool,), lambda v: v is False),
    "best_of": ((int, type(None)), lambda v: v in (None, 1)),
    "suffix": ((str, type(None)), lambda v: v is None),
}
CHAT_FIELDS = {
    **_COMMON,
    "messages": ((list,), None),
    "max_completion_tokens": ((int, type(None)), lambda v: v is None or v >= 1),
    "logprobs": ((bool, type(None)), lambda v: not v),
    "top_logprobs": ((int, type(None)), lambda v: v is None),
    "response_format": ((dict, type(None)), lambda v: v is None or v == {"type": "text"}),
    "tools": ((list, type(None)), lambda v: not v),
    "tool_choice": ((str, type(None)), lambda v: v in (None, "none")),
    "parallel_tool_calls": ((bool, type(None)), lambda v: v is None),
}


class RequestError(Exception):
    """A request the server refuses; becomes an OpenAI-style JSON error."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 type_: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type_


def error_response(status: int, message: str, *, param: str | None = None, code: str | None = None,
                   type_: str = "invalid_request_error", headers: Mapping[str, str] | None = None) -> web.Response:
    return web.json_response({"error": {"message": message, "type": type_, "param": param, "code": code}},
                             status=status, headers=headers)


@web.middleware
async def _errors(request: web.Request, handler: Callable) -> web.StreamResponse:
    try:
        return await handler(request)
    except RequestError as e:
        return error_response(e.status, e.message, param=e.param, code=e.code, type_=e.type)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        message = {404: f"no route {request.method} {request.path}; see GET /v1/models, POST /v1/completions, "
                        f"POST /v1/chat/completions, POST /reset_prefix_cache",
                   405: f"method {request.method} is not allowed on {request.path}",
                   413: "request body too large"}.get(e.status, e.reason)
        return error_response(e.status, message, code=e.reason.lower().replace(" ", "_"))
    except Overloaded as e:
        return error_response(429, f"server overloaded: {e}", type_="rate_limit_error", code="overloaded",
                              headers={"Retry-After": "1"})
    except Exception as e:  # noqa: BLE001 - never crash on a request
        logger.exception("internal error on %s %s", request.method, request.path)
        return error_response(500, f"internal server error: {type(e).__name__}: {e}", type_="server_error")


def _check_fields(body: Any, fields: Mapping[str, tuple], required: tuple[str, ...]) -> None:
    if not isinstance(body, dict):
        raise RequestError(400, f"the request body must be a JSON object, got {type(body).__name__}")
    unknown = sorted(set(body) - set(fields))
    if unknown:
        raise RequestError(400, f"unknown field(s): {', '.join(unknown)}; supported: {', '.join(sorted(fields))}",
                           param=unknown[0], code="unknown_field")
    for name in required:
        if name not in body:
            raise RequestError(400, f"missing required field {name!r}", param=name, code="missing_required_field")
    for name, value in body.items():
        types, check = fields[name]
        ok_type = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
        if not ok_type:
            names = " or ".join("null" if t is type(None) else {"dict": "object", "list": "array", "str": "string",
                                                                 "int": "integer", "float": "number"}.get(t.__name__, t.__name__)
                                for t in types)
            raise RequestError(400, f"{name!r} must be {names}, got {json.dumps(value)[:60]}", param=name,
                               code="invalid_type")
        if check is not None and not check(value):
            raise RequestError(400, f"{name!r} must be {_RANGES.get(name, 'valid')}, got {json.dumps(value)[:60]}",
                               param=name, code="invalid_value")


def _stops(body: Mapping[str, Any]) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else stop
    if len(stops) > 4 or not all(isinstance(s, str) and s for s in stops):
        raise RequestError(400, "'stop' must be a non-empty string or a list of at most 4 non-empty strings",
                           param="stop", code="invalid_value")
    return list(stops)


def render_chat(messages: list, vocabulary: Any = None) -> str:
    """The prompt of a conversation (see the module docstring); validates the messages.

    Args:
        messages: the request's ``messages``.
        vocabulary: the served vocabulary; its ``render_chat`` renders the model's own chat template when its
            ``chat_template`` is set, else the plain template is used.

    Raises:
        RequestError: a message is not ``{"role": system|user|assistant, "content": str}``, or the model's
            template refuses the conversation (its ``raise_exception`` message is returned).
    """
    if not messages:
        raise RequestError(400, "'messages' must be a non-empty array", param="messages")
    parts = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or set(m) - {"role", "content", "name"}:
            raise RequestError(400, f"messages[{i}] must be an object with 'role' and 'content' (and optional "
                                    f"'name')", param=f"messages[{i}]")
        if m.get("role") not in _ROLES:
            raise RequestError(400, f"messages[{i}].role must be one of {', '.join(_ROLES)}, got "
                                    f"{json.dumps(m.get('role'))}", param=f"messages[{i}].role")
        if not isinstance(m.get("content"), str):
            raise RequestError(400, f"messages[{i}].content must be a string", param=f"messages[{i}].content")
        parts.append(f"{_ROLES[m['role']]}: {m['content']}")
    if getattr(vocabulary, "chat_template", None):
        try:
            return vocabulary.render_chat([dict(m) for m in messages], add_generation_prompt=True)
        except ValueError as e:
            raise RequestError(400, f"the model's chat template refused the messages: {e}", param="messages") from e
    return "\n\n".join(parts) + "\n\nAssistant:"


class Server:
    """The aiohttp application around an :class:`Engine`.

    Args:
        engine: the engine (started by the app's startup hook).
        max_body_bytes: largest accepted request body.
    """

    def __init__(self, engine: Engine, *, max_body_bytes: int = 4 << 20):
        self.engine = engine
        self.created = int(time.time())
        self.app = web.Application(client_max_size=max_body_bytes, middlewares=[_errors])
        self.app.add_routes([web.get("/v1/models", self.models), web.get("/health", self.health),
                             web.post("/v1/completions", self.completions),
                             web.post("/v1/chat/completions", self.chat_completions),
                             web.post("/reset_prefix_cache", self.reset_prefix_cache)])
        self.app.on_startup.append(self._start)
        self.app.on_cleanup.append(self._stop)

    async def _start(self, app: web.Application) -> None:
        await self.engine.start()

    async def _stop(self, app: web.Application) -> None:
        await self.engine.stop()

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "model": self.engine.model_name, **self.engine.stats})

    async def reset_prefix_cache(self, request: web.Request) -> web.Response:
        """Drops the learned prompt beginnings (:meth:`Engine.reset_prefix_cache`)."""
        return web.json_response({"dropped": await self.engine.reset_prefix_cache()})

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [
                {"id": self.engine.model_name, "object": "model", "created": self.created, "owned_by": "textbooks",
                 "max_model_len": self.engine.max_len}]})

    async def _body(self, request: web.Request) -> Any:
        raw = await request.read()
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise RequestError(400, f"the request body is not valid JSON: {e}", code="invalid_json") from None

    def _encode(self, text: str, param: str) -> list[int]:
        # A token covers at most a few dozen characters: far longer texts cannot fit, whatever their tokens.
        if len(text) > 64 * self.engine.max_len:
            raise RequestError(400, f"this model's maximum context length is {self.engine.max_len} tokens, and the "
                                    f"{param} has {len(text):,} characters; shorten it", param=param,
                               code="context_length_exceeded")
        try:
            return self.engine.encode(text)
        except Exception as e:  # noqa: BLE001 - e.g. lone surrogates the tokenizer cannot encode
            raise RequestError(400, f"the {param} cannot be tokenized: {type(e).__name__}: {e}", param=param,
                               code="invalid_value") from None

    def _check_model(self, body: Mapping[str, Any]) -> None:
        name = body.get("model", self.engine.model_name)
        if name != self.engine.model_name:
            raise RequestError(404, f"the model {name!r} does not exist; this server serves "
                                    f"{self.engine.model_name!r}", param="model", code="model_not_found")

    def _jobs(self, body: Mapping[str, Any], prompts: list[list[int]], max_tokens: int | None, stops: list[str],
              stream: asyncio.Queue | None) -> list[Job]:
        jobs = []
        seed = body.get("seed")
        for i, ids in enumerate(prompts):
            if not ids:
                raise RequestError(400, "the prompt is empty after tokenization", param="prompt", code="empty_prompt")
            room = self.engine.max_len - len(ids)
            wanted = max_tokens if max_tokens is not None else room
            label = "" if len(prompts) == 1 else f" #{i}"
            if room < 1:
                raise RequestError(400, f"this model's maximum context length is {self.engine.max_len} tokens, but "
                                        f"the prompt{label} has {len(ids)} tokens; shorten it",
                                   param="prompt", code="context_length_exceeded")
            if wanted > room:
                raise RequestError(400, f"this model's maximum context length is {self.engine.max_len} tokens, but "
                                        f"{len(ids) + wanted} were requested ({len(ids)} in the prompt{label}, {wanted} "
                                        f"for the completion); shorten the prompt or lower max_tokens",
                                   param="max_tokens", code="context_length_exceeded")
            top_k = int(body.get("top_k", 0))
            jobs.append(Job(prompt_ids=ids, max_tokens=wanted, temperature=float(body.get("temperature", 1.0)),
                            top_p=float(body.get("top_p", 1.0)), top_k=max(0, top_k), stop=stops, stream=stream,
                            index=i, seed=((seed if seed is not None else random.getrandbits(31)) + i) % (1 << 63)))
        return jobs

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        _check_fields(body, COMPLETION_FIELDS, ("prompt",))
        self._check_model(body)
        prompt = body["prompt"]
        if isinstance(prompt, str):
            prompts = [self._encode(prompt, "prompt")]
        elif prompt and all(isinstance(p, str) for p in prompt):
            prompts = [self._encode(p, "prompt") for p in prompt]
        elif prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            if any(not 0 <= t < self.engine.config.vocab_size for t in prompt):
                raise RequestError(400, f"token ids must be in [0, {self.engine.config.vocab_size})", param="prompt")
            prompts = [list(prompt)]
        else:
            raise RequestError(400, "'prompt' must be a string, a non-empty array of strings or an array of token "
                                    "ids", param="prompt", code="invalid_type")
        return await self._run(request, body, prompts, body.get("max_tokens", 16), _stops(body), chat=False)

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        _check_fields(body, CHAT_FIELDS, ("messages",))
        self._check_model(body)
        vocabulary = self.engine.vocabulary
        prompts = [self._encode(render_chat(body["messages"], vocabulary), "messages")]
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
        own_template = bool(getattr(vocabulary, "chat_template", None))  # it ends turns with the eos token
        return await self._run(request, body, prompts, max_tokens, _stops(body) + ([] if own_template else [CHAT_STOP]),
                               chat=True)

    async def _run(self, request: web.Request, body: Mapping[str, Any], prompts: list[list[int]],
                   max_tokens: int | None, stops: list[str], *, chat: bool) -> web.StreamResponse:
        stream = bool(body.get("stream", False))
        queue: asyncio.Queue | None = asyncio.Queue() if stream else None
        jobs = self._jobs(body, prompts, max_tokens, stops, queue)
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        futures = self._submit(jobs)
        if not stream:
            try:
                await asyncio.gather(*futures)
            except asyncio.CancelledError:
                for j in jobs:
                    j.cancelled = True
                raise
            failed = next((j for j in jobs if j.error is not None), None)
            if failed is not None:
                raise RequestError(500, f"generation failed: {type(failed.error).__name__}: {failed.error}",
                                   type_="server_error")
            return web.json_response(self._final(rid, jobs, chat))
        return await self._stream(request, rid, jobs, queue, chat,
                                  bool((body.get("stream_options") or {}).get("include_usage")))

    def _submit(self, jobs: list[Job]) -> list[asyncio.Future]:
        futures = []
        try:
            for j in jobs:
                futures.append(self.engine.submit(j))
        except Overloaded:
            for j in jobs:
                j.cancelled = True
            raise
        return futures

    def _usage(self, jobs: list[Job]) -> dict:
        p = sum(len(j.prompt_ids) for j in jobs)
        c = sum(len(j.generated) for j in jobs)
        return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}

    def _final(self, rid: str, jobs: list[Job], chat: bool) -> dict:
        if chat:
            choices = [{"index": j.index, "message": {"role": "assistant", "content": j.text},
                        "logprobs": None, "finish_reason": j.finish_reason} for j in jobs]
        else:
            choices = [{"index": j.index, "text": j.text, "logprobs": None, "finish_reason": j.finish_reason}
                       for j in jobs]
        return {"id": rid, "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
                "model": self.engine.model_name, "choices": choices, "usage": self._usage(jobs)}

    def _chunk(self, rid: str, chat: bool, index: int, text: str | None, finish: str | None,
               first: bool = False) -> dict:
        if chat:
            delta = ({"role": "assistant", "content": ""} if first else {}) | ({"content": text} if text else {})
            choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        else:
            choice = {"index": index, "text": text or "", "logprobs": None, "finish_reason": finish}
        return {"id": rid, "object": "chat.completion.chunk" if chat else "text_completion",
                "created": int(time.time()), "model": self.engine.model_name, "choices": [choice]}

    async def _stream(self, request: web.Request, rid: str, jobs: list[Job], queue: asyncio.Queue, chat: bool,
                      include_usage: bool) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)

        async def send(obj: Any) -> None:
            await resp.write(b"data: " + (obj if isinstance(obj, bytes) else json.dumps(obj).encode()) + b"\n\n")

        try:
            if chat:
                for j in jobs:
                    await send(self._chunk(rid, chat, j.index, None, None, first=True))
            open_jobs = len(jobs)
            while open_jobs:
                index, kind, text = await queue.get()
                if kind == "delta":
                    await send(self._chunk(rid, chat, index, text, None))
                    continue
                open_jobs -= 1
                job = jobs[index]
                if job.error is not None:
                    await send({"error": {"message": f"generation failed: {job.error}", "type": "server_error",
                                          "param": None, "code": None}})
                    return resp
                await send(self._chunk(rid, chat, index, None, job.finish_reason))
            if include_usage:
                await send({"id": rid, "object": "chat.completion.chunk" if chat else "text_completion",
                            "created": int(time.time()), "model": self.engine.model_name, "choices": [],
                            "usage": self._usage(jobs)})
            await send(b"[DONE]")
            await resp.write_eof()
        except ConnectionResetError:  # The client went away: stop generating for it.
            for j in jobs:
                j.cancelled = True
        except asyncio.CancelledError:
            for j in jobs:
                j.cancelled = True
            raise
        return resp


async def serve(engine: Engine, host: str = "127.0.0.1", port: int = 8000, *,
                ready: Callable[[str], None] | None = None) -> None:
    """Runs the server until cancelled; calls ``ready(url)`` once listening (port 0 picks a free port)."""
    server = Server(engine)
    runner = web.AppRunner(server.app, access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1]
    if ready is not None:
        ready(f"http://{host}:{bound}")
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
