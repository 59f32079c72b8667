"""What every handler receives and returns."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from pydantic import BaseModel

from llm_consumer.auth import Principal
from llm_consumer.errors import PermanentFailure
from llm_consumer.events.envelope import Envelope, new_event
from llm_consumer.events.requests import ContentRequested, ImageRequested
from llm_consumer.identity import RequestOwner
from llm_consumer.prompts.fitting import ContextWindows
from llm_consumer.providers.base import TextJob, TextProvider

if TYPE_CHECKING:
    from llm_consumer.admission.waits import Ticket
    from llm_consumer.images.service import ImageService

Emit = Callable[[str, BaseModel], Awaitable[None]]
SERVICE_SOURCE = "/llm-service"  # EVENT_SOURCE's default


@dataclass(frozen=True, slots=True)
class Reply:
    """One event a handler wants published: its type and its data."""

    type: str
    data: BaseModel


DEFAULT_MAX_PROVIDER_CALLS = 16


@dataclass(slots=True)
class CallBudget:
    """The provider calls one message may cause, across all of its attempts.

    `used` starts at what the message's earlier attempts spent (carried, signed, on the
    service's own retry copies) and grows with every call of this attempt; a call past `limit`
    fails the request for good instead of paying for it.
    """

    limit: int = DEFAULT_MAX_PROVIDER_CALLS
    used: int = 0
    provider_s: float = 0.0  # time in this attempt's provider calls (slo.py's provider part)

    def spend(self, calls: int = 1) -> None:
        if self.used + calls > self.limit:
            raise PermanentFailure(
                f"request reached its cap of {self.limit} provider calls across its attempts "
                "(MAX_PROVIDER_CALLS_PER_REQUEST)", code="quota_exhausted")
        self.used += calls

    @property
    def left(self) -> int:
        return max(0, self.limit - self.used)

    @contextmanager
    def timing(self) -> Iterator[None]:
        """Around a provider call: its time goes to `provider_s`, failed or not."""
        started = time.monotonic()
        try:
            yield
        finally:
            self.provider_s += time.monotonic() - started


@dataclass(frozen=True, slots=True)
class ProgressPolicy:
    """How streamed deltas are coalesced into `content.progress` events (handlers/progress)."""

    interval_s: float = 0.1  # PROGRESS_INTERVAL_MS
    min_chars: int = 400  # PROGRESS_MIN_CHARS

    @property
    def max_wait_s(self) -> float:
        return max(1.0, self.interval_s * 10)


class BatchDesk(Protocol):
    """Where requests that opt into batch delivery go instead of a provider call (batch/)."""

    def wants(self, request: Request) -> bool: ...

    async def submit(self, request: Request, job: TextJob) -> None:
        """Store the request's call for the next batch; raises batch.Batched."""
        ...

    async def cancel(self, request_key: str) -> bool:
        """job.cancel of a batched request; False when it has none."""
        ...


@dataclass(frozen=True, slots=True)
class Deps:
    """Everything a handler may use, built once by the app."""

    text: TextProvider | None
    windows: ContextWindows = field(default_factory=ContextWindows)
    # `text` metered for one request: calls after the one its admission covers are admitted
    # before they go out (admission/metered.py); None where nothing is metered.
    metered_text: Callable[[Ticket], TextProvider] | None = None
    images: ImageService | None = None  # image providers, source fetching, storage
    batch: BatchDesk | None = None  # batch delivery (options.delivery: batch)


@dataclass(frozen=True, slots=True)
class Request:
    envelope: Envelope
    data: ContentRequested | ImageRequested
    principal: Principal
    attempt: int
    emit: Emit
    calls: CallBudget = field(default_factory=CallBudget)
    progress: ProgressPolicy = field(default_factory=lambda: ProgressPolicy())  # streaming
    started: float = field(default_factory=time.monotonic)
    # True: the admission claims the request in the job ledger with its first question (one
    # Redis round trip for both), publishes job.status `running` once it holds the claim, and
    # records the final events with its last call; warming runs without a ledger.
    claims_job: bool = False
    source: str = SERVICE_SOURCE  # the CloudEvents `source` of the events it causes
    reply_to: str | None = None  # the checked reply queue (batch delivery answers there later)
    priority: int | None = None  # the message's AMQP priority (BATCH_PRIORITY_ZERO reads it)

    @property
    def id(self) -> str:
        return self.envelope.id

    @property
    def owner(self) -> RequestOwner:
        return RequestOwner(self.principal.subject, self.envelope.source)

    @property
    def key(self) -> str:
        """The request's name scoped by its caller: what the job ledger and cancel use."""
        return self.owner.key(self.envelope.id)

    def elapsed_ms(self) -> int:
        return int((time.monotonic() - self.started) * 1000)

    def final_events(self, replies: list[Reply]) -> tuple[Envelope, ...]:
        """The events that answer this request, as they are recorded and published."""
        return tuple(new_event(r.type, r.data, source=self.source, cause=self.envelope)
                     for r in replies)


class Handler(Protocol):
    async def __call__(self, request: Request, deps: Deps) -> list[Reply]: ...
