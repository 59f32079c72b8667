"""Redis commands packed in C (hiredis) by the asyncio client.

redis-py's synchronous connection packs commands with hiredis when it is installed
(`HiredisRespSerializer`); its asyncio connection always packs them in Python, about a
microsecond per argument. A request sends about a hundred arguments (the rate-limit script
alone takes four keys and four values per scope), and packing took 6% of a worker's CPU at the
platform rate (py-spy). These connection classes pack with hiredis, through redis-py's own
serializer where it has something to convert: the same bytes, and the same DataError for a
value that cannot be sent (tests/store/test_packing.py).

Redis Cluster builds its nodes' connections itself (RedisCluster takes no connection class), and
a `rediss://` standalone URL gets redis-py's TLS connection whatever is asked: both keep the
Python packer.
"""

from __future__ import annotations

from typing import Any, cast

from redis.asyncio.connection import Connection
from redis.asyncio.sentinel import SentinelManagedConnection, SentinelManagedSSLConnection
from redis.connection import HiredisRespSerializer
from redis.typing import EncodableT
from redis.utils import HIREDIS_AVAILABLE

if HIREDIS_AVAILABLE:
    from hiredis import pack_command as _pack_in_c

_SERIALIZER = HiredisRespSerializer()


class _PackedInC:
    def pack_command(self, *args: EncodableT) -> list[bytes]:
        """A one-word command name (every command the service sends) goes to hiredis as it
        is; the serializer first splits a name such as "SCRIPT LOAD", turns bytearray and
        memoryview arguments into bytes and makes hiredis's TypeError redis-py's DataError.
        Skipping those steps when they change nothing halves the time to pack a script call."""
        name = args[0]
        if isinstance(name, str) and " " not in name:
            try:
                return [_pack_in_c(args)]  # type: ignore[arg-type]  # stub: 1-tuple
            except TypeError:
                pass  # the serializer converts the argument, or raises DataError
        # `pack` is annotated `*args: List`; it takes the command's arguments, as here.
        return cast(list[bytes], _SERIALIZER.pack(*args))  # type: ignore[arg-type]


class PackedConnection(_PackedInC, Connection):
    pass


class PackedSentinelConnection(_PackedInC, SentinelManagedConnection):
    pass


class PackedSentinelSSLConnection(_PackedInC, SentinelManagedSSLConnection):
    pass


def packing_options(url: str) -> dict[str, Any]:
    """Client options for a standalone REDIS_URL: its connection class, or none (redis-py's
    choice) without hiredis or for a scheme other than redis:// (for rediss:// redis-py's
    `from_url` sets its TLS connection class over any given, which keeps the Python packer)."""
    scheme = url.strip().split("://", 1)[0].lower()
    return {"connection_class": PackedConnection} if HIREDIS_AVAILABLE and scheme == "redis" \
        else {}


def sentinel_packing_options(tls: bool) -> dict[str, Any]:
    """Client options for a master found through Sentinel (none without hiredis)."""
    if not HIREDIS_AVAILABLE:
        return {}
    return {"connection_class": PackedSentinelSSLConnection if tls else PackedSentinelConnection}
