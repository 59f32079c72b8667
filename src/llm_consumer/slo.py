"""The platform documents' latency targets, measured on this process's own traffic.

A request counts once, when the delivery that answers it settles (a result, a stored result
sent again, or `generation.failed` other than `cancelled`); retry copies and rate-limit
deferrals count with the delivery that finally answers. Its time splits into three parts that
add up to what the caller waited:

- queue wait: from the request's publish (the later of its AMQP timestamp and its event
  `time`: both are the publisher's clock) to this delivery's receipt; for a retried or deferred
  request it includes the earlier attempts and the delay queues;
- provider time: the provider calls of this delivery, summed (handlers add them to
  `CallBudget.provider_s` around each call);
- service overhead: the rest of receive-to-settle (admission, cache, prompts, image checks and
  storage, publishing).

Each kind belongs to a target class (`target_class`): its share within target is kept per class
over the last SLO_WINDOW_S in counting buckets (memory does not grow with traffic, nothing goes
to Redis), and every request also counts in the `queue` class against its queue wait alone.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from llm_consumer.events.requests import ImageKind
from llm_consumer.events.results import SloShare, SloWarning
from llm_consumer.handlers.base import CallBudget

Clock = Callable[[], float]

QUEUE = "queue"
# The documents' performance targets: text < 5 s, image < 30 s, theme application < 15 s,
# content validation < 2 s, queue processing < 1 s.
DEFAULT_TARGETS_S: dict[str, float] = {"text": 5.0, "image": 30.0, "theme": 15.0,
                                       "validation": 2.0, QUEUE: 1.0}
CLASSES = frozenset(DEFAULT_TARGETS_S)
THEME_KINDS = frozenset({"theme.apply", "theme.analyze"})
VALIDATION_KINDS = frozenset({"content.validate"})
IMAGE_KINDS = frozenset(kind.value for kind in ImageKind)
# Request outcomes not measured: the request comes back (busy, retry, deferred), was never a
# request, its caller stopped it (cancelled: its time says nothing of the service's), or a
# re-prioritized copy replaced this one (superseded: the live copy is measured), or it went to
# batch delivery (batched: answered hours later at half the price, by choice).
NOT_ANSWERED = frozenset({"busy", "retry", "deferred", "control", "dead_letter", "cancelled",
                          "superseded", "batched"})
SLOTS = 60  # buckets per window
MAX_QUEUE_WAIT_S = 7 * 86400.0  # a publisher's clock far off is not a week of waiting


def target_class(kind: str, targets: Mapping[str, float]) -> str:
    """A kind with a target of its own is its own class; else image kinds are `image`,
    theme.apply and theme.analyze `theme`, content.validate `validation`, the rest `text`."""
    if kind in targets:
        return kind
    if kind in IMAGE_KINDS:
        return "image"
    if kind in THEME_KINDS:
        return "theme"
    if kind in VALIDATION_KINDS:
        return "validation"
    return "text"


def published_at(amqp_timestamp: datetime | None, event_time: datetime | None) -> float | None:
    """When the request was published, as epoch seconds: the later of the two stamps (the AMQP
    timestamp has whole seconds; an event time older than it was set before the publish)."""
    stamps = [stamp.timestamp() for stamp in (amqp_timestamp, event_time) if stamp is not None]
    return max(stamps) if stamps else None


@dataclass(frozen=True, slots=True)
class Parts:
    queue_wait_s: float
    provider_s: float
    overhead_s: float

    @property
    def total_s(self) -> float:
        return self.queue_wait_s + self.provider_s + self.overhead_s


@dataclass(slots=True)
class Delivery:
    """One delivery's measurements, filled in by the consumer as it learns them."""

    received_at: float = field(default_factory=time.time)  # wall clock, against the publish
    started: float = field(default_factory=time.monotonic)
    published_at: float | None = None
    kind: str | None = None  # set once the delivery is known to be a request
    calls: CallBudget | None = None  # the attempt's provider calls and their time

    def parts(self, handled_s: float) -> Parts:
        waited = (0.0 if self.published_at is None
                  else min(MAX_QUEUE_WAIT_S, max(0.0, self.received_at - self.published_at)))
        provider = min(handled_s, self.calls.provider_s if self.calls is not None else 0.0)
        return Parts(waited, provider, max(0.0, handled_s - provider))


class Window:
    """How many events, and how many of them good, in the last `span_s` seconds.

    Counts sit in SLOTS buckets of span_s / SLOTS each: recording is O(1) and memory is
    bounded; the window slides by whole buckets (so it covers span_s minus up to one bucket).
    """

    def __init__(self, span_s: float, clock: Clock) -> None:
        self.span_s = span_s
        self._width = span_s / SLOTS
        self._clock = clock
        self._buckets: deque[list[int]] = deque()  # [bucket number, events, good]
        self._events = 0  # the sums over the buckets kept
        self._good = 0

    def record(self, good: bool = True) -> None:
        now = self._slot()
        if not self._buckets or self._buckets[-1][0] != now:
            self._buckets.append([now, 0, 0])
            self._prune(now)
        bucket = self._buckets[-1]
        bucket[1] += 1
        self._events += 1
        if good:
            bucket[2] += 1
            self._good += 1

    def counts(self) -> tuple[int, int]:
        """(events, good) within the window."""
        self._prune(self._slot())
        return self._events, self._good

    def covered_s(self) -> float:
        """The seconds the counts cover: the full buckets kept and the current one so far."""
        now = self._clock()
        return (SLOTS - 1) * self._width + (now - (now // self._width) * self._width)

    def _slot(self) -> int:
        return int(self._clock() // self._width)

    def _prune(self, now: int) -> None:
        while self._buckets and self._buckets[0][0] <= now - SLOTS:
            _, events, good = self._buckets.popleft()
            self._events -= events
            self._good -= good


@dataclass(frozen=True, slots=True)
class SloPolicy:
    """SLO_TARGETS_S (over the documents' defaults), SLO_WINDOW_S, SLO_WARN_BELOW and
    SLO_WARN_MIN_REQUESTS."""

    targets_s: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_TARGETS_S))
    window_s: float = 300.0
    warn_below: float = 0.9  # 0: never warn
    min_requests: int = 20

    @classmethod
    def of(cls, targets_s: Mapping[str, float], window_s: float, warn_below: float,
           min_requests: int) -> SloPolicy:
        return cls({**DEFAULT_TARGETS_S, **targets_s}, window_s, warn_below, min_requests)


class SloBook:
    """Per target class, the requests within target over the window, and the settle rate."""

    def __init__(self, policy: SloPolicy, instance: str = "", clock: Clock = time.monotonic,
                 ) -> None:
        self.policy = policy
        self._instance = instance
        self._clock = clock
        self._started = clock()
        self._settled = Window(policy.window_s, clock)
        self._windows = {name: Window(policy.window_s, clock) for name in policy.targets_s}
        self._warned: dict[str, float] = {}

    def settled(self) -> None:
        """One delivery settled (what the heartbeat's `processed` counts)."""
        self._settled.record()

    def observe(self, kind: str, parts: Parts) -> list[SloWarning]:
        """Count one answered request; the warnings that are due now."""
        due = []
        for name, seconds in ((target_class(kind, self.policy.targets_s), parts.total_s),
                              (QUEUE, parts.queue_wait_s)):
            within = seconds <= self.policy.targets_s[name]
            self._windows[name].record(within)
            warning = None if within else self._warning(name)  # only a late one lowers it
            if warning is not None:
                due.append(warning)
        return due

    def request_rate(self) -> float:
        """Settled deliveries per second over the window (or since start, when shorter)."""
        events, _ = self._settled.counts()
        span = min(self._settled.covered_s(), self._clock() - self._started)
        return events / max(1.0, span)

    def shares(self) -> dict[str, SloShare]:
        found = {}
        for name, window in self._windows.items():
            events, good = window.counts()
            found[name] = SloShare(target_s=self.policy.targets_s[name], requests=events,
                                   within_target=good,
                                   share=round(good / events, 4) if events else None)
        return found

    def _warning(self, name: str) -> SloWarning | None:
        policy = self.policy
        events, good = self._windows[name].counts()
        if events < policy.min_requests or good / events >= policy.warn_below:
            return None
        now = self._clock()
        last = self._warned.get(name)
        if last is not None and now - last < policy.window_s:
            return None
        self._warned[name] = now
        return SloWarning(instance=self._instance, target=name,
                          target_s=policy.targets_s[name], share=round(good / events, 4),
                          level=policy.warn_below, requests=events, within_target=good,
                          window_s=policy.window_s)
