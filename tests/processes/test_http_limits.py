"""The HTTP layer's limits on a real `chatkeep serve`, against clients that misbehave on raw sockets:
a head too large (431), a head or a request body that never ends (closed after header_timeout or
body_timeout), and the clients that must not be hurt: a long streamed reply, keep-alive, pipelining."""

import asyncio
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path

import httpx
import psutil

from tests.support.chats import all_messages, new_chat
from tests.support.fake_openai import FakeOpenAI, Scripted
from tests.support.servers import Server, chatkeep_server
from tests.support.sse import events_of

OFFLINE = {"CHATKEEP_LLM_PROVIDER": "offline"}
QUICK = {"CHATKEEP_HEADER_TIMEOUT": "1", "CHATKEEP_BODY_TIMEOUT": "1"}
HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n"
CLOSED_WITHIN = 4.0  # seconds a 1 s deadline may take to close a connection on a busy test machine
FLOOD_BYTES = 16 * 1024 * 1024  # per connection, at most
FLOOD_CHUNK = 64 * 1024
FLOOD_RSS_GROWTH = 8 * 1024 * 1024  # four connections of 16 MB each held 53 to 80 MB before the limits


async def connect(server: Server) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", server.client.base_url.port)


@asynccontextmanager
async def connection(server: Server) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await connect(server)
    try:
        yield reader, writer
    finally:
        writer.close()
        with suppress(ConnectionError):
            await writer.wait_closed()


async def response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """The status and body of one response (with a Content-Length) read off a raw connection."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    length = re.search(rb"(?im)^content-length: *(\d+)", head)
    body = await reader.readexactly(int(length.group(1))) if length else b""
    return int(head.split(b" ", 2)[1]), body


async def seconds_until_closed(reader: asyncio.StreamReader, started: float) -> float:
    """Seconds from `started` (time.monotonic) until the server closes the connection; fails the
    test when it stays open for CLOSED_WITHIN seconds."""
    try:
        async with asyncio.timeout(max(0.0, started + CLOSED_WITHIN - time.monotonic())):
            while await reader.read(65536):
                pass
    except ConnectionError:  # reset, or a broken pipe seen by a writer of the same connection
        pass
    except TimeoutError:
        raise AssertionError(f"the connection was still open after {CLOSED_WITHIN} s") from None
    return time.monotonic() - started


async def trickle(writer: asyncio.StreamWriter, every: float = 0.2) -> None:
    """A slowloris: a head that never ends, sent a byte every `every` seconds (well within any idle
    timeout) until the server closes the connection."""
    try:
        for byte in HEALTHZ + b"X-Slow: " + b"a" * 1000:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(every)
    except ConnectionError:
        pass


async def test_a_head_over_max_header_bytes_is_refused_with_431_and_one_under_it_served(tmp_path: Path) -> None:
    async with chatkeep_server(OFFLINE, tmp_path / "431.log") as server:
        async with connection(server) as (reader, writer):
            writer.write(HEALTHZ + b"X-Big: " + b"a" * 15_000 + b"\r\n\r\n")
            assert (await response(reader))[0] == 200
        async with connection(server) as (reader, writer):
            writer.write(HEALTHZ + b"X-Big: " + b"a" * 20_000 + b"\r\n\r\n")
            status, body = await response(reader)
            assert status == 431
            assert b"header" in body.lower()
            assert await seconds_until_closed(reader, time.monotonic()) < 1
        async with connection(server) as (reader, writer):  # the second of two pipelined requests
            writer.write(HEALTHZ + b"\r\n" + HEALTHZ + b"X-Big: " + b"a" * 20_000 + b"\r\n\r\n")
            assert [(await response(reader))[0] for _ in range(2)] == [200, 431]
        async with connection(server) as (reader, writer):  # 100 KB of headers in 1 KB lines
            writer.write(HEALTHZ + b"".join(b"X-H%d: %b\r\n" % (n, b"b" * 1000) for n in range(100)) + b"\r\n")
            with suppress(ConnectionResetError):  # the server may close before it has read everything
                assert (await response(reader))[0] == 431
        assert (await server.client.get("/healthz")).status_code == 200


async def _flood(server: Server, line: bytes) -> bool:
    """Whether the server cut a connection off before it had sent FLOOD_BYTES of `line`s in a head."""
    _, writer = await connect(server)
    chunk = line * (FLOOD_CHUNK // len(line))
    try:
        writer.write(HEALTHZ)
        for _ in range(FLOOD_BYTES // len(chunk)):
            writer.write(chunk)
            await writer.drain()
    except ConnectionError:
        return True
    finally:
        writer.transport.abort()
    return False


async def test_header_floods_are_cut_off_and_the_server_memory_stays_bounded(tmp_path: Path) -> None:
    """Two connections send one header that never ends, two send header after header: each would
    send 16 MB; the server cuts them off near 16 KiB, so its memory does not grow with them."""
    async with chatkeep_server(OFFLINE, tmp_path / "flood.log") as server:
        process = psutil.Process(server.process.pid)
        assert (await server.client.get("/healthz")).status_code == 200
        before = peak = process.memory_info().rss
        endless, many = b"X-Endless: " + b"a" * 1024, b"X-Many: " + b"b" * 1014 + b"\r\n"
        floods = [asyncio.create_task(_flood(server, line)) for line in (endless, endless, many, many)]
        async with asyncio.timeout(30):
            while not all(flood.done() for flood in floods):
                await asyncio.wait(floods, timeout=0.05)
                peak = max(peak, process.memory_info().rss)
        assert peak - before < FLOOD_RSS_GROWTH, f"RSS grew by {(peak - before) / 2**20:.0f} MiB"
        assert (await server.client.get("/healthz")).status_code == 200
    assert [flood.result() for flood in floods] == [True] * 4


async def test_a_head_not_sent_whole_within_header_timeout_is_closed_while_healthz_answers(tmp_path: Path) -> None:
    """Ten connections that send nothing and ten that send a head a byte at a time (each byte well
    within any idle timeout) are closed about header_timeout after they opened."""
    async with chatkeep_server(OFFLINE | QUICK, tmp_path / "slowloris.log") as server:
        opened = time.monotonic()
        connections = [await connect(server) for _ in range(20)]
        slow = [asyncio.create_task(trickle(writer)) for _, writer in connections[10:]]
        for _ in range(5):
            assert (await server.client.get("/healthz")).status_code == 200
            await asyncio.sleep(0.1)
        closed = [await seconds_until_closed(reader, opened) for reader, _ in connections]
        assert min(closed) > 0.8
        await asyncio.gather(*slow)
        for _, writer in connections:
            writer.close()
        assert (await server.client.get("/healthz")).status_code == 200


async def test_keep_alive_and_pipelining_work_and_the_next_head_has_header_timeout_from_the_last_response(
    tmp_path: Path,
) -> None:
    server_running = chatkeep_server(OFFLINE | QUICK, tmp_path / "keepalive.log")
    async with server_running as server, connection(server) as (reader, writer):
        for _ in range(3):  # 1.8 s on one connection: the deadline starts again at each response
            writer.write(HEALTHZ + b"\r\n")
            assert (await response(reader))[0] == 200
            await asyncio.sleep(0.6)
        writer.write((HEALTHZ + b"\r\n") * 3)  # pipelined
        assert [(await response(reader))[0] for _ in range(3)] == [200, 200, 200]
        answered = time.monotonic()
        slow = asyncio.create_task(trickle(writer))
        assert await seconds_until_closed(reader, answered) > 0.8
        await slow


async def test_a_request_body_that_stalls_for_body_timeout_is_closed_and_nothing_is_stored(tmp_path: Path) -> None:
    async with chatkeep_server(OFFLINE | QUICK, tmp_path / "body.log") as server:
        chat_id = await new_chat(server.client)

        def request(body: bytes, length: int) -> bytes:
            return (
                f"POST /chats/{chat_id}/messages HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
            ).encode() + body

        stalled = b'{"content": "never finished, never stored'
        async with connection(server) as (reader, writer):
            writer.write(request(stalled[:20], len(stalled) + 100))
            await asyncio.sleep(0.6)
            writer.write(stalled[20:])  # a pause shorter than body_timeout is fine; then it stalls
            assert await seconds_until_closed(reader, time.monotonic()) > 0.8
        slow = b'{"content": "slow but steady"}'
        async with connection(server) as (reader, writer):  # 2.4 s in all, never 1 s without a byte
            writer.write(request(b"", len(slow)))
            for n in range(0, len(slow), 8):
                await asyncio.sleep(0.6)
                writer.write(slow[n : n + 8])
            assert (await response(reader))[0] == 201
        stored = await all_messages(server.client, chat_id)
        assert [m["content"] for m in stored if m["role"] == "user"] == ["slow but steady"]


async def test_a_streamed_reply_longer_than_both_timeouts_completes_while_a_slow_client_is_closed(
    fake_llm: FakeOpenAI, tmp_path: Path
) -> None:
    words = [f"word{n}" for n in range(12)]
    fake_llm.queue(Scripted(content=" ".join(words), chunk_delay=0.25))  # about 3 s
    env = QUICK | {"OPENAI_BASE_URL": fake_llm.url, "OPENAI_API_KEY": "sk-test"}
    async with chatkeep_server(env, tmp_path / "stream.log") as server:
        chat_id = await new_chat(server.client)
        reader, writer = await connect(server)
        opened = time.monotonic()
        slow = asyncio.create_task(trickle(writer))
        closed = asyncio.create_task(seconds_until_closed(reader, opened))
        body = {"content": "a long answer please", "stream": True}
        async with server.client.stream("POST", f"/chats/{chat_id}/messages", json=body) as streamed:
            events = await events_of(streamed.aiter_lines())
        assert time.monotonic() - opened > 2.5
        assert await closed < 2.5
        await slow
        writer.close()
        assert events[-1]["event"] == "assistant_message"
        assert events[-1]["data"]["content"] == " ".join(words)
        assert (await server.client.get("/healthz")).status_code == 200  # the same connection, kept alive


async def test_workers_apply_the_limits_too(tmp_path: Path) -> None:
    env = OFFLINE | QUICK | {"CHATKEEP_STORE": f"sqlite:///{tmp_path / 'workers.db'}"}
    async with chatkeep_server(env, tmp_path / "workers.log", "--workers", "2") as server:
        async with connection(server) as (reader, writer):
            writer.write(HEALTHZ + b"X-Big: " + b"a" * 20_000 + b"\r\n\r\n")
            assert (await response(reader))[0] == 431
        async with connection(server) as (reader, writer):
            opened = time.monotonic()
            writer.write(HEALTHZ)
            assert await seconds_until_closed(reader, opened) > 0.8
        async with httpx.AsyncClient(base_url=str(server.client.base_url)) as fresh:
            assert (await fresh.get("/healthz")).status_code == 200
