"""The tests' fake OpenAI server as a process of its own, with knobs for the benchmark.

    .venv/bin/python bench/fake_provider.py --port-file /tmp/port

Answers every chat completion with the default responder (an instance of the requested JSON
schema, memoised per schema), after `delay_s` (0: at once); a streamed call gets a 500-token
free text (2,000 characters) in 500 deltas, written back to back. `POST /bench/config
{"delay_s": 1.0, "record": true}` changes both; with `record` on it notes, per request marker
(`Hero <uuid>` in the prompt), when the call arrived and when its answer left
(`time.monotonic`, the clock `time.perf_counter` also reads on Linux): `GET /bench/timings`
returns and forgets them. Request bodies are not kept, so memory stays flat under load.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' fake provider

from llm_consumer.collector import collect_by_time, tune_collector
from tests.fakes.openai_server import FakeOpenAI, Reply

STREAM_DELTAS = 500  # a 500-token answer, a token (4 characters) per delta
STREAM_TEXT = "tale" * STREAM_DELTAS
MARKER = re.compile(rb"Hero ([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})")


class BenchProvider(FakeOpenAI):
    """FakeOpenAI with a settable answer delay and per-request timings."""

    def __init__(self) -> None:
        super().__init__()
        self.delay_s = 0.0
        self.record = False
        self.timings: dict[str, tuple[float, float]] = {}
        self.calls = 0
        self._contents: dict[str, str] = {}
        self.responder = self._answer

    def _answer(self, body: dict[str, Any]) -> Reply:
        if body.get("stream"):
            return Reply(STREAM_TEXT, chunk_count=STREAM_DELTAS, delay_s=self.delay_s)
        return Reply(delay_s=self.delay_s)

    async def start(self, port: int = 0) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat_completions)
        app.router.add_post("/bench/config", self._config)
        app.router.add_get("/bench/timings", self._timings)
        self._runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=1.0,
                                     access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", port, backlog=4096).start()
        self._port = int(self._runner.addresses[0][1])

    async def _record(self, request: web.Request) -> dict[str, Any]:
        raw = await request.read()
        body = orjson.loads(raw) if raw else {}
        return body if isinstance(body, dict) else {}

    def _default_content(self, body: Any) -> str:
        fmt = body.get("response_format") or {}
        key = orjson.dumps(fmt.get("json_schema", {}).get("name")).decode() + fmt.get("type", "")
        if key not in self._contents:
            self._contents[key] = super()._default_content(body)
        return self._contents[key]

    async def _chat_completions(self, request: web.Request) -> web.StreamResponse:
        arrived = time.monotonic()
        self.calls += 1
        response = await super()._chat_completions(request)
        if self.record:
            found = MARKER.search(await request.read())
            if found:
                self.timings[found.group(1).decode()] = (arrived, time.monotonic())
        return response

    async def _config(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        self.delay_s = float(body.get("delay_s", self.delay_s))
        self.record = bool(body.get("record", self.record))
        return web.json_response({"delay_s": self.delay_s, "record": self.record,
                                  "calls": self.calls})

    async def _timings(self, request: web.Request) -> web.Response:
        taken, self.timings = self.timings, {}
        return web.Response(body=orjson.dumps(taken), content_type="application/json")


async def serve(port_file: Path) -> None:
    # The service's collector schedule: with CPython's defaults this process, holding 835
    # waiting calls, ran full collections of 144-205 ms, which read as the service's latency.
    tune_collector()
    collector = asyncio.create_task(collect_by_time())
    server = BenchProvider()
    await server.start()
    port_file.write_text(str(server._port))
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    collector.cancel()
    await server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port-file", type=Path, required=True)
    asyncio.run(serve(parser.parse_args().port_file))
