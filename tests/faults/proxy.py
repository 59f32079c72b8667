"""A TCP fault proxy for one upstream (the broker), in the test's event loop.

    proxy = FaultProxy("127.0.0.1", 5672); await proxy.start()
    url = proxy.url("amqp://guest:guest@127.0.0.1:5672/?heartbeat=2")
    proxy.blackhole(); ...; proxy.heal()      # or proxy.reset()

Modes:
- pass: bytes flow both ways;
- blackhole: sockets stay open and nothing moves either way (the proxy stops reading, so the
  peers' writes pile up in the kernel as behind a dead link); a new connection is accepted and
  then hangs the same way; `heal()` lets whatever was held through;
- reset: every open connection is cut with a TCP reset, and new ones are refused the same way
  until `heal()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

Mode = Literal["pass", "blackhole", "reset"]
CHUNK = 65536


@dataclass(eq=False)
class _Link:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def abort(self) -> None:
        for writer in (self.client, self.upstream):
            if writer is not None:
                _reset(writer)


class FaultProxy:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.mode: Mode = "pass"
        self.accepted = 0
        self.resets = 0
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._links: set[_Link] = set()
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    def url(self, url: str) -> str:
        """`url` with its host and port replaced by the proxy's."""
        parts = urlsplit(url)
        credentials = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
        return urlunsplit(parts._replace(netloc=f"{credentials}127.0.0.1:{self.port}"))

    @property
    def open_links(self) -> int:
        return len(self._links)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self._flowing.set()
        for link in list(self._links):
            link.abort()
            for task in link.tasks:
                task.cancel()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
            self._server = None

    # -- the knobs

    def blackhole(self) -> None:
        self.mode = "blackhole"
        self._flowing.clear()

    def reset(self) -> None:
        self.mode = "reset"
        self._flowing.set()  # held pipes wake up and find their sockets gone
        for link in list(self._links):
            link.abort()
            self.resets += 1

    def heal(self) -> None:
        self.mode = "pass"
        self._flowing.set()

    # -- the pipes

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        link = _Link(writer)
        self._links.add(link)
        try:
            await self._flowing.wait()  # behind a blackhole the connection just hangs
            if self.mode == "reset":
                return
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
            link.upstream = up_writer
            link.tasks = [asyncio.create_task(self._pipe(reader, up_writer)),
                          asyncio.create_task(self._pipe(up_reader, writer))]
            await asyncio.wait(link.tasks, return_when=asyncio.FIRST_COMPLETED)
        except OSError:
            pass
        finally:
            self._links.discard(link)
            for task in link.tasks:
                task.cancel()
            if self.mode == "reset":
                link.abort()
            else:
                for side in (link.client, link.upstream):
                    if side is not None:
                        side.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while True:
                await self._flowing.wait()
                data = await reader.read(CHUNK)
                if not data:
                    return
                await self._flowing.wait()  # read before the blackhole fell: held until heal
                if self.mode == "reset" or writer.is_closing():
                    return
                writer.write(data)
                await writer.drain()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST rather than FIN, as a cut connection looks to its peer."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
