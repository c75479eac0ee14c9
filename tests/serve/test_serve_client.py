"""The teacher client against a fault-injecting server: retries, Retry-After, time-outs, streams, errors, keys."""

import asyncio
import socket
import time

import pytest

from fault_server import FaultServer, answer_text
from textbooks.serve import client as client_lib
from textbooks.serve.answers import parse_retry_after


def _run(coro):
    return asyncio.run(coro)


def _client(url, **kw):
    kw.setdefault("backoff_base", 0.01)
    kw.setdefault("backoff_max", 0.05)
    kw.setdefault("timeout", 1.0)
    kw.setdefault("seed", 0)
    kw.setdefault("api_key_env", None)
    return client_lib.OpenAIClient(url, "teacher", **kw)


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("fault", ["500", "503", "429", "malformed", "truncated"])
def test_retryable_fault_is_retried(fault, stream):
    with FaultServer(script=[fault, fault]) as server:
        async def go():
            async with _client(server.url, stream=stream) as c:
                return await c.complete("Explain loops.", max_tokens=8), c.stats
        result, stats = _run(go())
    assert result.text == answer_text("Explain loops.")
    assert result.attempts == 3
    assert stats.retries == 2 and stats.succeeded == 1
    assert server.requests == 3
    assert result.usage is not None and result.usage.completion_tokens == len(result.text.split())


def test_retry_after_is_honored():
    with FaultServer(script=["429"], retry_after="0.6") as server:
        async def go():
            async with _client(server.url) as c:
                start = time.monotonic()
                await c.complete("p", max_tokens=4)
                return time.monotonic() - start, c.stats
        elapsed, stats = _run(go())
    assert elapsed >= 0.6  # backoff_max is 0.05, so only Retry-After explains the wait
    assert stats.retry_reasons == {"rate_limited": 1}


def test_retry_after_http_date():
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after("soon") is None


def test_hang_past_timeout_is_retried():
    with FaultServer(script=["hang"], hang_s=3.0) as server:
        async def go():
            async with _client(server.url, timeout=0.4) as c:
                start = time.monotonic()
                r = await c.complete("p", max_tokens=4)
                return r, time.monotonic() - start, c.stats
        result, elapsed, stats = _run(go())
    assert result.attempts == 2
    assert 0.4 <= elapsed < 2.5
    assert stats.retry_reasons == {"timeout": 1}


def test_chat_and_streaming_chat():
    with FaultServer() as server:
        async def go():
            async with _client(server.url) as c, _client(server.url, stream=True) as s:
                msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "Why is the sky blue?"}]
                return await c.chat(msgs, max_tokens=8), await s.chat(msgs, max_tokens=8)
        plain, streamed = _run(go())
    assert plain.text == streamed.text == answer_text("Why is the sky blue?")
    assert streamed.finish_reason == "stop"
    assert server.bodies[-1]["stream"] is True and server.bodies[-1]["stream_options"] == {"include_usage": True}


def test_4xx_is_not_retried_and_carries_message():
    with FaultServer(script=["400"]) as server:
        async def go():
            async with _client(server.url) as c:
                await c.complete("p", max_tokens=4)
        with pytest.raises(client_lib.APIStatusError) as info:
            _run(go())
    assert info.value.status == 400
    assert "prompt rejected by policy" in str(info.value)
    assert server.requests == 1


def test_retries_exhausted():
    with FaultServer(script=["500"] * 10) as server:
        async def go():
            async with _client(server.url, max_retries=2) as c:
                await c.complete("p")
        with pytest.raises(client_lib.RetriesExhaustedError, match="after 3 attempts; last error: HTTP 500"):
            _run(go())
    assert server.requests == 3


def test_unreachable_endpoint():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # Nothing listens there now.

    async def go():
        async with _client(f"http://127.0.0.1:{port}", max_retries=2) as c:
            await c.complete("p")
    with pytest.raises(client_lib.EndpointUnreachableError, match=f"cannot reach http://127.0.0.1:{port}/v1/completions "
                                                                   "after 3 attempts"):
        _run(go())


def test_api_key_is_sent_but_never_shown(monkeypatch):
    monkeypatch.setenv("SYNTH_TEST_KEY", "sk-very-secret-123")
    with FaultServer(script=["echo_auth"]) as server:
        c = _client(server.url, api_key_env="SYNTH_TEST_KEY")
        assert "sk-very-secret" not in repr(c) and "SYNTH_TEST_KEY" in repr(c)

        async def go():
            async with c:
                await c.complete("p")
        with pytest.raises(client_lib.APIStatusError) as info:
            _run(go())
    assert "Bearer ***" in str(info.value)  # The server did receive the key...
    assert "sk-very-secret" not in str(info.value)  # ...and the error does not show it.


def test_missing_required_key(monkeypatch):
    monkeypatch.delenv("SYNTH_ABSENT_KEY", raising=False)
    with pytest.raises(client_lib.ClientError, match="SYNTH_ABSENT_KEY"):
        client_lib.OpenAIClient("http://127.0.0.1:1", "m", api_key_env="SYNTH_ABSENT_KEY", require_api_key=True)


def test_concurrency_limit_and_cost():
    with FaultServer(delay_s=0.2) as server:
        async def go():
            c = _client(server.url, concurrency=3, pricing=client_lib.Pricing(1.0, 2.0))
            async with c:
                start = time.monotonic()
                results = await c.complete_many([f"prompt {i}" for i in range(6)], max_tokens=4)
                return results, time.monotonic() - start, c.stats
        results, elapsed, stats = _run(go())
    assert [r.text for r in results] == [answer_text(f"prompt {i}") for i in range(6)]
    assert elapsed >= 0.4  # 6 requests, 3 at a time, 0.2 s each
    expected = sum(2 * 1.0 + 61 * 2.0 for _ in range(6)) / 1000  # "prompt i" = 2 words, answers 61 words
    assert stats.usage.prompt_tokens == 12 and stats.usage.completion_tokens == 6 * 61
    assert stats.cost == pytest.approx(expected)


def test_bad_arguments():
    with pytest.raises(ValueError, match="must be a URL"):
        client_lib.OpenAIClient("localhost:8000", "m")
    c = client_lib.OpenAIClient("http://127.0.0.1:9", "m", api_key_env=None)
    assert c.base_url == "http://127.0.0.1:9/v1"
    with pytest.raises(ValueError, match="may not set stream"):
        _run(c.complete("p", stream=True))
