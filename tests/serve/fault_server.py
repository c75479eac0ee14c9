"""A fault-injecting OpenAI-compatible server for tests (aiohttp on 127.0.0.1, in a background thread).

Answers ``/v1/completions`` and ``/v1/chat/completions`` with a text derived from the prompt and the request's
``seed`` (pseudo-random words, so different requests give different texts and equal ones equal texts), with
usage counts. Before answering it may inject a fault, first from ``script`` (one entry per request, in
arrival order), then at random with probability ``fault_rate`` from a generator seeded by ``seed``:

* ``500`` / ``503``: server errors; ``429``: rate limited with ``Retry-After: <retry_after>``;
* ``hang``: sleep ``hang_s`` before answering (past the client's timeout);
* ``malformed``: a 200 with a body that is not JSON;
* ``truncated``: a 200 whose body (or event stream) stops early: the stream without ``[DONE]``, the plain
  body shorter than its Content-Length;
* ``400``: a client error with a message (never retried); ``404``: model not found; ``echo_auth``: a 400 whose message contains the
  Authorization header (to check redaction).
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import json
import random
import threading
from typing import Sequence

from aiohttp import web

RETRYABLE_FAULTS = ("500", "503", "429", "hang", "malformed", "truncated")


def answer_text(prompt: str, seed: int | None = None, words: int = 60) -> str:
    """The deterministic answer to ``prompt`` sampled with ``seed`` (like a teacher's sampling seed)."""
    rng = random.Random(hashlib.sha1(f"{seed}|{prompt}".encode("utf-8")).hexdigest())
    letters = "abcdefghijklmnopqrstuvwxyz"
    out = [("".join(rng.choice(letters) for _ in range(rng.randint(2, 9)))) for _ in range(words)]
    return "Lesson. " + " ".join(out) + "."


class FaultServer:
    """Run with ``with FaultServer(...) as s: s.url``.

    Args:
        seed: seeds the random faults.
        fault_rate: probability of a random fault per request (after the script).
        faults: the random faults to draw from.
        script: faults for the first requests, in order ('ok' for none).
        hang_s: how long a hang lasts.
        retry_after: the Retry-After header value of 429s.
        delay_s: a delay before every answer (to slow runs down).
        answer_words: words per answer.
        answer: ``(prompt, seed) -> text`` that replaces :func:`answer_text` (e.g. answers shaped like a
            template's: code blocks, exercises with tests).
    """

    def __init__(self, *, seed: int = 0, fault_rate: float = 0.0, faults: Sequence[str] = RETRYABLE_FAULTS,
                 script: Sequence[str] = (), hang_s: float = 2.0, retry_after: str = "0.05", delay_s: float = 0.0,
                 answer_words: int = 60, answer=None):
        self.rng = random.Random(seed)
        self.fault_rate = fault_rate
        self.faults = list(faults)
        self.script = collections.deque(script)
        self.hang_s = hang_s
        self.retry_after = retry_after
        self.delay_s = delay_s
        self.answer_words = answer_words
        self.answer = answer
        self.requests = 0
        self.injected: collections.Counter = collections.Counter()
        self.served: collections.Counter = collections.Counter()  # prompt -> successful answers
        self.bodies: list[dict] = []
        self.url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._lock = threading.Lock()

    def _next_fault(self) -> str:
        with self._lock:
            self.requests += 1
            if self.script:
                fault = self.script.popleft()
            elif self.fault_rate and self.rng.random() < self.fault_rate:
                fault = self.rng.choice(self.faults)
            else:
                fault = "ok"
            self.injected[fault] += 1
            return fault

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        chat = request.path.endswith("chat/completions")
        body = await request.json()
        self.bodies.append(body)
        prompt = body["messages"][-1]["content"] if chat else body["prompt"]
        fault = self._next_fault()
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if fault in ("500", "503"):
            return web.json_response({"error": {"message": "injected server error"}}, status=int(fault))
        if fault == "429":
            return web.json_response({"error": {"message": "slow down"}}, status=429,
                                     headers={"Retry-After": self.retry_after})
        if fault == "400":
            return web.json_response({"error": {"message": "prompt rejected by policy: injected"}}, status=400)
        if fault == "404":
            return web.json_response({"error": {"message": f"model {body.get('model')!r} not found"}}, status=404)
        if fault == "echo_auth":
            return web.json_response({"error": {"message": f"bad header {request.headers.get('Authorization')}"}},
                                     status=400)
        if fault == "hang":
            await asyncio.sleep(self.hang_s)
        text = (self.answer(prompt, body.get("seed")) if self.answer else
                answer_text(prompt, body.get("seed"), self.answer_words))
        usage = {"prompt_tokens": len(prompt.split()), "completion_tokens": len(text.split()),
                 "total_tokens": len(prompt.split()) + len(text.split())}
        if body.get("stream"):
            return await self._stream(request, text, usage, chat, truncated=fault == "truncated",
                                      malformed=fault == "malformed", prompt=prompt)
        choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"} if chat
                  else {"index": 0, "text": text, "finish_reason": "stop"})
        payload = json.dumps({"id": "x", "object": "chat.completion" if chat else "text_completion",
                              "model": body.get("model"), "choices": [choice], "usage": usage}).encode()
        if fault == "malformed":
            return web.Response(body=payload[: len(payload) // 2] + b"<html>oops", content_type="application/json")
        if fault == "truncated":
            resp = web.StreamResponse(headers={"Content-Type": "application/json",
                                               "Content-Length": str(len(payload))})
            await resp.prepare(request)
            await resp.write(payload[: len(payload) // 2])
            request.transport.close()  # Cut the connection mid-body.
            return resp
        self.served[prompt] += 1
        return web.Response(body=payload, content_type="application/json")

    async def _stream(self, request: web.Request, text: str, usage: dict, chat: bool, *, truncated: bool,
                      malformed: bool, prompt: str) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        words = text.split(" ")
        pieces = [w + (" " if i < len(words) - 1 else "") for i, w in enumerate(words)]
        for i, piece in enumerate(pieces):
            if truncated and i == len(pieces) // 2:
                return resp  # The stream ends without [DONE].
            if malformed and i == len(pieces) // 2:
                await resp.write(b"data: {not json\n\n")
                continue
            choice = {"index": 0, "delta": {"content": piece}} if chat else {"index": 0, "text": piece}
            await resp.write(b"data: " + json.dumps({"choices": [choice]}).encode() + b"\n\n")
        await resp.write(b"data: " + json.dumps({"choices": [{"index": 0, "finish_reason": "stop", "text": ""}],
                                                  "usage": usage}).encode() + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        self.served[prompt] += 1
        return resp

    def __enter__(self) -> "FaultServer":
        started = threading.Event()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
            app = web.Application()
            app.add_routes([web.post("/v1/completions", self._handle),
                            web.post("/v1/chat/completions", self._handle)])
            self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
            self._loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            self._loop.run_until_complete(site.start())
            self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/v1"
            started.set()
            self._loop.run_forever()
            self._loop.run_until_complete(self._runner.cleanup())
            self._loop.close()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        if not started.wait(10):
            raise RuntimeError("fault server did not start")
        return self

    def __exit__(self, *exc) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)
