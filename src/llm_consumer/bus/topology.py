"""The broker objects the service owns, as frozen data declared idempotently at start-up.

Retries go through a few fixed-TTL delay queues (RabbitMQ expires messages only at a queue's
head, so mixed per-message TTLs in one queue would block each other). Expired copies are
dead-lettered straight back to the work queue through the default exchange, not to the hub:
other services bound to `content.requested` must not see our retries as new requests.

The dead-letter queue is bounded with `reject-publish`: when it is full the broker refuses a dead
letter (a nack) instead of dropping the oldest one, and the publisher parks it (bus/publisher.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from llm_consumer.events.catalog import CONTROL_TYPES, REQUEST_TYPES

MAX_PRIORITY = 9
DELAY_STEPS_S: tuple[int, ...] = (1, 2, 5, 10, 30, 60, 120, 300, 600)
UNROUTED_MAX_LENGTH = 100_000
DEAD_LETTER_MAX_LENGTH = 100_000


@dataclass(frozen=True, slots=True)
class QueueSpec:
    name: str
    arguments: dict[str, object] = field(default_factory=dict)
    bindings: tuple[tuple[str, str], ...] = ()  # (exchange, routing key)
    purpose: str = ""
    # Arguments of earlier versions of this queue that the service still works with: a queue
    # found with one of them is adopted (with a warning) instead of stopping start-up.
    adoptable: tuple[dict[str, object], ...] = ()


@dataclass(frozen=True, slots=True)
class Topology:
    hub_exchange: str
    dead_letter_exchange: str
    work: QueueSpec
    dead: QueueSpec
    unrouted: QueueSpec
    delays: tuple[tuple[int, QueueSpec], ...]

    @property
    def queues(self) -> tuple[QueueSpec, ...]:
        return (self.work, self.dead, self.unrouted, *(q for _, q in self.delays))

    def delay_queue_for(self, seconds: float) -> tuple[int, QueueSpec]:
        """The shortest delay queue that waits at least `seconds` (the longest one past that)."""
        for step, queue in self.delays:
            if step >= seconds:
                return step, queue
        return self.delays[-1]

    def control_queue(self, instance_id: str) -> QueueSpec:
        """Every instance gets control events: a running job lives on one replica only."""
        return QueueSpec(
            name=f"{self.work.name}.control.{instance_id}",
            bindings=tuple((self.hub_exchange, t) for t in sorted(CONTROL_TYPES)),
            purpose="control events for one instance (exclusive, auto-delete)",
        )


def build_topology(prefix: str, hub_exchange: str, *,
                   dead_letter_max_length: int = DEAD_LETTER_MAX_LENGTH) -> Topology:
    dlx = f"{prefix}dlx"
    work_name = f"{prefix}requests"
    delays = tuple(
        (
            step,
            QueueSpec(
                name=f"{prefix}delay.{step}s",
                arguments={
                    "x-message-ttl": step * 1000,
                    "x-dead-letter-exchange": "",
                    "x-dead-letter-routing-key": work_name,
                },
                purpose=f"retry copies wait {step}s, then return to {work_name}",
            ),
        )
        for step in DELAY_STEPS_S
    )
    return Topology(
        hub_exchange=hub_exchange,
        dead_letter_exchange=dlx,
        work=QueueSpec(
            name=work_name,
            arguments={"x-max-priority": MAX_PRIORITY, "x-dead-letter-exchange": dlx},
            bindings=tuple((hub_exchange, t) for t in sorted(REQUEST_TYPES)),
            purpose="content.requested and image.requested, by priority",
        ),
        dead=QueueSpec(
            name=f"{prefix}dead",
            arguments={"x-max-length": dead_letter_max_length, "x-overflow": "reject-publish"},
            bindings=((dlx, "#"),),
            purpose="dead letters, with x-error-code and x-error-message headers; "
                    "when full, dead letters are parked in the longest delay queue",
            # Earlier versions declared it without a bound: such a queue keeps working, unbounded.
            adoptable=({},),
        ),
        unrouted=QueueSpec(
            name=f"{prefix}unrouted",
            arguments={"x-max-length": UNROUTED_MAX_LENGTH, "x-overflow": "drop-head"},
            purpose="events the hub could route to no queue, kept for replay",
        ),
        delays=delays,
    )
