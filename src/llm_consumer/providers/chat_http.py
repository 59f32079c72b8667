"""POST /chat/completions to an OpenAI-compatible server over one aiohttp session.

The SDK's client built every call through its options, retry and auth layers and httpx's
request model, then handed it to aiohttp anyway: 905 µs of CPU per call against 203 µs for
this module's call (bench/provider_call_cost.py, medians of 8 interleaved rounds). The service
encodes the body and reads the answer itself (chat_wire), so it needs the HTTP call only: this
module makes it, reads a body or a stream of server-sent events, bounds both (an answer is
16 MiB at most), and raises
`TransportFailure` (the call did not get through) or `StatusFailure` (the server answered with
an error) for openai_errors to translate. The Batch and Images APIs keep the SDK's client.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import urlsplit
from urllib.request import getproxies, proxy_bypass

import aiohttp
import orjson

from llm_consumer import __version__

MAX_ANSWER_BYTES = 16 * 1024 * 1024  # a whole answer, or one streamed event
MAX_ERROR_BYTES = 64 * 1024  # an error body: enough for any message worth reading
_DONE = b"[DONE]"


class TransportFailure(Exception):
    """The call did not get through: refused, timed out, cut, or an answer over the bound."""

    def __init__(self, what: str, *, timed_out: bool = False, refused: bool = False) -> None:
        super().__init__(what)
        self.timed_out = timed_out
        self.refused = refused


class StatusFailure(Exception):
    """The server answered with an error status; its fields as OpenAI's error body has them
    (`{"error": {"message", "type", "param", "code"}}`, or the same keys at the top level)."""

    def __init__(self, status: int, headers: Mapping[str, str], message: str, *,
                 code: str | None = None, param: str | None = None,
                 type: str | None = None) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.headers = headers
        self.message = message
        self.code = code
        self.param = param
        self.type = type


class StreamFailed(Exception):
    """A stream sent an error event instead of its next chunk."""


def _field(body: Mapping[str, Any], name: str) -> str | None:
    value = body.get(name)
    return str(value) if value not in (None, "") else None


def status_failure(status: int, headers: Mapping[str, str], raw: bytes) -> StatusFailure:
    try:
        decoded: Any = orjson.loads(raw)
    except orjson.JSONDecodeError:
        decoded = None
    if isinstance(decoded, Mapping) and isinstance(decoded.get("error"), Mapping):
        decoded = decoded["error"]
    if not isinstance(decoded, Mapping):
        text = raw.decode("utf-8", "replace").strip()
        return StatusFailure(status, headers, f"Error code: {status} - {text}")
    message = (_field(decoded, "message") or _field(decoded, "detail")
               or f"Error code: {status}")
    return StatusFailure(status, headers, message, code=_field(decoded, "code"),
                         param=_field(decoded, "param"), type=_field(decoded, "type"))


def _transport_failure(err: BaseException) -> TransportFailure:
    refused = _caused_by(err, ConnectionRefusedError)
    if isinstance(err, TimeoutError) and not refused:
        return TransportFailure("timed out", timed_out=True)
    if refused:
        return TransportFailure("connection refused", refused=True)
    return TransportFailure(f"connection error ({type(err).__name__})")


def _caused_by(err: BaseException, kind: type[BaseException]) -> bool:
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, kind) or isinstance(getattr(seen, "os_error", None), kind):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def proxy_for(url: str) -> str | None:
    """The proxy the environment names for `url` (`HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`,
    less `NO_PROXY`), as the SDK's client honoured them. Read once: aiohttp's `trust_env` reads
    the environment again for every request, about 0.3 ms of CPU a call."""
    parts = urlsplit(url)
    proxies = getproxies()
    if not proxies or proxy_bypass(parts.hostname or ""):
        return None
    return proxies.get(parts.scheme) or proxies.get("all")


class ChatEndpoint:
    """One server's chat completions endpoint. `timeout_s` bounds connecting and each wait for
    the next bytes (not a whole stream), as the SDK's timeout did."""

    def __init__(self, api_key: str, base_url: str, *, timeout_s: float) -> None:
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.proxy = proxy_for(self.url)
        self._headers = {"Authorization": f"Bearer {api_key}",
                         "Content-Type": "application/json", "Accept": "application/json",
                         "User-Agent": f"llm-consumer/{__version__}"}
        self._timeout = aiohttp.ClientTimeout(total=None, connect=timeout_s,
                                              sock_connect=timeout_s, sock_read=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    def _opened(self) -> aiohttp.ClientSession:
        """The session, made on first use (inside the running event loop). No connection
        limit of its own: CONCURRENCY bounds the calls in flight."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0), timeout=self._timeout,
                proxy=self.proxy)
        return self._session

    async def post(self, body: bytes, headers: Mapping[str, str]) -> aiohttp.ClientResponse:
        """The server's response with its status and headers read (the body is not): the
        caller reads it (`read` or `events`) and releases it. Raises TransportFailure."""
        try:
            return await self._opened().post(
                self.url, data=body, headers={**self._headers, **headers} if headers
                else self._headers, allow_redirects=False)
        except (TimeoutError, aiohttp.ClientError, OSError) as err:
            raise _transport_failure(err) from err

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


async def read(response: aiohttp.ClientResponse, limit: int | None = None) -> bytes:
    """The whole body, at most `limit` bytes (MAX_ANSWER_BYTES). Raises TransportFailure."""
    limit = MAX_ANSWER_BYTES if limit is None else limit
    parts: list[bytes] = []
    size = 0
    try:
        async for chunk in response.content.iter_any():
            size += len(chunk)
            if size > limit:
                raise TransportFailure(f"answer over {limit} bytes")
            parts.append(chunk)
    except (TimeoutError, aiohttp.ClientError, OSError) as err:
        raise _transport_failure(err) from err
    return b"".join(parts)


async def failure_of(response: aiohttp.ClientResponse) -> StatusFailure:
    """An error response read into a StatusFailure (a body cut short reads as what came)."""
    try:
        raw = await read(response, MAX_ERROR_BYTES)
    except TransportFailure:
        raw = b""
    return status_failure(response.status, response.headers, raw)


async def events(response: aiohttp.ClientResponse) -> AsyncIterator[Any]:
    """The decoded JSON of each server-sent event's data until `[DONE]` or the end. Raises
    TransportFailure (cut, timed out, an event over the bound) or StreamFailed (an error
    event, as OpenAI sends one mid-stream)."""
    buffer = bytearray()  # bytes received, not yet split into lines
    data: list[bytes] = []  # the current event's data lines
    size = 0  # bytes of the current event (its data lines and the unsplit rest)
    try:
        async for chunk in response.content.iter_any():
            buffer += chunk
            start = 0
            while (end := buffer.find(b"\n", start)) != -1:
                line = bytes(buffer[start:end]).rstrip(b"\r")
                start = end + 1
                if line.startswith(b"data:"):
                    data.append(line[6:] if line[5:6] == b" " else line[5:])
                    size += len(line)
                    continue
                if line or not data:  # a comment, an event name or id, or nothing to send
                    continue
                payload, data, size = b"\n".join(data), [], 0
                if payload == _DONE:
                    return
                yield _event(payload)
            del buffer[:start]
            if size + len(buffer) > MAX_ANSWER_BYTES:
                raise TransportFailure(f"an event over {MAX_ANSWER_BYTES} bytes")
    except (TimeoutError, aiohttp.ClientError, OSError) as err:
        raise _transport_failure(err) from err
    if data and (payload := b"\n".join(data)) != _DONE:  # a last event with no blank line
        yield _event(payload)


def _event(payload: bytes) -> Any:
    try:
        decoded = orjson.loads(payload)
    except orjson.JSONDecodeError as err:
        raise TransportFailure("a streamed event that is not JSON") from err
    if isinstance(decoded, Mapping) and decoded.get("error"):
        error = decoded["error"]
        message = error.get("message") if isinstance(error, Mapping) else error
        raise StreamFailed(str(message or "an error event"))
    return decoded
