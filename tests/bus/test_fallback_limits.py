"""A fallback model's call is admitted against that model's own limits, not the first model's:
with the primary failing, a limit on the fallback holds (the call past it waits in a delay
queue) instead of going out uncounted."""

from __future__ import annotations

from typing import Any

from llm_consumer.events import catalog
from tests.bus.test_limits_e2e import sheet, waiting
from tests.conftest import Service
from tests.fakes.openai_server import reply, server_error

FALLBACK = "gpt-4.1-mini"


async def test_a_limit_on_the_fallback_model_holds_while_the_primary_fails(
        openai_service: Any, fake_openai: Any) -> None:
    service: Service = await openai_service(
        openai_fallback_models=(FALLBACK,), rate_limit_models={FALLBACK: "1/60s"},
        rate_limit_inline_wait_s=0, rate_limit_user_share=1)
    fake_openai.script(server_error(500), reply(None), server_error(500))
    first = await service.request("campaign.plot", sheet(1))
    assert first.final is not None and first.final["type"] == catalog.CONTENT_GENERATED
    assert first.final["data"]["model_used"] == FALLBACK
    assert first.final["data"]["fallback_used"] is True
    exceeded, deferred = await waiting(service, "campaign.plot", sheet(2))
    assert (exceeded["scope"], exceeded["key"]) == ("model", FALLBACK)
    assert exceeded["limit"] == 1 and deferred["state"] == "deferred"
    assert [r.body["model"] for r in fake_openai.chat_requests] == [
        "gpt-5-nano", FALLBACK, "gpt-5-nano"], "the second request's fallback call waits"

