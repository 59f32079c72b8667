"""Start-up check of broker objects that may already exist with other arguments.

RabbitMQ refuses to redeclare a queue or an exchange with other arguments (PRECONDITION_FAILED,
which also closes the channel), and its error names only the first argument that differs. To
say everything that differs, the check declares again with the value the broker reported, one
argument at a time and each time on a fresh channel, until the declaration matches. A matching
declaration changes nothing on the broker.

The outcome for each object is one of: it matches (or did not exist and is now declared); it is
adopted, with a warning, because the difference is known to be harmless; or start-up stops with
one `TopologyConflict` line naming the object, what it has and what the service expects.
Adopted: a queue found with one of its spec's `adoptable` argument sets (the unbounded
dead-letter queue of earlier versions), a queue that differs only in how it is replicated or
ends poison messages (its spec's `tolerated` arguments: an operator's pre-declared quorum queue,
another delivery limit), never one that is less replicated than QUEUE_TYPE asks (a classic
queue where quorum is wanted), and an exchange whose type and flags match but whose
arguments differ (for example a platform hub with an `alternate-exchange`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Literal

import aio_pika
import structlog
from aio_pika.abc import AbstractChannel, AbstractConnection
from aiormq.exceptions import (
    ChannelAccessRefused,
    ChannelLockedResource,
    ChannelPreconditionFailed,
)

from llm_consumer.bus.topology import QueueSpec, Topology

log = structlog.get_logger(__name__)

FLAGS = ("type", "durable", "auto_delete", "internal", "exclusive")
MAX_PROBES = 24  # more than the arguments RabbitMQ compares
_INEQUIVALENT = re.compile(
    r"inequivalent arg '(?P<arg>[^']+)' for (?:queue|exchange) '.*?' in vhost '.*?': "
    r"received (?P<received>.+?) but current is (?P<current>.+)$")
_INVALID = re.compile(r"invalid arg '(?P<arg>[^']+)' for queue '.*?' in vhost '.*?' of queue type")
_VALUE = re.compile(r"^(?:the value '(?P<typed>.*)' of type '(?P<type>[^']+)'|'(?P<plain>.*)')$")
_INT_TYPES = frozenset({"byte", "short", "signedint", "long", "unsignedbyte", "unsignedshort",
                        "unsignedint", "long_uint", "timestamp"})


class TopologyConflict(Exception):
    """A broker object exists in a form the service cannot use; the message is one line."""


@dataclass(frozen=True, slots=True)
class Declaration:
    """One queue or exchange as the service declares it: its flags and arguments."""

    kind: Literal["queue", "exchange"]
    name: str
    setting: str  # the setting that names it, offered as a way out of a conflict
    flags: dict[str, object]
    arguments: dict[str, object]
    adoptable: tuple[dict[str, object], ...] = field(default=())
    tolerated: frozenset[str] = field(default=frozenset())

    def with_value(self, name: str, value: object) -> Declaration:
        target = dict(self.flags if name in FLAGS else self.arguments)
        if value is None:
            target.pop(name, None)
        else:
            target[name] = value
        if name in FLAGS:
            return replace(self, flags=target)
        return replace(self, arguments=target)

    def value(self, name: str) -> object:
        return (self.flags if name in FLAGS else self.arguments).get(name)


@dataclass(frozen=True, slots=True)
class Difference:
    name: str
    found: object  # None: not set on the existing object
    expected: object  # None: the service does not set it


def declarations(topology: Topology) -> list[Declaration]:
    """Every exchange and durable queue the service owns, in declaration order."""
    topic = {"type": "topic", "durable": True}
    found = [Declaration("exchange", topology.hub_exchange, "HUB_EXCHANGE", topic, {}),
             Declaration("exchange", topology.dead_letter_exchange, "QUEUE_PREFIX", topic, {})]
    found.extend(_queue(spec) for spec in topology.queues)
    return found


def _queue(spec: QueueSpec) -> Declaration:
    return Declaration("queue", spec.name, "QUEUE_PREFIX", {"durable": True},
                       dict(spec.arguments), spec.adoptable, spec.tolerated)


async def check_topology(connection: AbstractConnection, topology: Topology) -> frozenset[str]:
    """Declare every object once on a plain channel; return the names of adopted objects.
    Raises TopologyConflict for an object that exists in a form the service cannot use."""
    adopted: set[str] = set()
    channels = _ScratchChannels(connection)
    try:
        for wanted in declarations(topology):
            differences = await _differences(channels, wanted)
            if not differences:
                continue
            if not _adoptable(wanted, differences):
                raise TopologyConflict(describe(wanted, differences))
            log.warning("topology.adopted", object=wanted.kind, name=wanted.name,
                        differences=describe(wanted, differences))
            adopted.add(wanted.name)
    finally:
        await channels.close()
    return frozenset(adopted)


async def _differences(channels: _ScratchChannels, wanted: Declaration) -> list[Difference]:
    """Declare `wanted`; while the broker refuses, learn the value it reported and retry."""
    trying = wanted
    differences: list[Difference] = []
    for _ in range(MAX_PROBES):
        channel = await channels.get()
        try:
            await _declare(channel, trying)
            return differences
        except ChannelPreconditionFailed as error:
            text = _reply_text(error)
            found = _reported(text, trying)
            if found is None or found[0] in {d.name for d in differences}:
                raise TopologyConflict(f"{wanted.kind} '{wanted.name}' cannot be declared: "
                                       f"{text}") from None
            name, value = found
            differences.append(Difference(name, value, wanted.value(name)))
            trying = trying.with_value(name, value)
        except (ChannelAccessRefused, ChannelLockedResource) as error:
            raise TopologyConflict(f"{wanted.kind} '{wanted.name}' cannot be declared: "
                                   f"{_reply_text(error)}") from None
    raise TopologyConflict(f"{wanted.kind} '{wanted.name}' already exists with other arguments "
                           f"(more than {MAX_PROBES} differences)")


def _adoptable(wanted: Declaration, differences: Iterable[Difference]) -> bool:
    names = {d.name for d in differences}
    if names & set(FLAGS):
        return False
    if wanted.kind == "exchange":
        return True
    if _tolerated(wanted, differences):
        return True
    found = dict(wanted.arguments)
    for difference in differences:
        found.pop(difference.name, None)
        if difference.found is not None:
            found[difference.name] = difference.found
    return found in wanted.adoptable


def _tolerated(wanted: Declaration, differences: Iterable[Difference]) -> bool:
    """Only replication arguments differ, and the queue found is a quorum queue whenever the
    service wants one (a classic queue found then would silently drop the replication)."""
    found = list(differences)
    if not found or any(d.name not in wanted.tolerated for d in found):
        return False
    return all(d.found == "quorum" for d in found
               if d.name == "x-queue-type" and d.expected == "quorum")


def describe(wanted: Declaration, differences: list[Difference]) -> str:
    """One line: the object, what it has, what the service declares, and the ways out."""
    ordered = sorted(differences, key=lambda d: d.name)
    has = ", ".join(f"{d.name} {_shown(d.name, d.found, wanted.kind)}" for d in ordered)
    # Every argument the service sets, and whatever else differs (a flag, an argument it omits)
    named = sorted({*wanted.arguments, *(d.name for d in differences)})
    expects = ", ".join(f"{name} {_shown(name, wanted.value(name), wanted.kind)}"
                        for name in named)
    return (f"{wanted.kind} '{wanted.name}' already exists with other arguments: it has {has}; "
            f"the service declares {expects} (delete it once it is drained, or set another "
            f"{wanted.setting})")


def _shown(name: str, value: object, kind: str) -> str:
    if value is None:
        return "classic" if (name, kind) == ("x-queue-type", "queue") else "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return f"'{value}'"


def _reported(text: str, trying: Declaration) -> tuple[str, object] | None:
    """(argument, its current value) from the broker's refusal; None when unreadable."""
    invalid = _INVALID.search(text)
    if invalid:  # not valid for the existing queue's type, so that queue does not have it
        return invalid["arg"], None
    inequivalent = _INEQUIVALENT.search(text)
    if inequivalent is None:
        return None
    name = inequivalent["arg"]
    return name, _parse_value(inequivalent["current"], like=trying.value(name))


def _parse_value(shown: str, *, like: object) -> object:
    """A value as RabbitMQ prints it: none, 'v', or the value 'v' of type 't'."""
    if shown == "none":
        return None
    match = _VALUE.match(shown)
    if match is None:
        return shown
    kind = match["type"]
    value = match["typed"] if kind is not None else match["plain"]
    if kind == "bool" or (kind is None and isinstance(like, bool)):
        return value == "true"
    wants_int = kind in _INT_TYPES or (kind is None and isinstance(like, int))
    if wants_int and re.fullmatch(r"-?\d+", value):
        return int(value)
    if kind in ("double", "float"):
        return float(value)
    return value


async def _declare(channel: AbstractChannel, wanted: Declaration) -> None:
    arguments = dict(wanted.arguments)
    if wanted.kind == "exchange":
        await channel.declare_exchange(
            wanted.name, str(wanted.flags.get("type", "topic")),
            durable=bool(wanted.flags.get("durable")),
            auto_delete=bool(wanted.flags.get("auto_delete")),
            internal=bool(wanted.flags.get("internal")),
            arguments=arguments)  # type: ignore[arg-type]
    else:
        # A learnt form is only ever declared on an object that exists, so nothing is created
        # (unless it was deleted in the meantime, between two declarations).
        await channel.declare_queue(
            wanted.name, durable=bool(wanted.flags.get("durable")),
            auto_delete=bool(wanted.flags.get("auto_delete")),
            exclusive=bool(wanted.flags.get("exclusive")),
            arguments=arguments)  # type: ignore[arg-type]


def _reply_text(error: Exception) -> str:
    text = str(error.args[0]) if error.args else str(error)
    return " ".join(text.split())


class _ScratchChannels:
    """Plain (not robust) channels on the service's connection, one until the broker closes it:
    a robust channel would reopen by itself, and restore the refused declaration later."""

    def __init__(self, connection: AbstractConnection) -> None:
        self._connection = connection
        self._channel: aio_pika.Channel | None = None

    async def get(self) -> AbstractChannel:
        if self._channel is None or self._channel.is_closed:
            self._channel = aio_pika.Channel(self._connection, publisher_confirms=False)
            await self._channel.initialize()
        return self._channel

    async def close(self) -> None:
        if self._channel is not None and not self._channel.is_closed:
            await self._channel.close()
