"""Several broker nodes behind one MESSAGE_HUB_URL, and a robust connection that rotates them.

Two spellings name several nodes of one cluster (same credentials and virtual host):
- a comma list of URLs: `amqp://u:p@h1:5672/vhost,amqp://u:p@h2:5672/vhost`
- hosts in one URL: `amqp://u:p@h1:5672,h2:5673,h3/vhost` (a host without a port: 5672, or
  5671 for amqps)

The connection tries the nodes in turn: at start-up until one answers (start-up fails only when
none does), and on every reconnection attempt the next one, so a robust connection whose node
died comes back on a surviving node, and its robust channels restore their queues, bindings and
consumers there by themselves. aio-pika's RobustConnection takes one URL; the subclass below
moves its `url` to the next node before each connection attempt.

Its connections also get a longer write queue than aiormq's (see `widen_write_queue`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import aiormq.connection
from aio_pika.abc import AbstractRobustConnection
from aio_pika.exceptions import CONNECTION_EXCEPTIONS
from aio_pika.robust_connection import RobustConnection
from yarl import URL

_COMPACT = re.compile(r"^(?P<scheme>amqps?)://(?:(?P<userinfo>[^@/]*)@)?(?P<hosts>[^/?#]*)"
                      r"(?P<rest>[/?#].*)?$")
_HOST = re.compile(r"^(?P<host>\[[0-9a-fA-F:.]+\]|[A-Za-z0-9._-]+)(?::(?P<port>\d{1,5}))?$")


# Frames (publishes, acks) a connection holds for its writer task; aiormq's own is 10.
WRITE_QUEUE_FRAMES = 4096


def widen_write_queue(frames: int = WRITE_QUEUE_FRAMES) -> None:
    """Give the connections made from now on a write queue of `frames`.

    aiormq hands every outgoing frame of a connection to its writer task through a queue of
    `Connection.FRAME_BUFFER_SIZE` (10) frames. A publish that finds it full waits there while
    holding its channel's lock, so every publish behind it on that channel waits too, and the
    writer takes one frame per turn of the event loop from them. With hundreds of requests in
    flight a turn takes milliseconds: at 64 in flight, a `job.status` notice took 50-100 ms to
    leave, and the full path ran at two thirds of the rate it reaches without the wait. The
    frames are bytes already built, and results still wait for the broker's confirms, so a
    longer queue only lets the writer take what is ready. aiormq.connect takes no size for it,
    hence its class constant."""
    if frames > aiormq.connection.Connection.FRAME_BUFFER_SIZE:
        aiormq.connection.Connection.FRAME_BUFFER_SIZE = frames


class InvalidNodes(ValueError):
    """MESSAGE_HUB_URL names no usable node; the message says why in a few words."""


def parse_nodes(value: str) -> tuple[str, ...]:
    """Every node's URL, in the order given (one URL for a single node)."""
    text = value.strip()
    parts = [p.strip() for p in text.split(",")]
    if len(parts) > 1 and all(p.startswith(("amqp://", "amqps://")) for p in parts):
        return tuple(_node(p) for p in parts)
    compact = _COMPACT.match(text)
    if compact is None:
        raise InvalidNodes("must be an amqp:// or amqps:// URL (several nodes: a comma list "
                           "of URLs, or amqp://user:pass@host1:port1,host2:port2/vhost)")
    scheme, rest = compact["scheme"], compact["rest"] or "/"
    userinfo = f"{compact['userinfo']}@" if compact["userinfo"] is not None else ""
    default_port = 5671 if scheme == "amqps" else 5672
    nodes = []
    for host in compact["hosts"].split(","):
        found = _HOST.match(host.strip())
        if found is None:
            raise InvalidNodes(f"has an invalid host {host.strip()!r}")
        port = int(found["port"] or default_port)
        if not 0 < port < 65536:
            raise InvalidNodes(f"has an invalid port number {port} for {found['host']}")
        nodes.append(_node(f"{scheme}://{userinfo}{found['host']}:{port}{rest}"))
    return tuple(nodes)


def _node(url: str) -> str:
    parsed = URL(url)
    if parsed.scheme not in ("amqp", "amqps") or not parsed.host:
        raise InvalidNodes(f"has an invalid node URL {parsed.with_password(None)!s}")
    return url


class RoundRobinConnection(RobustConnection):
    """A RobustConnection that connects to the next node on every attempt."""

    def __init__(self, urls: Sequence[str], *, first: int = 0, **kwargs: Any) -> None:
        super().__init__(URL(urls[first % len(urls)]), **kwargs)
        self.nodes = tuple(URL(u) for u in urls)
        self._next = first

    async def _RobustConnection__connect_transport(self) -> None:
        """Each (re)connection attempt goes to the next node."""
        self.url = self.nodes[self._next % len(self.nodes)]
        self._next += 1
        await getattr(RobustConnection, "_RobustConnection__connect_transport")(self)  # noqa: B009


async def connect_nodes(urls: Sequence[str], *, timeout_s: float = 10,
                        **kwargs: Any) -> AbstractRobustConnection:
    """A robust connection to the first node that answers; the last error when none does."""
    widen_write_queue()
    failure: BaseException | None = None
    for first in range(len(urls)):
        connection = RoundRobinConnection(urls, first=first, **kwargs)
        try:
            await connection.connect(timeout=timeout_s)
        except (*CONNECTION_EXCEPTIONS, TimeoutError) as error:
            failure = error
            await connection.close()
            continue
        return connection
    assert failure is not None
    raise failure
