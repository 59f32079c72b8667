"""The Redis client of each REDIS_MODE, and the start-up check that the mode fits the server.

- `standalone`: REDIS_URL is one server (`redis://[user:pass@]host:port/db`).
- `cluster`: REDIS_URL names one or more seed nodes of a Redis Cluster
  (`redis://[user:pass@]h1:7000,h2:7001`); redis-py's RedisCluster learns the slots from them,
  follows MOVED/ASK, and after a master fails over re-learns the slots and goes on with the
  promoted replica. Scripts run where their keys' hash tag lives (keys.py).
- `sentinel`: REDIS_URL names the sentinels (`redis://[user:pass@]s1:26379,s2:26379/db`) and
  REDIS_SENTINEL_MASTER the monitored master; every new connection asks the sentinels where the
  master is, so a failover is followed without a restart. The credentials are the master's.

A mode that does not fit the server (standalone against a cluster node, whose keys of other
slots answer MOVED; cluster against a plain server) stops start-up with one line
(`RedisMisconfigured`), instead of running "degraded" for ever.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, TypeAlias, cast
from urllib.parse import unquote

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from llm_consumer.store.packing import packing_options, sentinel_packing_options

MIN_CONNECTIONS = 256
RedisClient: TypeAlias = aioredis.Redis | RedisCluster
RedisMode = Literal["standalone", "cluster", "sentinel"]

_URL = re.compile(r"^(?P<scheme>rediss?)://(?:(?P<userinfo>[^@/]*)@)?(?P<hosts>[^/?#]+)"
                  r"(?:/(?P<db>\d*))?$")


class RedisMisconfigured(Exception):
    """REDIS_MODE does not fit the server at REDIS_URL; the message is one line."""


@dataclass(frozen=True, slots=True)
class RedisNodes:
    hosts: tuple[tuple[str, int], ...]
    username: str | None
    password: str | None
    db: int
    tls: bool


def parse_nodes(url: str, default_port: int = 6379) -> RedisNodes:
    """The hosts of a comma list URL (cluster seeds, or sentinels); ValueError when unreadable."""
    found = _URL.match(url.strip())
    if found is None:
        raise ValueError("must be redis://[user:pass@]host:port[,host:port...][/db]")
    username = password = None
    if found["userinfo"]:
        user, _, secret = found["userinfo"].partition(":")
        username, password = unquote(user) or None, unquote(secret) or None
    hosts = []
    for part in found["hosts"].split(","):
        host, _, port = part.strip().rpartition(":") if ":" in part else (part.strip(), "", "")
        if not host or (port and not port.isdigit()):
            raise ValueError(f"has an invalid node {part.strip()!r}")
        hosts.append((host, int(port or default_port)))
    return RedisNodes(tuple(hosts), username, password, int(found["db"] or 0),
                      found["scheme"] == "rediss")


def reconnecting() -> Retry:
    """A command on a pooled connection the server closed (it restarted, or failed over) is
    sent again on a new connection, a few times within ~0.1 s; a time-out is not retried (a
    hanging server is the degraded mode's to handle, without waiting it out again)."""
    return Retry(ExponentialBackoff(cap=0.1, base=0.01), 3,
                 supported_errors=(RedisConnectionError,))


def open_redis(url: str, mode: RedisMode, *, sentinel_master: str = "mymaster",
               timeout_s: float = 5.0, max_connections: int | None = None,
               concurrency: int = 1024) -> RedisClient:
    """The client of `mode`, with a pool of `max_connections` per server (unless given: 2 x
    `concurrency`, and at least MIN_CONNECTIONS for what runs beside the requests: heartbeats,
    the queue index, batches, control events). redis-py's pools refuse a command once all are
    busy ("Too many connections"; 100 by default), and under a thousand requests in flight
    that read as Redis being down: the cache and shared limits went off. A request has at most
    two commands out at once, and connections are opened only as they are needed. (redis-py's
    blocking pool would queue instead, but its lock and time-out cost 30-40 µs more CPU per
    command.)"""
    ceiling = max_connections or max(MIN_CONNECTIONS, 2 * concurrency)
    if mode == "standalone":
        return aioredis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                 retry=reconnecting(), max_connections=ceiling,
                                 **packing_options(url))
    nodes = parse_nodes(url, 26379 if mode == "sentinel" else 6379)
    if mode == "cluster":
        return RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in nodes.hosts],
                            username=nodes.username, password=nodes.password, ssl=nodes.tls,
                            socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                            max_connections=ceiling)
    sentinel = Sentinel(list(nodes.hosts), socket_timeout=timeout_s,  # type: ignore[no-untyped-call]
                        socket_connect_timeout=timeout_s)
    client = cast(SentinelMaster, sentinel.master_for(
        sentinel_master, redis_class=SentinelMaster, username=nodes.username,
        password=nodes.password, db=nodes.db, ssl=nodes.tls, socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s, retry=reconnecting(), max_connections=ceiling,
        **sentinel_packing_options(nodes.tls)))
    client.watchers = sentinel
    return client


class SentinelMaster(aioredis.Redis):
    """The master behind Sentinel; closing it closes the connections to the sentinels too."""

    watchers: Sentinel | None = None  # the sentinels it was found through

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        for peer in self.watchers.sentinels if self.watchers is not None else []:
            await peer.aclose()


async def verify_redis(client: RedisClient, mode: RedisMode, url: str) -> None:
    """Raise RedisMisconfigured when the mode does not fit the server. An unreachable server
    is left to the degraded mode (store/health.py): it may come back."""
    where = _without_password(url)
    try:
        if isinstance(client, RedisCluster):
            await client.initialize()
            return
        info = await client.info("cluster")
    except RedisClusterException as error:
        raise RedisMisconfigured(
            f"REDIS_MODE=cluster, but {where} is not a Redis Cluster ({_line(error)}); "
            "set REDIS_MODE=standalone or sentinel") from None
    except (RedisConnectionError, RedisTimeoutError):
        return
    except ResponseError as error:
        raise RedisMisconfigured(f"Redis at {where} refused the start-up check: "
                                 f"{_line(error)}") from None
    except RedisError as error:  # sentinel: no master known by that name
        raise RedisMisconfigured(f"REDIS_MODE={mode} at {where}: {_line(error)}") from None
    if info.get("cluster_enabled") in (1, "1"):
        raise RedisMisconfigured(
            f"REDIS_MODE={mode}, but {where} is a Redis Cluster node (keys of other slots "
            "would answer MOVED); set REDIS_MODE=cluster")


def misconfiguration(error: RedisError) -> str | None:
    """One line when `error` says the key layout does not fit the server (MOVED, ASK,
    CROSSSLOT): configuration, not an outage."""
    text = _line(error)
    if isinstance(error, ResponseError) and text.startswith(("MOVED", "ASK", "CROSSSLOT")):
        return (f"Redis answered {text.split()[0]}: REDIS_MODE does not fit the server, or "
                "REDIS_PREFIX splits a script's keys over slots")
    return None


def _line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _without_password(url: str) -> str:
    return re.sub(r"//([^:/@]*):[^@/]*@", r"//\1:***@", url)
