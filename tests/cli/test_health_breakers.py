"""`llm-consumer health` shows each text model's circuit breaker: a model whose provider keeps
failing is `down` (and health exits 1), the others `ok`."""

from __future__ import annotations

import json
from typing import Any

from llm_consumer.events import catalog
from tests.cli.test_failures import env_for
from tests.cli.test_inject import run_cli
from tests.conftest import Service
from tests.fakes.openai_server import server_error


async def test_health_shows_an_open_circuit_as_a_model_down(openai_service: Any,
                                                            fake_openai: Any) -> None:
    fake_openai.responder = lambda body: (server_error(502) if body["model"] == "gpt-5-nano"
                                          else None)
    service: Service = await openai_service(breaker_failure_threshold=1, breaker_cooldown_s=600,
                                            openai_fallback_models=["gpt-4.1-mini"],
                                            heartbeat_every_s=0.5)
    result = await service.request("chat.completion", {
        "messages": [{"role": "user", "content": "Is the bridge safe?"}]})
    assert result.final["type"] == catalog.CONTENT_GENERATED, result.final
    assert result.final["data"]["model_used"] == "gpt-4.1-mini"
    assert result.final["data"]["fallback_used"] is True

    code, stdout, stderr = await run_cli(env_for(service.settings), "health", "--wait", "2",
                                         "--json")
    beats = [line for line in map(json.loads, stdout.splitlines()) if "instance" in line]
    assert beats, stderr
    components = beats[-1]["components"]
    assert components["model:openai/gpt-5-nano"] == "down"
    assert components["model:openai/gpt-4.1-mini"] == "ok"
    assert beats[-1]["status"] == "degraded" and code == 1
