"""A TCP forwarder in the test process, to take a server away and give it back without stopping it.

`Forwarder(host, port)` listens on 127.0.0.1 (a port of its own) and pipes every connection to
`host:port`. `cut()` is an outage as a client sees one: every connection open through it is
closed at once and new ones are refused (nothing listens on its port) until `restore()`, which
listens on the same port again. The server behind it, shared with others, never notices more
than its clients going away.
"""

import asyncio
import contextlib
from types import TracebackType
from typing import Self
from urllib.parse import urlsplit, urlunsplit

CHUNK_BYTES = 65_536


class Forwarder:
    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._pipes: set[asyncio.Task[None]] = set()
        self.port = 0
        self._flowing = asyncio.Event()  # cleared: connections stay open and carry nothing (a hung network)
        self._flowing.set()
        self.connections = 0  # accepted since the start, for tests that check the client came back

    async def __aenter__(self) -> Self:
        await self.restore()
        return self

    async def __aexit__(self, *exc_info: type[BaseException] | BaseException | TracebackType | None) -> None:
        await self.cut()

    @property
    def up(self) -> bool:
        return self._server is not None

    def url(self, url: str) -> str:
        """`url` (a database's) with its host and port this forwarder's: its user and password kept."""
        parts = urlsplit(url)
        credentials, _, _ = parts.netloc.rpartition("@")
        netloc = f"{credentials}@127.0.0.1:{self.port}" if credentials else f"127.0.0.1:{self.port}"
        return urlunsplit(parts._replace(netloc=netloc))

    def stall(self) -> None:
        """Keep every connection open but carry nothing either way, as a hung server or network does."""
        self._flowing.clear()

    async def restore(self) -> None:
        """Listen (again, on the same port once it has one) and forward each connection."""
        self._flowing.set()
        if self._server is None:
            self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
            self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        """Refuse new connections and close every open one, as a server gone or a network down does."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for writer in list(self._writers):
            writer.transport.abort()  # a reset, not a polite close: nothing more is read or sent
        for pipe in list(self._pipes):
            pipe.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)
        if server is not None:
            await server.wait_closed()

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        if self._server is None:
            client_writer.transport.abort()
            return
        try:
            server_reader, server_writer = await asyncio.open_connection(*self._target)
        except OSError:
            client_writer.transport.abort()
            return
        self.connections += 1
        self._writers.update((client_writer, server_writer))
        pipes = {
            asyncio.create_task(self._pipe(client_reader, server_writer)),
            asyncio.create_task(self._pipe(server_reader, client_writer)),
        }
        self._pipes.update(pipes)
        try:
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pipe in pipes:
                pipe.cancel()
            await asyncio.gather(*pipes, return_exceptions=True)
            self._pipes.difference_update(pipes)
            for writer in (client_writer, server_writer):
                self._writers.discard(writer)
                writer.transport.abort()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await reader.read(CHUNK_BYTES):
                await self._flowing.wait()
                writer.write(data)
                await writer.drain()
