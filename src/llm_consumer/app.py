"""Lifespan of the service: one owner for every resource, opened in order and closed in reverse.

`run_service` connects to the broker and Redis, declares the topology, builds the providers and
the consumer, serves until SIGTERM/SIGINT (or `stop` is set), then drains and exits cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

import aio_pika
import structlog
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractRobustConnection
from pydantic import BaseModel

from llm_consumer import metrics, tracing
from llm_consumer.admission.metered import MeteredText
from llm_consumer.admission.waits import Ticket
from llm_consumer.auth import TokenVerifier
from llm_consumer.batch.service import BatchPolicy, BatchService
from llm_consumer.batch.store import BatchStore
from llm_consumer.bus.consumer import CallerRules, Consumer, ConsumerConfig
from llm_consumer.bus.declare import check_topology
from llm_consumer.bus.depth import queue_depth
from llm_consumer.bus.nodes import connect_nodes
from llm_consumer.bus.publisher import Publisher
from llm_consumer.bus.queue_index import INDEX_PREFETCH, CopySigner, QueueIndex
from llm_consumer.bus.retry_state import RetrySigner
from llm_consumer.bus.topology import Topology, build_topology
from llm_consumer.collector import collect_by_time, tune_collector
from llm_consumer.events.envelope import new_event
from llm_consumer.handlers.base import Deps, ProgressPolicy
from llm_consumer.heartbeat import Probes, Status, model_components, run_heartbeats
from llm_consumer.identity import derive_key
from llm_consumer.images.fetch import FetchPolicy, SourceFetcher
from llm_consumer.images.service import ImageService
from llm_consumer.images.storage import S3Options, open_store
from llm_consumer.policy import ModelPolicy, ReplyPolicy
from llm_consumer.prompts.fitting import ContextWindows
from llm_consumer.prompts.tokens import TokenCounter
from llm_consumer.providers.base import HeaderObserver, TextProvider
from llm_consumer.providers.breaker import BreakerBoard
from llm_consumer.providers.getimg import V1_FAMILIES, GetImgProvider
from llm_consumer.providers.images_base import ImageProvider
from llm_consumer.providers.local import MODEL_NAME, LocalTextProvider
from llm_consumer.providers.open_circuit import OpenCircuitFallback
from llm_consumer.providers.openai_batch import OpenAIBatchClient
from llm_consumer.providers.openai_images import OpenAIImageProvider
from llm_consumer.settings import Settings
from llm_consumer.slo import SloPolicy
from llm_consumer.store.capabilities import RedisCapabilities
from llm_consumer.store.client import RedisClient, open_redis, verify_redis
from llm_consumer.store.guard import Guard, Policy
from llm_consumer.store.health import RedisHealth
from llm_consumer.store.jobs import JobLedger
from llm_consumer.store.keys import Keys
from llm_consumer.store.limits_config import LimitsConfig, parse_model_rates, parse_rate
from llm_consumer.store.queue_index import QueueIndexStore
from llm_consumer.store.usage import Price

log = structlog.get_logger("llm_consumer.app")



@dataclass(frozen=True, slots=True)
class Broker:
    connection: AbstractRobustConnection
    channel: AbstractChannel  # publishing, with confirms and returns raised
    hub: AbstractExchange
    dead_letter_exchange: AbstractExchange
    topology: Topology
    notice_channel: AbstractChannel  # without confirms, for notices
    notice_hub: AbstractExchange  # the hub on that channel


async def declare_topology(connection: AbstractRobustConnection, channel: AbstractChannel,
                           topology: Topology) -> tuple[AbstractExchange, AbstractExchange]:
    """Declare the exchanges, queues and bindings the service owns (idempotent). Objects that
    exist with other arguments are checked first (bus/declare.py): adopted where that is safe,
    declared passively then; otherwise TopologyConflict stops start-up with one line."""
    adopted = await check_topology(connection, topology)
    hub = await channel.declare_exchange(topology.hub_exchange, aio_pika.ExchangeType.TOPIC,
                                         durable=True, passive=topology.hub_exchange in adopted)
    dlx = await channel.declare_exchange(topology.dead_letter_exchange,
                                         aio_pika.ExchangeType.TOPIC, durable=True,
                                         passive=topology.dead_letter_exchange in adopted)
    exchanges = {topology.hub_exchange: hub, topology.dead_letter_exchange: dlx}
    for spec in topology.queues:
        queue = await channel.declare_queue(spec.name, durable=True, passive=spec.name in adopted,
                                            arguments=spec.arguments)  # type: ignore[arg-type]
        for exchange, key in spec.bindings:
            await queue.bind(exchanges[exchange], routing_key=key)
    return hub, dlx


@asynccontextmanager
async def open_broker(settings: Settings) -> AsyncIterator[Broker]:
    connection = await connect_nodes(
        settings.message_hub_nodes,
        client_properties={"connection_name": f"llm-consumer {settings.instance_id}"},
    )
    try:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        topology = build_topology(settings.queue_prefix, settings.hub_exchange,
                                  dead_letter_max_length=settings.dead_letter_max_length,
                                  queue_type=settings.queue_type,
                                  delivery_limit=settings.delivery_limit,
                                  index=settings.queue_index,
                                  index_max_length=settings.queue_index_max_length,
                                  index_ttl_s=settings.queue_index_ttl_s)
        hub, dlx = await declare_topology(connection, channel, topology)
        notice_channel = await connection.channel(publisher_confirms=False)
        notices = await notice_channel.get_exchange(topology.hub_exchange, ensure=False)
        yield Broker(connection, channel, hub, dlx, topology, notice_channel, notices)
    finally:
        await connection.close()


def build_text_provider(settings: Settings, observe: HeaderObserver | None = None,
                        redis: RedisClient | None = None) -> TextProvider:
    """OpenAI's (or a compatible server's) when a key is set, else the embedded model. With
    `redis`, what the provider learns of the server is shared with the other processes."""
    if settings.openai_api_key is not None:
        from llm_consumer.providers.openai_text import OpenAITextProvider

        return OpenAITextProvider(
            settings.openai_api_key.get_secret_value(),
            base_url=str(settings.openai_base_url) if settings.openai_base_url else None,
            model=settings.openai_model,
            timeout_s=settings.openai_request_timeout,
            structured_output=settings.openai_structured_output,
            token_limit_param=settings.openai_token_limit_param,
            observe=observe,
            shared_capabilities=(RedisCapabilities(redis, Keys(settings.redis_prefix))
                                 if redis is not None else None),
            breakers=BreakerBoard("openai", threshold=settings.breaker_failure_threshold,
                                  cooldown_s=settings.breaker_cooldown_s,
                                  models=(settings.openai_model,
                                          *settings.openai_fallback_models)),
        )
    return LocalTextProvider(settings.local_model_path, n_threads=settings.local_model_threads)


def build_batch_service(settings: Settings, text: TextProvider, publisher: Publisher,
                        ledger: JobLedger, redis: RedisClient) -> BatchService | None:
    """The batch desk and coordinator, when batch delivery is on and the text provider is
    OpenAI's (the Batch API is theirs)."""
    from llm_consumer.providers.openai_text import OpenAITextProvider

    if not settings.batch_enabled or not isinstance(text, OpenAITextProvider):
        return None
    assert settings.openai_api_key is not None
    keys = Keys(settings.redis_prefix)
    return BatchService(
        store=BatchStore(redis, keys),
        client=OpenAIBatchClient(
            settings.openai_api_key.get_secret_value(),
            base_url=str(settings.openai_base_url) if settings.openai_base_url else None,
            timeout_s=max(60.0, settings.openai_request_timeout)),
        body=text, publisher=publisher, ledger=ledger, redis=redis, keys=keys,
        prices={model: Price(**price) for model, price in settings.prices.items()},
        source=settings.event_source, instance=settings.instance_id,
        policy=BatchPolicy(window_s=settings.batch_window_s,
                           max_requests=settings.batch_max_requests,
                           poll_s=settings.batch_poll_s,
                           max_bytes=settings.batch_max_bytes,
                           priority_zero=settings.batch_priority_zero,
                           price_factor=settings.batch_price_factor))


def build_image_service(settings: Settings) -> ImageService:
    """The image providers whose keys are set, the image store and the source fetcher."""
    providers: dict[str, ImageProvider] = {}
    if settings.getimg_api_key is not None:
        providers["getimg"] = GetImgProvider(
            settings.getimg_api_key.get_secret_value(), base_url=str(settings.getimg_base_url),
            model=settings.getimg_model, timeout_s=settings.getimg_request_timeout)
    if settings.openai_api_key is not None:
        providers["openai"] = OpenAIImageProvider(
            settings.openai_api_key.get_secret_value(),
            base_url=str(settings.openai_base_url) if settings.openai_base_url else None,
            model=settings.openai_image_model, timeout_s=settings.openai_image_timeout)
    secret = settings.s3_secret_access_key
    s3 = S3Options(
        endpoint_url=str(settings.s3_endpoint_url) if settings.s3_endpoint_url else None,
        region=settings.s3_region, access_key_id=settings.s3_access_key_id,
        secret_access_key=secret.get_secret_value() if secret else None)
    return ImageService(
        providers=providers, default_provider=settings.image_provider,
        store=open_store(settings.image_store_url, s3=s3,
                         public_base_url=settings.image_public_base_url),
        fetcher=SourceFetcher(FetchPolicy(max_bytes=settings.image_fetch_max_bytes,
                                          timeout_s=settings.image_fetch_timeout_s,
                                          allowlist=settings.image_fetch_allowlist)),
        owner_key=derive_key(settings.secret, "image-owner"))


def open_circuit_fallback(chain: TextProvider, text: TextProvider, settings: Settings,
                          ) -> tuple[TextProvider, LocalTextProvider | None]:
    """`chain` behind BREAKER_OPEN_FALLBACK when `text` has circuit breakers (a remote
    provider), and the embedded model built for `local` (to be closed by the caller)."""
    board = getattr(text, "breakers", None)
    if not isinstance(board, BreakerBoard):
        return chain, None
    simpler = (LocalTextProvider(settings.local_model_path,
                                 n_threads=settings.local_model_threads)
               if settings.breaker_open_fallback == "local" else None)
    return OpenCircuitFallback(chain, board, simpler), simpler


def metered_per_request(metered: MeteredText,
                        answering: TextProvider) -> Callable[[Ticket], TextProvider]:
    """What a request's handler calls: `answering` (the open-circuit fallback, when there is
    one) over the metered chain bound to the request's ticket."""
    def for_request(ticket: Ticket) -> TextProvider:
        bound = metered.for_request(ticket)
        if isinstance(answering, OpenCircuitFallback):
            return answering.over(bound)
        return bound

    return for_request


def text_fallbacks(settings: Settings) -> tuple[str, ...]:
    """The fallback chain, walked by `MeteredText` so that each model's call is admitted as
    that model (the text provider itself is built without one)."""
    return settings.openai_fallback_models if settings.uses_openai else ()


def default_text_model(settings: Settings) -> str:
    if settings.uses_openai:
        return settings.openai_model
    from llm_consumer.providers.local import MODEL_NAME

    return MODEL_NAME


def caller_rules(settings: Settings) -> CallerRules:
    """Retry-copy signing, the reply_to policy and the model allowlist, from the settings."""
    text_models = {settings.openai_model, default_text_model(settings),
                   *settings.openai_fallback_models, *settings.rate_limit_models,
                   *settings.model_context_windows}
    image_models = {settings.getimg_model, settings.openai_image_model, *V1_FAMILIES,
                    *settings.rate_limit_models}
    pattern = re.compile(settings.reply_to_pattern) if settings.reply_to_pattern else None
    return CallerRules(
        signer=RetrySigner(derive_key(settings.secret, "retry-state")),
        replies=ReplyPolicy(settings.queue_prefix, pattern),
        models=ModelPolicy.of(text_models, image_models, settings.allowed_models))


def build_guard(settings: Settings, redis: RedisClient, ledger: JobLedger | None = None,
                health: RedisHealth | None = None) -> Guard:
    """Response cache, single-flight, rate limits and usage, from the settings."""
    operations = {"text": settings.rate_limit_text, "theme": settings.rate_limit_theme,
                  "validation": settings.rate_limit_validation,
                  "image_text_to_image": settings.rate_limit_image_text_to_image,
                  "image_to_image": settings.rate_limit_image_to_image,
                  "image": settings.rate_limit_image}
    limits = LimitsConfig(
        global_=parse_rate(settings.rate_limit_global), user=parse_rate(settings.rate_limit_user),
        operations={name: parse_rate(rate) for name, rate in operations.items()},
        models=parse_model_rates(settings.rate_limit_models),
        replicas_hint=settings.rate_limit_replicas_hint,
        user_share=settings.rate_limit_user_share,
        wait_replicas=settings.redis_wait_replicas)
    policy = Policy(default_text_model(settings), settings.singleflight_wait_s,
                    settings.rate_limit_inline_wait_s)
    return Guard(redis, Keys(settings.redis_prefix), limits=limits, policy=policy,
                 cache_ttl_default_s=settings.cache_ttl_default_s, cache_ttls=settings.cache_ttls,
                 prices={model: Price(**price) for model, price in settings.prices.items()},
                 ledger=ledger, health=health)


def context_windows(settings: Settings, text: TextProvider) -> ContextWindows:
    windows = dict(settings.model_context_windows)
    counters: dict[str, TokenCounter] = {}
    if isinstance(text, LocalTextProvider):  # the embedded model knows its window and vocab
        windows[MODEL_NAME] = text.context_window
        counters[MODEL_NAME] = text.token_counter
    return ContextWindows(windows=windows, default=settings.default_context_window,
                          counters=counters)


@dataclass
class StopSignals:
    """The first SIGTERM/SIGINT drains; a second one during the drain exits at once (130).
    What is unacked then goes back to the queue with the connection: redone, never lost."""

    stop: asyncio.Event
    count: int = 0

    def received(self) -> None:
        self.count += 1
        if self.count > 1:
            sys.stderr.write("second interrupt: exiting now without finishing the drain; "
                             "unfinished requests go back to the queue\n")
            sys.stderr.flush()
            os._exit(130)
        self.stop.set()


async def run_service(settings: Settings, *, stop: asyncio.Event | None = None,
                      ready: asyncio.Event | None = None, tune_gc: bool = False) -> None:
    """The service until `stop` is set (or SIGTERM/SIGINT), then drained. `tune_gc`: a
    process of its own (`run`) sets the garbage collector up for serving before it consumes
    and collects by time (collector.py)."""
    stop = stop or asyncio.Event()
    tracing.configure(settings.tracing, settings.event_source.strip("/") or "llm-consumer")
    loop = asyncio.get_running_loop()
    stopping = StopSignals(stop)
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stopping.received)
    async with AsyncExitStack() as stack:
        broker = await stack.enter_async_context(open_broker(settings))
        redis = open_redis(settings.redis_url, settings.redis_mode,
                           sentinel_master=settings.redis_sentinel_master,
                           max_connections=settings.redis_max_connections,
                           concurrency=settings.concurrency)
        stack.push_async_callback(redis.aclose)
        await verify_redis(redis, settings.redis_mode, settings.redis_url)
        health = RedisHealth()  # one view of Redis for the ledger and the guard
        ledger = JobLedger(redis, Keys(settings.redis_prefix), instance_id=settings.instance_id,
                           result_ttl_s=settings.result_ttl_s, lease_s=settings.lease_s,
                           health=health)
        stack.push_async_callback(ledger.retire)
        await ledger.heartbeat()
        guard = build_guard(settings, redis, ledger, health)
        text = build_text_provider(settings, observe=guard.observe, redis=redis)
        stack.push_async_callback(text.aclose)
        images = build_image_service(settings)
        stack.push_async_callback(images.aclose)
        metered = MeteredText(text, guard, text_fallbacks(settings))
        answering, simpler = open_circuit_fallback(metered, text, settings)
        if simpler is not None:
            stack.push_async_callback(simpler.aclose)
        rules = caller_rules(settings)
        verifier = TokenVerifier(settings.secret,
                                 audience=settings.jwt_audience, issuer=settings.jwt_issuer,
                                 leeway_s=settings.jwt_leeway_s,
                                 max_lifetime_s=settings.max_token_lifetime_s)
        queue_index = build_queue_index(settings, redis, broker.topology, verifier, rules)
        publisher = Publisher(broker.channel, broker.hub, broker.topology,
                              broker.dead_letter_exchange, signer=rules.signer,
                              notices=(broker.notice_channel, broker.notice_hub))
        batch = build_batch_service(settings, text, publisher, ledger, redis)
        deps = Deps(text=answering, windows=context_windows(settings, text),
                    metered_text=metered_per_request(metered, answering),
                    images=images, batch=batch)
        if batch is not None:
            stack.push_async_callback(batch.aclose)
            batch.deps = deps  # answers are read by the realtime handlers
        consumer = Consumer(
            config=ConsumerConfig(
                source=settings.event_source,
                max_message_bytes=settings.max_message_bytes,
                max_attempts=settings.max_attempts,
                request_deadline_s=settings.request_deadline_s,
                shutdown_grace_s=settings.shutdown_grace_s,
                work_queue=broker.topology.work.name,
                max_defer_s=settings.rate_limit_max_wait_s,
                max_provider_calls=settings.max_provider_calls_per_request,
                progress=ProgressPolicy(settings.progress_interval_ms / 1000,
                                        settings.progress_min_chars),
                slo=SloPolicy.of(settings.slo_targets_s, settings.slo_window_s,
                                 settings.slo_warn_below, settings.slo_warn_min_requests),
                instance=settings.instance_id,
            ),
            publisher=publisher,
            ledger=ledger,
            verifier=verifier,
            rules=rules,
            deps=deps,
            guard=guard,
            queue_index=queue_index,
        )
        if tune_gc:
            tune_collector()
            stack.push_async_callback(_stopped, asyncio.create_task(collect_by_time()))
        await _subscribe(broker, consumer, settings)
        if queue_index is not None:
            reporting = await _serve_queue_index(broker, queue_index, consumer, settings)
            stack.push_async_callback(_stopped, reporting)
        if settings.metrics_port is not None:
            metrics.serve(settings.metrics_port, settings.metrics_host)
        probes = await _probes(settings, broker, ledger, guard, consumer, text.name,
                               publisher, breakers=getattr(text, "breakers", None))

        async def publish(event_type: str, data: BaseModel) -> None:
            await publisher.publish_event(new_event(event_type, data,
                                                    source=settings.event_source))

        beats = asyncio.create_task(run_heartbeats(
            probes, publish, every_s=min(settings.heartbeat_every_s, settings.lease_s / 3),
            health_file=settings.health_file))
        log.info("service.ready", instance=settings.instance_id, queue=broker.topology.work.name,
                 text_provider=text.name, concurrency=settings.concurrency,
                 event_loop=type(loop).__module__.split(".")[0])
        batches = asyncio.create_task(batch.run()) if batch is not None else None
        if ready is not None:
            ready.set()
        await stop.wait()
        log.info("service.stopping", in_flight=consumer.in_flight)
        await consumer.drain()
        for task in (beats, batches):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    log.info("service.stopped")


def build_queue_index(settings: Settings, redis: RedisClient, topology: Topology,
                      verifier: TokenVerifier, rules: CallerRules) -> QueueIndex | None:
    """The queue index (queue.status, job.prioritize), when QUEUE_INDEX is on."""
    if not settings.queue_index:
        return None
    store = QueueIndexStore(redis, Keys(settings.redis_prefix), ttl_s=settings.queue_index_ttl_s,
                            max_entries=settings.queue_index_max_length)
    return QueueIndex(store, topology, verifier=verifier,
                      signer=CopySigner(derive_key(settings.secret, "queue-copy")),
                      instance=settings.instance_id,
                      max_message_bytes=settings.max_message_bytes,
                      max_body_bytes=settings.queue_index_max_body_bytes,
                      live_within_s=3 * settings.heartbeat_every_s,
                      policies=(rules.replies, rules.models))


async def _serve_queue_index(broker: Broker, queue_index: QueueIndex, consumer: Consumer,
                             settings: Settings) -> asyncio.Task[None]:
    """Read the index copies on a channel of their own, and report this instance's running
    requests; the task reporting them is returned."""
    assert broker.topology.index is not None
    channel = await broker.connection.channel(publisher_confirms=False)
    await channel.set_qos(prefetch_count=INDEX_PREFETCH)
    queue_index.attach(publishing=broker.channel,
                       probing=await broker.connection.channel(publisher_confirms=False))
    index = await channel.get_queue(broker.topology.index.name)
    await index.consume(queue_index.on_index_copy)
    return asyncio.create_task(queue_index.report_in_flight(
        lambda: consumer.running, settings.heartbeat_every_s))


async def _stopped(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _subscribe(broker: Broker, consumer: Consumer, settings: Settings) -> None:
    """A dedicated consuming channel whose prefetch bounds concurrency."""
    channel = await broker.connection.channel(publisher_confirms=False)
    await channel.set_qos(prefetch_count=settings.effective_prefetch)
    work = await channel.get_queue(broker.topology.work.name)
    await consumer.subscribe(work)
    control_spec = broker.topology.control_queue(settings.instance_id)
    control = await channel.declare_queue(control_spec.name, exclusive=True, auto_delete=True)
    for _, key in control_spec.bindings:
        await control.bind(broker.topology.hub_exchange, routing_key=key)
    await consumer.subscribe(control, exclusive=True)


async def _probes(settings: Settings, broker: Broker, ledger: JobLedger, guard: Guard,
                  consumer: Consumer, text_provider: str,
                  publisher: Publisher, *, breakers: BreakerBoard | None = None) -> Probes:
    """What each heartbeat reads, over a channel of its own (a failed passive declare closes
    the channel it runs on, never the publishing one)."""
    probe_channel = await broker.connection.channel(publisher_confirms=False)
    watched = (broker.topology.work.name, broker.topology.dead.name,
               broker.topology.unrouted.name)

    async def lease() -> bool:
        ok = await ledger.heartbeat()
        await guard.heartbeat(ok)
        return ok and not guard.degraded

    async def depths() -> dict[str, int]:
        found = {}
        for name in watched:
            found[name] = await queue_depth(probe_channel, name)
        return found

    def image_status(key: object) -> Status:
        return "ok" if key else "disabled"

    return Probes(
        instance=settings.instance_id,
        redis_lease=lease,
        broker_ok=lambda: not broker.connection.is_closed,
        cache_status=lambda: guard.health.status,
        providers={f"text-{text_provider}": "ok",
                   "image-getimg": image_status(settings.getimg_api_key),
                   "image-openai": image_status(settings.openai_api_key)},
        in_flight=lambda: consumer.in_flight,
        processed=lambda: consumer.stats.processed,
        error_rate=lambda: consumer.stats.error_rate,
        p95_ms=lambda: consumer.stats.p95_ms,
        request_rate=consumer.slo.request_rate,
        slo=consumer.slo.shares,
        queue_depths=depths,
        dead_letters_parked=lambda: publisher.dead_letters.raised,
        models=(lambda: model_components(breakers)) if breakers is not None else dict,
    )
