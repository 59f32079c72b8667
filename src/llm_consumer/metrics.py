"""Prometheus metrics, served on an internal port (METRICS_PORT) when one is set.

Labels stay low-cardinality: kind, outcome, model, queue and decision; never ids or users.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

if TYPE_CHECKING:
    from llm_consumer.store.usage import Price, Use

REGISTRY = CollectorRegistry(auto_describe=True)

REQUESTS = Counter("llm_requests", "Requests settled, by kind and outcome",
                   ["kind", "outcome"], registry=REGISTRY)
LATENCY = Histogram("llm_request_duration_seconds", "Receive-to-settle time per request",
                    ["kind"], registry=REGISTRY,
                    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60,
                             120, 300))
# The parts of a request's time, observed once per answered request (slo.py): they add up to
# the time from its publish to its result.
PART_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600)
QUEUE_WAIT = Histogram(
    "llm_queue_wait_seconds", "Publish to receipt of the delivery that answered the request "
    "(earlier attempts and delay-queue waits included), by kind", ["kind"], registry=REGISTRY,
    buckets=PART_BUCKETS)
PROVIDER_TIME = Histogram(
    "llm_provider_seconds", "Provider calls of the answering delivery, summed per request, by "
    "kind", ["kind"], registry=REGISTRY, buckets=PART_BUCKETS)
SERVICE_OVERHEAD = Histogram(
    "llm_service_overhead_seconds", "Receive-to-settle time of the answering delivery outside "
    "provider calls, by kind", ["kind"], registry=REGISTRY, buckets=PART_BUCKETS)
SLO_SHARE = Gauge("llm_slo_within_target_ratio",
                  "Share of requests answered within target over SLO_WINDOW_S, by target class "
                  "(updated with each heartbeat)", ["target"], registry=REGISTRY)
IN_FLIGHT = Gauge("llm_in_flight", "Deliveries being processed", registry=REGISTRY)
QUEUE_DEPTH = Gauge("llm_queue_depth", "Messages waiting, by queue", ["queue"],
                    registry=REGISTRY)
DEAD_LETTER_QUEUE_FULL = Gauge(
    "llm_dead_letter_queue_full",
    "1 while the dead-letter queue refuses dead letters and they are parked in the longest "
    "delay queue (an alarm); 0 once it takes one again", registry=REGISTRY)
DEAD_LETTERS_PARKED = Counter("llm_dead_letters_parked",
                              "Dead letters parked because the dead-letter queue refused them",
                              registry=REGISTRY)
EVENTS_UNROUTED = Counter(
    "llm_events_unrouted",
    "Results the hub routed to no queue (kept in the unrouted queue for replay), by type",
    ["event_type"], registry=REGISTRY)
NOTICES_DROPPED = Counter(
    "llm_notices_dropped",
    "Notices (progress, job status, ...) not sent because the broker channel was down, by type",
    ["event_type"], registry=REGISTRY)
BREAKER_STATE = Gauge(
    "llm_breaker_state",
    "Circuit breaker of each text model: 0 closed (available), 1 half-open (probing), "
    "2 open (skipped)", ["provider", "model"], registry=REGISTRY)
BREAKER_TRANSITIONS = Counter("llm_breaker_transitions",
                              "Circuit breaker state changes, by the state entered",
                              ["provider", "model", "state"], registry=REGISTRY)
BREAKER_SKIPPED = Counter("llm_breaker_skipped_calls",
                          "Calls not sent because the model's circuit was open",
                          ["provider", "model"], registry=REGISTRY)
CACHE = Counter("llm_cache_lookups", "Response cache lookups, by result", ["result"],
                registry=REGISTRY)
RATE_LIMIT = Counter("llm_rate_limit_decisions", "Rate-limit decisions", ["decision"],
                     registry=REGISTRY)
TOKENS = Counter("llm_tokens", "Tokens used, by model and direction", ["model", "direction"],
                 registry=REGISTRY)
COST = Counter("llm_cost_usd", "Estimated provider cost in USD, by model", ["model"],
               registry=REGISTRY)


def serve(port: int, host: str = "127.0.0.1") -> None:
    """Expose /metrics on `host:port` from a daemon thread."""
    start_http_server(port, addr=host, registry=REGISTRY)


def count_use(use: Use, price: Price | None) -> None:
    """Tokens, cost and cache result of one answered request."""
    CACHE.labels("hit" if use.cache_hit else "miss").inc()
    if use.cache_hit:
        return
    TOKENS.labels(use.model, "prompt").inc(use.prompt_tokens)
    TOKENS.labels(use.model, "completion").inc(use.completion_tokens)
    if price is not None:
        COST.labels(use.model).inc(
            (use.prompt_tokens * price.prompt + use.completion_tokens * price.completion) / 1000)
