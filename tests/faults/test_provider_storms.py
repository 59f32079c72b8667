"""A storm of provider errors: 429s with retry-after, 500s and 503s. Each request's own share
of the storm is fixed (the fake provider chooses by the request id in the prompt), so what
must happen is exact: requests that clear within MAX_ATTEMPTS back off through the delay
queues and succeed; the ones the storm outlasts end in the dead-letter queue with their reason;
`llm-consumer dlq replay` (the real CLI) brings those back once the storm is over and they
succeed. The ledger, over every request, then shows nothing lost."""

from __future__ import annotations

import itertools
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import pytest

from llm_consumer.bus.topology import build_topology
from llm_consumer.events import catalog
from llm_consumer.settings import Settings
from tests.cli.test_dlq import cli
from tests.fakes.openai_server import Scripted, rate_limited, server_error
from tests.faults.ledger import (
    FAULT_ENV,
    Ledger,
    assert_queues_empty,
    collect,
    marker_of,
    new_ids,
    provider_calls,
    publish_requests,
    queue_state,
    settle,
    start_process,
)

pytestmark = pytest.mark.slow

MAX_ATTEMPTS = 3
RETRY_AFTER = "1"


def storm_for(ids: list[str], doomed: list[str]) -> dict[str, list[Scripted]]:
    """The errors each request meets, in order, before it gets an answer.

    - a 503: the first attempt fails, the retry (1 s later) succeeds;
    - a 500 then a 503: two retries (1 s, then 2 s later), the third attempt succeeds;
    - three 429s with `retry-after: 1`: the provider waits 1 s in place twice, the third 429
      goes to the consumer, which retries through a delay queue no sooner than retry-after;
    - the doomed: 500/503 on every attempt while the storm lasts -> DLQ after MAX_ATTEMPTS.
    """
    patterns: list[list[Scripted]] = [
        [server_error(503)],
        [server_error(500), server_error(503)],
        [rate_limited(retry_after=RETRY_AFTER) for _ in range(3)],
    ]
    storm = {r: list(patterns[i % len(patterns)]) for i, r in enumerate(ids) if r not in doomed}
    for request_id in doomed:
        storm[request_id] = [server_error(500 if n % 2 else 503) for n in range(MAX_ATTEMPTS)]
    return storm


async def test_429_5xx_storm_backs_off_dead_letters_and_replays(
    settings_factory: Callable[..., Settings], fake_openai: Any,
) -> None:
    settings = settings_factory()
    topology = build_topology(settings.queue_prefix, settings.hub_exchange)
    ids = new_ids(16)
    doomed = ids[:4]
    storm = storm_for(ids, doomed)
    wanted = set(ids)
    calls_at: dict[str, list[float]] = defaultdict(list)

    def responder(body: dict[str, Any]) -> Scripted | None:
        request_id = marker_of(body, wanted)
        if request_id is None:
            return None
        calls_at[request_id].append(time.monotonic())
        errors = storm[request_id]
        return errors.pop(0) if errors else None

    fake_openai.responder = responder
    # The storm is per request, not a provider outage: the model's circuit breaker (which
    # would open on 5 failures in a row and defer everyone for its cool-down) stays closed.
    service = await start_process(settings, fake_openai, **FAULT_ENV, CONCURRENCY="8",
                                  MAX_ATTEMPTS=str(MAX_ATTEMPTS), BREAKER_FAILURE_THRESHOLD="1000",
                                  INSTANCE_ID=f"faults-storm-{ids[0][:6]}")
    bindings = (catalog.CONTENT_GENERATED, catalog.GENERATION_FAILED, catalog.JOB_STATUS)
    try:
        async with collect(settings, bindings) as results:
            storm_at = time.monotonic()
            await publish_requests(settings, ids)
            survivors = [r for r in ids if r not in doomed]
            await results.wait_generated(survivors, timeout_s=60)
            await results.wait_until(
                lambda: all(results.of_type(catalog.GENERATION_FAILED, r) for r in doomed),
                timeout_s=30)
            await settle(settings, results, timeout_s=20)
            dead = (await queue_state(settings))[topology.dead.name][0]
            listing = await cli(settings, "dlq", "list")
            deferred = {r: [s.event["data"]["attempt"]
                            for s in results.of_type(catalog.JOB_STATUS, r)
                            if s.event["data"]["state"] == "deferred"] for r in ids}
            gaps = {r: [round(b - a, 2) for a, b in itertools.pairwise(t)]
                    for r, t in calls_at.items()}
            failed = {r: results.of_type(catalog.GENERATION_FAILED, r)[0].event["data"]
                      for r in doomed}

            # The storm is over for everyone; the dead letters come back through the CLI.
            replayed_at = time.monotonic()
            replay = await cli(settings, "dlq", "replay")
            await results.wait_generated(doomed, timeout_s=30)
            await settle(settings, results, timeout_s=20)
            ledger = Ledger("provider 429/5xx storm, DLQ, replay", ids, results,
                            provider_calls(fake_openai, ids), storm_at,
                            expected_failures=frozenset(doomed),
                            notes={"max_attempts": MAX_ATTEMPTS,
                                   "dead_lettered": dead,
                                   "deferred_attempts_per_request": {
                                       r[-8:]: v for r, v in deferred.items()},
                                   "deferred_events": sum(map(len, deferred.values())),
                                   "gaps_between_calls_s": {r[-8:]: g for r, g in gaps.items()},
                                   "replay_to_last_result_s": round(max(
                                       results.first_generated[r] for r in doomed)
                                       - replayed_at, 2)})
            ledger.check(max_calls_per_request=MAX_ATTEMPTS + 1, max_duplicate_results=0)
            await assert_queues_empty(settings)
    finally:
        exit_code = await service.stop()
    assert exit_code == 0, service.tail()

    # Backoff: every request the storm hit went through the delay queues, attempt by attempt.
    # (A 429 also empties the model's shared budget for its retry-after: a request admitted
    # then may wait, in place or in a delay queue under the same attempt number; so the
    # attempts are compared as a set.)
    for request_id in ids:
        expected = {0: [1], 1: [1, 2], 2: [1]}[ids.index(request_id) % 3]
        if request_id in doomed:
            expected = list(range(1, MAX_ATTEMPTS))
        retried = sorted({a for a in deferred[request_id] if a >= 1})
        assert retried == expected, (request_id, deferred[request_id])
    # ... no sooner than the delay queue's step (1 s, 2 s) or the retry-after (1 s) said.
    for request_id, request_gaps in gaps.items():
        assert all(gap >= 0.9 for gap in request_gaps), (request_id, request_gaps)
    # The doomed: out of attempts, dead-lettered with their reason, then replayed.
    assert dead == len(doomed)
    for request_id in doomed:
        assert failed[request_id]["error"]["code"] == "provider_unavailable"
        assert failed[request_id]["attempts"] == MAX_ATTEMPTS
        assert request_id in listing.stdout, listing.stdout
    assert "provider_unavailable" in listing.stdout
    assert f"replayed {len(doomed)} of {len(doomed)}" in replay.stdout, (
        replay.stdout + replay.stderr)
    assert all(ledger.calls[r] == MAX_ATTEMPTS + 1 for r in doomed)
