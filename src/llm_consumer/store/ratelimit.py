"""Rate-limit scopes, and the in-process limiter that stands in while Redis is unreachable.

A scope is one limit that applies to a request: global, per user, per operation, per model
(requests, and tokens beside them) and the provider's own budget for a model, learnt from its
response headers (see `feedback`). The shared check runs in Redis (`limits.lua`); this module
builds the scopes and keeps a per-replica copy of recent admissions so that, with Redis down,
each replica can go on at a 1/`replicas_hint` share of every limit, starting from what it
admitted itself, and hand its degraded-mode admissions back to Redis when it returns.

Every window is lengthened by an edge margin (3% of it, at most 200 ms). A call's entry is
stamped as it leaves for the provider (see `restamp.lua`), which receives it a moment later:
a millisecond or two on an open connection, up to ~100 ms when a new one is set up. The margin
keeps that lag from putting two edge calls into one window as the provider counts them; it
costs 3% of a short window's throughput and 0.3% of a minute's.
"""

from __future__ import annotations

import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

from llm_consumer.store.limits_config import LimitsConfig, Rate

NoticeScope = Literal["model", "operation", "user", "global", "provider"]
Measure = Literal["count", "sum", "budget"]  # requests, tokens, provider-reported budget
EDGE_MARGIN = 0.03
EDGE_MARGIN_MAX_S = 0.2
WARN_AT = 0.8
NOTICE_EVERY_US = 1_000_000
SWEEP_EVERY = 1000
IMAGE_OPERATIONS = frozenset({"image_text_to_image", "image_to_image"})
IMAGE_BUDGET = "image"  # the operation scope both image operations also count against


@dataclass(frozen=True, slots=True)
class Scope:
    scope: NoticeScope
    key: str
    measure: Measure
    limit: int  # 0 for a provider budget: its size is whatever the provider last reported
    window_s: float
    cost: int = 1

    @property
    def edge_margin_s(self) -> float:
        """How much longer than its window an entry is counted (clocks and transit differ)."""
        return min(EDGE_MARGIN_MAX_S, self.window_s * EDGE_MARGIN)

    @property
    def window_us(self) -> int:
        return int((self.window_s + self.edge_margin_s) * 1_000_000)

    def charge(self, limit: int) -> int:
        """What one admission costs here: a request bigger than the whole budget still passes
        alone in an empty window instead of waiting forever."""
        return max(1, min(self.cost, limit)) if self.measure == "sum" else self.cost


@dataclass(frozen=True, slots=True)
class Notice:
    event: Literal["warning", "exceeded"]
    scope: Scope
    limit: int  # as enforced: a replica's share in degraded mode, the provider's for a budget
    remaining: int
    retry_after_s: float


def _window(scope: NoticeScope, key: str, rate: Rate | None, measure: Measure = "count",
            cost: int = 1) -> list[Scope]:
    return [] if rate is None else [Scope(scope, key, measure, rate.limit, rate.window_s, cost)]


def model_scopes(config: LimitsConfig, model: str, tokens: int) -> list[Scope]:
    """What one provider call to `model` counts against (tokens: prompt + answer budget)."""
    rates = config.model(model)
    return [
        *_window("model", model, rates.requests),
        *_window("model", f"{model}/tokens", rates.tokens, "sum", tokens),
        Scope("provider", model, "budget", 0, 1.0),
        Scope("provider", f"{model}/tokens", "budget", 0, 1.0, tokens),
    ]


def request_scopes(config: LimitsConfig, *, operation: str, user: str, model: str,
                   tokens: int) -> list[Scope]:
    """Every scope of a request. Besides the user's own limit, a user may take only its share
    (RATE_LIMIT_USER_SHARE) of each operation's and model's limit, so one tenant's burst
    cannot leave the others `rate_limited`. Both image operations also count against the
    combined image budget, operation `image` (RATE_LIMIT_IMAGE)."""
    operations = [operation, *([IMAGE_BUDGET] if operation in IMAGE_OPERATIONS else [])]
    model_rate = config.model(model).requests
    return [
        *_window("global", "all", config.global_),
        *_window("user", user, config.user),
        *[scope for name in operations for scope in _window(
            "user", f"{user}/operation/{name}", config.user_part(config.operations.get(name)))],
        *_window("user", f"{user}/model/{model}", config.user_part(model_rate)),
        *[scope for name in operations
          for scope in _window("operation", name, config.operations.get(name))],
        *model_scopes(config, model, tokens),
    ]


@dataclass(slots=True)
class _Log:
    window_us: int
    entries: deque[tuple[int, int]] = field(default_factory=deque)  # (time us, cost)
    used: int = 0

    def trim(self, now_us: int) -> None:
        while self.entries and self.entries[0][0] <= now_us - self.window_us:
            self.used -= self.entries.popleft()[1]

    def retry_after_us(self, limit: int, cost: int, now_us: int) -> int:
        freed = 0
        for at, weight in self.entries:
            freed += weight
            if self.used - freed + cost <= limit:
                return at + self.window_us - now_us
        return self.window_us


@dataclass(frozen=True, slots=True)
class Pending:
    """An admission made while Redis was down, to be written back when it returns."""

    scope: Scope
    at_us: int
    member: str
    cost: int


class LocalLimiter:
    """Sliding-window logs of this replica's own admissions (always kept, trimmed as they go)."""

    def __init__(self, replicas_hint: int) -> None:
        self._hint = max(1, replicas_hint)
        self._logs: dict[tuple[str, str], _Log] = {}
        self._pending: list[Pending] = []
        self._noticed: dict[tuple[str, str, str], int] = {}
        self._records = 0

    def share(self, scope: Scope) -> int:
        """Rounded down, so the replicas' shares never add up to more than the limit: a limit
        smaller than the replica count admits nothing here until Redis answers again."""
        return scope.limit // self._hint

    def check(self, scopes: list[Scope], now_us: int | None = None,
              ) -> tuple[int, Scope | None, list[Notice]]:
        """Admit at this replica's share: (0, None, notices) when admitted and recorded, else
        (microseconds until a slot frees, the scope that frees last, notices)."""
        now = now_us if now_us is not None else time_us()
        wait, worst, notices = 0, None, []
        for scope in (s for s in scopes if s.measure != "budget"):
            log = self._log(scope, now)
            limit = self.share(scope)
            cost = scope.charge(limit)
            if log.used + cost > limit:
                retry = max(1, log.retry_after_us(limit, cost, now))
                if retry > wait:
                    wait, worst = retry, scope
                notices += self._notice("exceeded", scope, limit - log.used, retry, now)
        if worst is not None:
            return wait, worst, notices
        self.record(scopes, now, pending=True)
        for scope in (s for s in scopes if s.measure != "budget"):
            used, limit = self._logs[(scope.scope, scope.key)].used, self.share(scope)
            if used >= WARN_AT * limit:
                notices += self._notice("warning", scope, limit - used, 0, now)
        return 0, None, notices

    def record(self, scopes: list[Scope], now_us: int, *, pending: bool) -> None:
        """Remember an admission (made by Redis, or by `check` when `pending`)."""
        member = uuid.uuid4().hex
        for scope in (s for s in scopes if s.measure != "budget"):
            log = self._log(scope, now_us)
            cost = scope.charge(scope.limit)
            log.entries.append((now_us, cost))
            log.used += cost
            if pending:
                self._pending.append(Pending(scope, now_us, member, cost))
        self._records += 1
        if self._records % SWEEP_EVERY == 0:
            self._sweep(now_us)

    def take_pending(self) -> list[Pending]:
        taken, self._pending = self._pending, []
        return taken

    def return_pending(self, pending: list[Pending]) -> None:
        self._pending[:0] = pending

    def _log(self, scope: Scope, now_us: int) -> _Log:
        log = self._logs.setdefault((scope.scope, scope.key), _Log(scope.window_us))
        log.trim(now_us)
        return log

    def _sweep(self, now_us: int) -> None:
        """Drop logs of keys (users, mostly) with nothing left in their window."""
        for log in self._logs.values():
            log.trim(now_us)
        self._logs = {k: log for k, log in self._logs.items() if log.entries}
        self._noticed = {k: t for k, t in self._noticed.items() if t > now_us - NOTICE_EVERY_US}

    def _notice(self, event: Literal["warning", "exceeded"], scope: Scope, remaining: int,
                retry_us: int, now_us: int) -> list[Notice]:
        """At most one per event, scope and key per second (what Redis does across replicas)."""
        name = (event, scope.scope, scope.key)
        if self._noticed.get(name, 0) > now_us - NOTICE_EVERY_US:
            return []
        self._noticed[name] = now_us
        return [Notice(event, scope, self.share(scope), max(0, remaining), retry_us / 1e6)]


def time_us() -> int:
    return time.time_ns() // 1000
