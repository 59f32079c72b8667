"""The broker objects the service owns, as frozen data declared idempotently at start-up.

Retries go through a few fixed-TTL delay queues (RabbitMQ expires messages only at a queue's
head, so mixed per-message TTLs in one queue would block each other). Expired copies are
dead-lettered straight back to the work queue through the default exchange, not to the hub:
other services bound to `content.requested` must not see our retries as new requests.

The dead-letter queue is bounded with `reject-publish`: when it is full the broker refuses a dead
letter (a nack) instead of dropping the oldest one, and the publisher parks it (bus/publisher.py).

QUEUE_TYPE=quorum makes every durable queue a quorum queue (replicated on a cluster, a message is
confirmed once a majority holds it). Then: `x-delivery-limit` dead-letters a message delivered
that many times without an ack (a poison message that crashes the consumer ends in the
dead-letter queue instead of looping), dead-lettering is `at-least-once` (which RabbitMQ allows
only with `x-overflow: reject-publish`), and the delay queues keep their per-queue message TTL.
Quorum queues on RabbitMQ 3.x have no priorities (`x-max-priority` is refused): the work queue
is then FIFO, see docs/cluster.md. Per-instance control queues stay exclusive
classic queues: they live and die with one connection.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from llm_consumer.events.catalog import CONTROL_TYPES, REQUEST_TYPES

MAX_PRIORITY = 9
DELAY_STEPS_S: tuple[int, ...] = (1, 2, 5, 10, 30, 60, 120, 300, 600)
UNROUTED_MAX_LENGTH = 100_000
DEAD_LETTER_MAX_LENGTH = 100_000
DELIVERY_LIMIT = 5
INDEX_MAX_LENGTH = 10_000
INDEX_TTL_S = 3600
QueueType = Literal["classic", "quorum"]
# Arguments that only say how a queue is replicated or how poison messages end: a queue the
# operator declared with other values of these (a quorum queue where the service would declare
# a classic one, another delivery limit) is adopted with a warning.
REPLICATION_ARGUMENTS = frozenset({
    "x-queue-type", "x-delivery-limit", "x-dead-letter-strategy", "x-quorum-initial-group-size",
    "x-max-priority", "x-overflow", "x-max-in-memory-length", "x-max-in-memory-bytes",
})


@dataclass(frozen=True, slots=True)
class QueueSpec:
    name: str
    arguments: dict[str, object] = field(default_factory=dict)
    bindings: tuple[tuple[str, str], ...] = ()  # (exchange, routing key)
    purpose: str = ""
    # Arguments of earlier versions of this queue that the service still works with: a queue
    # found with one of them is adopted (with a warning) instead of stopping start-up.
    adoptable: tuple[dict[str, object], ...] = ()
    # Argument names whose difference alone is adopted (see REPLICATION_ARGUMENTS).
    tolerated: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Topology:
    hub_exchange: str
    dead_letter_exchange: str
    work: QueueSpec
    dead: QueueSpec
    unrouted: QueueSpec
    delays: tuple[tuple[int, QueueSpec], ...]
    index: QueueSpec | None = None  # copies of every request, for queue.status (QUEUE_INDEX)

    @property
    def queues(self) -> tuple[QueueSpec, ...]:
        index = (self.index,) if self.index is not None else ()
        return (self.work, self.dead, self.unrouted, *(q for _, q in self.delays), *index)

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


def replicated(queue_type: QueueType, delivery_limit: int, *,
               dead_letters: bool) -> dict[str, object]:
    """The arguments QUEUE_TYPE adds to a durable queue (none for classic)."""
    if queue_type == "classic":
        return {}
    found: dict[str, object] = {"x-queue-type": "quorum", "x-delivery-limit": delivery_limit}
    if dead_letters:  # at-least-once dead-lettering needs reject-publish on the source queue
        found |= {"x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"}
    return found


def build_topology(prefix: str, hub_exchange: str, *,
                   dead_letter_max_length: int = DEAD_LETTER_MAX_LENGTH,
                   queue_type: QueueType = "classic",
                   delivery_limit: int = DELIVERY_LIMIT, index: bool = True,
                   index_max_length: int = INDEX_MAX_LENGTH,
                   index_ttl_s: int = INDEX_TTL_S) -> Topology:
    dlx = f"{prefix}dlx"
    work_name = f"{prefix}requests"
    quorum = queue_type == "quorum"

    def with_dead_letters() -> dict[str, object]:
        return replicated(queue_type, delivery_limit, dead_letters=True)

    def without_dead_letters() -> dict[str, object]:
        return replicated(queue_type, delivery_limit, dead_letters=False)

    delays = tuple(
        (
            step,
            QueueSpec(
                name=f"{prefix}delay.{step}s",
                arguments={
                    "x-message-ttl": step * 1000,
                    "x-dead-letter-exchange": "",
                    "x-dead-letter-routing-key": work_name,
                    **with_dead_letters(),
                },
                purpose=f"retry copies wait {step}s, then return to {work_name}",
                tolerated=REPLICATION_ARGUMENTS,
            ),
        )
        for step in DELAY_STEPS_S
    )
    return Topology(
        hub_exchange=hub_exchange,
        dead_letter_exchange=dlx,
        work=QueueSpec(
            name=work_name,
            arguments={**({} if quorum else {"x-max-priority": MAX_PRIORITY}),
                       "x-dead-letter-exchange": dlx, **with_dead_letters()},
            bindings=tuple((hub_exchange, t) for t in sorted(REQUEST_TYPES)),
            purpose=("content.requested and image.requested, "
                     + ("in arrival order (quorum)" if quorum else "by priority")),
            tolerated=REPLICATION_ARGUMENTS,
        ),
        dead=QueueSpec(
            name=f"{prefix}dead",
            arguments={"x-max-length": dead_letter_max_length, "x-overflow": "reject-publish",
                       **without_dead_letters()},
            bindings=((dlx, "#"),),
            purpose="dead letters, with x-error-code and x-error-message headers; "
                    "when full, dead letters are parked in the longest delay queue",
            # Earlier versions declared it without a bound: such a queue keeps working, unbounded.
            adoptable=({},),
            tolerated=REPLICATION_ARGUMENTS - {"x-overflow"},
        ),
        unrouted=QueueSpec(
            name=f"{prefix}unrouted",
            arguments={"x-max-length": UNROUTED_MAX_LENGTH, "x-overflow": "drop-head",
                       **without_dead_letters()},
            purpose="events the hub could route to no queue, kept for replay",
            tolerated=REPLICATION_ARGUMENTS - {"x-overflow"},
        ),
        delays=delays,
        # The broker fans a copy of each request into it (same bindings as the work queue);
        # the service reads them into its queue index (bus/queue_index.py). Bounded, and a
        # copy older than the index's TTL is of no use.
        index=QueueSpec(
            name=f"{work_name}.index",
            arguments={"x-max-length": index_max_length, "x-overflow": "drop-head",
                       "x-message-ttl": index_ttl_s * 1000, **without_dead_letters()},
            bindings=tuple((hub_exchange, t) for t in sorted(REQUEST_TYPES)),
            purpose="a copy of each request, read into the queue index (queue.status, "
                    "job.prioritize)",
            tolerated=REPLICATION_ARGUMENTS - {"x-overflow"},
        ) if index else None,
    )
