"""The service's Redis client packs commands in C (hiredis), as redis-py's synchronous client
does: the same bytes as redis-py's Python packer for any argument it accepts, the same error for
one it refuses; a TLS URL keeps its TLS connection."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.asyncio.connection import Connection, SSLConnection
from redis.exceptions import DataError

from llm_consumer.store.client import open_redis
from llm_consumer.store.packing import (
    PackedConnection,
    PackedSentinelConnection,
    PackedSentinelSSLConnection,
    sentinel_packing_options,
)
from tests.conftest import REDIS_URL

ARGUMENT = st.one_of(st.text(), st.binary(), st.integers(), st.floats(allow_nan=False),
                     st.floats(allow_nan=False).map(lambda f: -f),
                     st.binary().map(bytearray), st.binary().map(memoryview))


def wire(connection: Connection, *args: object) -> bytes:
    return b"".join(connection.pack_command(*args))  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(command=st.sampled_from(["EVALSHA", "SET", "HSET", b"GET", "SCRIPT LOAD", b"CLIENT ID"]),
       args=st.lists(ARGUMENT, max_size=60))
def test_the_same_bytes_as_redis_pys_packer(command: str | bytes, args: list[object]) -> None:
    assert wire(PackedConnection(), command, *args) == wire(Connection(), command, *args)


@pytest.mark.parametrize("value", [None, True, object()])
def test_a_value_redis_cannot_take_is_a_data_error_as_before(value: object) -> None:
    for connection in (Connection(), PackedConnection()):
        with pytest.raises(DataError):
            wire(connection, "SET", "key", value)


def test_the_client_of_each_url_packs_in_c_and_keeps_tls() -> None:
    plain = open_redis(REDIS_URL, "standalone")
    tls = open_redis("rediss://127.0.0.1:6379/0", "standalone")
    assert plain.connection_pool.connection_class is PackedConnection
    assert tls.connection_pool.connection_class is SSLConnection, "TLS stays TLS"
    assert sentinel_packing_options(tls=False) == {"connection_class": PackedSentinelConnection}
    assert sentinel_packing_options(tls=True) == {"connection_class": PackedSentinelSSLConnection}


async def test_a_script_gets_every_argument_as_sent() -> None:
    redis = open_redis(REDIS_URL, "standalone")
    key = f"test-packing:{uuid.uuid4().hex}"
    echo = redis.register_script("return {KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]}")
    try:
        answer = await echo(keys=[key], args=["dé jà", b"\x00\xff\r\n", -12, 0.1, 2**70])
    finally:
        await redis.aclose()
    assert answer == [key.encode(), "dé jà".encode(), b"\x00\xff\r\n", b"-12", b"0.1",
                      str(2**70).encode()]
