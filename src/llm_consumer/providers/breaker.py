"""Circuit breakers, one per provider and model: a small state machine, tested by table.

`closed`: calls go through; BREAKER_FAILURE_THRESHOLD transient failures in a row (5xx,
time-outs, broken streams) open it. `open`: calls are refused at once (the fallback chain moves
on without paying a time-out) until BREAKER_COOLDOWN_S have passed; then `half_open`: one call
goes through as a probe (the others are still refused); its success closes the breaker, its
transient failure opens it again for another cool-down. Any answer of the server that is not a
transient failure (a result, a 4xx) counts as a success: the model is reachable.

The asyncio libraries looked at (`aiobreaker`, `purgatory`) count failures per decorated
function and keep state in their own storage; a breaker per (provider, model) with a probe slot
and a state the heartbeat can read is this small module.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal

import structlog

from llm_consumer import metrics
from llm_consumer.errors import TransientFailure

log = structlog.get_logger(__name__)
State = Literal["closed", "open", "half_open"]
STATE_VALUES: dict[State, int] = {"closed": 0, "half_open": 1, "open": 2}
TRIPPING_CODES = frozenset({"provider_unavailable", "timeout"})
DEFAULT_THRESHOLD = 5
DEFAULT_COOLDOWN_S = 30.0
KEPT_TRANSITIONS = 200


class CircuitOpen(TransientFailure):
    """The model's breaker refused the call: no request was sent."""

    def __init__(self, provider: str, model: str, retry_after_s: float) -> None:
        super().__init__(f"{provider} model {model} is unavailable (circuit open after repeated "
                         f"failures); next try in {retry_after_s:.0f}s",
                         code="provider_unavailable", retry_after_s=retry_after_s)


def trips(error: BaseException) -> bool:
    """Whether `error` counts as the model failing (rather than as the server answering)."""
    return isinstance(error, TransientFailure) and error.code in TRIPPING_CODES


@dataclass(frozen=True, slots=True)
class Transition:
    provider: str
    model: str
    state: State
    at: float  # time.time()
    failures: int


@dataclass(slots=True)
class Breaker:
    threshold: int = DEFAULT_THRESHOLD
    cooldown_s: float = DEFAULT_COOLDOWN_S
    clock: Callable[[], float] = time.monotonic
    on_change: Callable[[State, int], None] = lambda state, failures: None
    failures: int = 0
    opened_at: float | None = None
    probing: bool = False
    _state: State = field(default="closed")

    @property
    def state(self) -> State:
        if self._state == "open" and self.opened_at is not None and (
                self.clock() - self.opened_at >= self.cooldown_s):
            self._move("half_open")
        return self._state

    def blocked(self) -> bool:
        """Whether a call now would be refused (without taking the probe slot)."""
        state = self.state
        return state == "open" or (state == "half_open" and self.probing)

    def allow(self) -> bool:
        """Take the right to call now: always when closed, once (the probe) when half-open."""
        if self.blocked():
            return False
        if self._state == "half_open":
            self.probing = True
        return True

    def retry_after(self) -> float:
        """Seconds until the breaker lets a probe through (0 when it would now)."""
        if self.opened_at is None or self.state != "open":
            return 0.0
        return max(0.0, self.opened_at + self.cooldown_s - self.clock())

    def succeeded(self) -> None:
        self.failures, self.probing = 0, False
        if self._state != "closed":
            self.opened_at = None
            self._move("closed")

    def failed(self) -> None:
        self.failures += 1
        was_probe, self.probing = self.probing, False
        if was_probe or (self._state == "closed" and self.failures >= self.threshold):
            self.opened_at = self.clock()
            self._move("open")

    def released(self) -> None:
        """The call ended without a verdict (cancelled, rate-limited): free the probe slot."""
        self.probing = False

    def _move(self, state: State) -> None:
        self._state = state
        self.on_change(state, self.failures)


class BreakerBoard:
    """The breakers of one provider's models, created on first use; what health reads."""

    def __init__(self, provider: str, *, threshold: int = DEFAULT_THRESHOLD,
                 cooldown_s: float = DEFAULT_COOLDOWN_S, models: Iterable[str] = (),
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.provider = provider
        self.threshold = threshold
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._breakers: dict[str, Breaker] = {}
        self.transitions: deque[Transition] = deque(maxlen=KEPT_TRANSITIONS)
        for model in models:
            self.breaker(model)

    def breaker(self, model: str) -> Breaker:
        found = self._breakers.get(model)
        if found is None:
            def changed(state: State, failures: int) -> None:
                self._changed(model, state, failures)

            found = self._breakers[model] = Breaker(self.threshold, self.cooldown_s,
                                                    self._clock, changed)
            metrics.BREAKER_STATE.labels(self.provider, model).set(0)
        return found

    def states(self) -> dict[str, State]:
        return {model: breaker.state for model, breaker in sorted(self._breakers.items())}

    def all_blocked(self, models: Iterable[str]) -> bool:
        """Whether every one of `models` would refuse a call now."""
        chain = list(models)
        return bool(chain) and all(self.breaker(m).blocked() for m in chain)

    def retry_after(self, models: Iterable[str]) -> float:
        """Seconds until the first of `models` lets a probe through."""
        return min((self.breaker(m).retry_after() for m in models), default=0.0)

    def _changed(self, model: str, state: State, failures: int) -> None:
        at = time.time()
        self.transitions.append(Transition(self.provider, model, state, at, failures))
        metrics.BREAKER_STATE.labels(self.provider, model).set(STATE_VALUES[state])
        metrics.BREAKER_TRANSITIONS.labels(self.provider, model, state).inc()
        log.warning("provider.breaker", provider=self.provider, model=model, state=state,
                    failures=failures, cooldown_s=self.cooldown_s, at=round(at, 3))
