"""The link to the broker is down (lost, not back yet) while requests are being handled.

A notice (job status, progress) published in that window is dropped and counted: a request
never fails because its progress could not be told. A result is never dropped: publishing it
on a dead channel raises, and the consumer leaves the delivery to the broker, which
redelivers it once the link is back. The fault suite (`tests/faults/test_broker_faults.py`)
shows the same end to end behind a blackholed TCP proxy; this is the deterministic version.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
from aiormq.exceptions import ChannelInvalidStateError

from llm_consumer import metrics
from llm_consumer.app import caller_rules, open_broker
from llm_consumer.bus.publisher import Publisher
from llm_consumer.events import catalog
from llm_consumer.events.envelope import new_event
from llm_consumer.events.results import JobStatus, TokenUsage, ValidationCompleted
from llm_consumer.settings import Settings


def dropped(event_type: str) -> float:
    value = metrics.REGISTRY.get_sample_value("llm_notices_dropped_total",
                                              {"event_type": event_type})
    return value or 0.0


async def test_a_notice_on_a_dead_channel_is_dropped_and_a_result_is_not(
    settings_factory: Callable[..., Settings],
) -> None:
    settings = settings_factory()
    async with open_broker(settings) as broker:
        publisher = Publisher(broker.channel, broker.hub, broker.topology,
                              broker.dead_letter_exchange, signer=caller_rules(settings).signer,
                              notices=(broker.notice_channel, broker.notice_hub))
        request_id = str(uuid.uuid4())
        status = new_event(catalog.JOB_STATUS,
                           JobStatus(request_id=request_id, state="running", attempt=0),
                           source="test")
        before = dropped(catalog.JOB_STATUS)

        await broker.notice_channel.close()  # as between a lost link and the reconnect
        await publisher.publish_event(status, reply_to="amq.gen-gone")

        assert dropped(catalog.JOB_STATUS) == before + 1

        result = new_event(catalog.VALIDATION_COMPLETED, ValidationCompleted(
            request_id=request_id, valid=True, score=1.0, issues=[], model_used="m",
            token_usage=TokenUsage(prompt_tokens=1, completion_tokens=1, total_tokens=2),
            duration_ms=1), source="test")
        await broker.channel.close()
        with pytest.raises(ChannelInvalidStateError):
            await publisher.publish_event(result)
