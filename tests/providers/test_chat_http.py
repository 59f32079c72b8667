"""The chat completions HTTP call against a real local HTTP server sending exact bytes: error
bodies as servers in the wild write them, server-sent events split anywhere, bounds on what
one answer may send, and failures of the connection itself."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from llm_consumer.providers import chat_http
from llm_consumer.providers.chat_http import (
    ChatEndpoint,
    StreamFailed,
    TransportFailure,
    events,
    failure_of,
    read,
    status_failure,
)
from tests.ports import free_port

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class RawServer:
    """Answers every POST with what `handler` writes; records the requests' headers."""

    def __init__(self) -> None:
        self.handler: Handler | None = None
        self.headers: list[dict[str, str]] = []
        self.port = free_port()

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        self.headers.append(dict(request.headers))
        await request.read()
        assert self.handler is not None
        return await self.handler(request)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"


@pytest.fixture
async def server() -> AsyncIterator[RawServer]:
    raw = RawServer()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", raw._serve)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", raw.port).start()
    yield raw
    await runner.cleanup()


@pytest.fixture
async def endpoint(server: RawServer) -> AsyncIterator[ChatEndpoint]:
    made = ChatEndpoint("sk-raw", server.base_url, timeout_s=1.0)
    yield made
    await made.aclose()


def chunks_of(*parts: bytes, delay_s: float = 0.0) -> Handler:
    """A 200 event stream written in exactly these pieces."""
    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for part in parts:
            await response.write(part)
            await asyncio.sleep(delay_s)
        return response
    return handler


async def streamed(endpoint: ChatEndpoint) -> list[Any]:
    response = await endpoint.post(b"{}", {})
    try:
        return [event async for event in events(response)]
    finally:
        response.release()


async def test_the_call_carries_the_key_json_and_the_trace_headers(
    server: RawServer, endpoint: ChatEndpoint
) -> None:
    server.handler = chunks_of(b"data: {}\n\n")
    response = await endpoint.post(b"{}", {"traceparent": "00-abc-def-01"})
    response.release()

    sent = server.headers[0]
    assert sent["Authorization"] == "Bearer sk-raw"
    assert sent["Content-Type"] == "application/json"
    assert sent["traceparent"] == "00-abc-def-01"
    assert sent["User-Agent"].startswith("llm-consumer/")


async def test_events_split_anywhere_with_crlf_comments_and_multiline_data(
    server: RawServer, endpoint: ChatEndpoint
) -> None:
    server.handler = chunks_of(
        b": keep-alive\r\n\r\ndata: {\"n\"", b": 1}\r\n\r\nevent: chunk\n",
        b"data: {\"n\":\ndata: 2}\n\n", b"data:{\"n\": 3}\n\ndata: [DONE]\n\n",
        b"data: {\"after\": \"done\"}\n\n")

    assert await streamed(endpoint) == [{"n": 1}, {"n": 2}, {"n": 3}]


async def test_a_last_event_without_its_blank_line_still_counts(
    server: RawServer, endpoint: ChatEndpoint
) -> None:
    server.handler = chunks_of(b"data: {\"n\": 1}\n\ndata: {\"n\": 2}\n")

    assert await streamed(endpoint) == [{"n": 1}, {"n": 2}]


async def test_an_error_event_mid_stream_is_a_stream_failure(
    server: RawServer, endpoint: ChatEndpoint
) -> None:
    server.handler = chunks_of(b"data: {\"n\": 1}\n\n",
                               b"data: {\"error\": {\"message\": \"overloaded\"}}\n\n")
    response = await endpoint.post(b"{}", {})
    seen: list[Any] = []
    with pytest.raises(StreamFailed, match="overloaded"):
        async for event in events(response):
            seen.append(event)
    response.release()
    assert seen == [{"n": 1}]


async def test_an_event_that_is_not_json_fails_the_stream(
    server: RawServer, endpoint: ChatEndpoint
) -> None:
    server.handler = chunks_of(b"data: <html>\n\n")

    with pytest.raises(TransportFailure, match="not JSON"):
        await streamed(endpoint)


async def test_an_endless_line_is_cut_at_the_bound(
    server: RawServer, endpoint: ChatEndpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(chat_http, "MAX_ANSWER_BYTES", 1_000)
    server.handler = chunks_of(*[b"data: " + b"x" * 400] * 10)

    with pytest.raises(TransportFailure, match="over 1000 bytes"):
        await streamed(endpoint)


async def test_an_event_of_endless_data_lines_is_cut_at_the_bound(
    server: RawServer, endpoint: ChatEndpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(chat_http, "MAX_ANSWER_BYTES", 1_000)
    server.handler = chunks_of(*[b"data: " + b"x" * 90 + b"\n"] * 20)  # never a blank line

    with pytest.raises(TransportFailure, match="over 1000 bytes"):
        await streamed(endpoint)


async def test_a_body_over_the_bound_is_refused(
    server: RawServer, endpoint: ChatEndpoint
) -> None:
    async def big(request: web.Request) -> web.StreamResponse:
        return web.Response(body=b"x" * 5_000)
    server.handler = big

    response = await endpoint.post(b"{}", {})
    with pytest.raises(TransportFailure, match="over 4000 bytes"):
        await read(response, limit=4_000)
    response.release()


@pytest.mark.parametrize(("body", "message", "code", "param"), [
    (b'{"error": {"message": "bad", "type": "invalid_request_error", "param": "temperature",'
     b' "code": "unsupported_value"}}', "bad", "unsupported_value", "temperature"),
    (b'{"detail": "Not Found"}', "Not Found", None, None),  # vLLM / FastAPI
    (b'{"message": "top level", "code": 7}', "top level", "7", None),
    (b"<html>502 Bad Gateway</html>", "Error code: 502 - <html>502 Bad Gateway</html>",
     None, None),
    (b"", "Error code: 502 - ", None, None),
])
def test_error_bodies_as_servers_write_them(body: bytes, message: str, code: str | None,
                                            param: str | None) -> None:
    failure = status_failure(502, {}, body)

    assert (failure.message, failure.code, failure.param) == (message, code, param)


async def test_an_error_answer_is_read_into_its_fields(
    server: RawServer, endpoint: ChatEndpoint
) -> None:
    async def limited(request: web.Request) -> web.StreamResponse:
        return web.json_response({"error": {"message": "slow down", "type": "requests"}},
                                 status=429, headers={"retry-after": "3"})
    server.handler = limited

    response = await endpoint.post(b"{}", {})
    failure = await failure_of(response)

    assert (failure.status, failure.message, failure.type) == (429, "slow down", "requests")
    assert failure.headers["retry-after"] == "3"


async def test_nothing_listening_is_a_refused_connection() -> None:
    gone = ChatEndpoint("sk", f"http://127.0.0.1:{free_port()}/v1", timeout_s=1.0)
    try:
        with pytest.raises(TransportFailure) as caught:
            await gone.post(b"{}", {})
    finally:
        await gone.aclose()
    assert caught.value.refused and not caught.value.timed_out


async def test_a_stream_that_stalls_times_out(
    server: RawServer, endpoint: ChatEndpoint
) -> None:
    server.handler = chunks_of(b"data: {\"n\": 1}\n\n", b"data: {\"n\": 2}\n\n", delay_s=3.0)

    with pytest.raises(TransportFailure) as caught:
        await streamed(endpoint)
    assert caught.value.timed_out


async def test_an_answer_over_the_bound_fails_the_generation_cleanly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from llm_consumer.errors import TransientFailure
    from llm_consumer.providers.openai_text import OpenAITextProvider
    from tests.fakes.openai_server import FakeOpenAI, reply
    from tests.providers.test_capabilities import job

    monkeypatch.setattr(chat_http, "MAX_ANSWER_BYTES", 2_000)
    async with FakeOpenAI() as fake:
        fake.script(reply("x" * 5_000))
        provider = OpenAITextProvider(fake.api_key, base_url=fake.base_url, model="m",
                                      timeout_s=5.0)
        try:
            with pytest.raises(TransientFailure) as caught:
                await provider.complete(job(schema=None, schema_name=None))
        finally:
            await provider.aclose()
    assert caught.value.code == "provider_unavailable"
    assert caught.value.message == "openai call failed: answer over 2000 bytes"


async def test_a_proxy_named_in_the_environment_carries_the_calls(
    server: RawServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The raw server stands in for the proxy: an HTTP proxy gets the absolute URL.
    server.handler = chunks_of(b"data: {\"via\": \"proxy\"}\n\n")
    for name in ("no_proxy", "NO_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy",
                 "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{server.port}")
    unreachable = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens: only the proxy can answer
    proxied = ChatEndpoint("sk-raw", unreachable, timeout_s=1.0)
    try:
        assert await streamed(proxied) == [{"via": "proxy"}]
    finally:
        await proxied.aclose()
    assert proxied.proxy == f"http://127.0.0.1:{server.port}"


def test_no_proxy_exempts_a_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", "llm.internal")

    assert chat_http.proxy_for("https://api.openai.com/v1/chat/completions") == \
        "http://proxy.internal:3128"
    assert chat_http.proxy_for("https://llm.internal/v1/chat/completions") is None
