"""Ports for the servers a test starts itself (RabbitMQ nodes, redis-server, HTTP servers).

A port the kernel hands out for `bind(("127.0.0.1", 0))` comes from its ephemeral range, the
same range every outgoing connection takes its local port from. A server stopped mid-test (a
node killed with -9, a redis-server stopped) and started again on its port can then find that
port taken by one of the many connections made in the meantime - the restart fails with
"address in use". So the ports here come from below the ephemeral range, where the kernel never
puts a client socket, and each is handed out once per session.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOWEST = 10000  # below: well-known and registered services
_handed_out: set[int] = set()


def ephemeral_range() -> tuple[int, int]:
    try:
        low, high = (int(part) for part in _RANGE_FILE.read_text().split())
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default
    return low, high


def _candidates() -> list[int]:
    low, high = ephemeral_range()
    return [*range(_LOWEST, low), *range(high + 1, 65536)]


def bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A free loopback port outside the ephemeral range, not handed out before."""
    candidates = _candidates()
    for _ in range(200):
        if not candidates:
            break
        port = random.choice(candidates)
        if port not in _handed_out and bindable(port):
            _handed_out.add(port)
            return port
    with socket.socket() as sock:  # no room outside the ephemeral range on this machine
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
