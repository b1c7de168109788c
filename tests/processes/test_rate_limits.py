"""`CHATKEEP_RATE_LIMIT` on PostgreSQL, counted by real `chatkeep serve` processes that lease
slots in blocks (rate_limit.py): together they never admit more than the limit in a window,
and most turns write nothing to the database for it."""

import asyncio
from contextlib import AsyncExitStack
from pathlib import Path

import asyncpg
import httpx

from tests.support.chats import new_chat, post
from tests.support.servers import chatkeep_server
from tests.support.stores import fresh_database

LIMIT = 60  # per minute: leases of up to 6 slots, a tenth of it
BLOCK = LIMIT // 10
CHATS = 20  # few turns wait on each chat, so none is refused as busy

# Each statement that writes to rate_slots, counted by the database itself.
COUNT_RATE_SLOT_WRITES = """CREATE TABLE rate_slot_writes (n bigint NOT NULL);
INSERT INTO rate_slot_writes VALUES (0);
CREATE FUNCTION count_rate_slot_write() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN UPDATE rate_slot_writes SET n = n + 1; RETURN NULL; END $$;
CREATE TRIGGER rate_slot_written AFTER INSERT OR UPDATE OR DELETE ON rate_slots
    FOR EACH STATEMENT EXECUTE FUNCTION count_rate_slot_write()"""


def limited_env(url: str, limit: str) -> dict[str, str]:
    return {"CHATKEEP_STORE": url, "CHATKEEP_LLM_PROVIDER": "offline", "CHATKEEP_RATE_LIMIT": limit}


async def posts_at_once(clients: list[httpx.AsyncClient], chats: list[str], count: int) -> list[httpx.Response]:
    """`count` turns sent together, spread over the servers and the chats."""
    turns = (post(clients[n % len(clients)], chats[n % len(chats)], f"m{n}") for n in range(count))
    return await asyncio.gather(*turns)


def admitted(responses: list[httpx.Response]) -> int:
    for response in responses:
        if response.status_code == 429:
            assert response.json()["type"].endswith("rate-limited"), response.text
            assert 1 <= int(response.headers["retry-after"]) <= 61, "a slot frees within the window (and a lease time)"
        else:
            assert response.status_code == 201, response.text
    return sum(response.status_code == 201 for response in responses)


async def test_two_servers_never_admit_more_than_the_limit_in_a_window(tmp_path: Path) -> None:
    async with fresh_database("postgres", tmp_path) as url, AsyncExitStack() as stack:
        env = limited_env(url, f"{LIMIT}/minute")
        servers = [await stack.enter_async_context(chatkeep_server(env, tmp_path / f"{n}.log")) for n in range(2)]
        clients = [server.client for server in servers]
        chats = [await new_chat(clients[n % 2]) for n in range(CHATS)]
        burst = admitted(await posts_at_once(clients, chats, 2 * LIMIT))
        assert LIMIT - 2 * BLOCK < burst <= LIMIT, "fewer than two blocks can sit unspent in the other server"
        await asyncio.sleep(2.5)  # past a lease time: each server gave back what it left unspent
        rest = admitted(await posts_at_once(clients, chats, LIMIT))
    assert burst + rest == LIMIT, "within a minute, the limit exactly"


async def test_most_turns_write_nothing_to_the_database_for_the_rate_limit(tmp_path: Path) -> None:
    turns = 300
    async with (
        fresh_database("postgres", tmp_path) as url,
        chatkeep_server(limited_env(url, "100000/minute"), tmp_path / "1.log") as server,
    ):
        connection = await asyncpg.connect(url)
        try:
            await connection.execute(COUNT_RATE_SLOT_WRITES)
            chats = [await new_chat(server.client) for _ in range(CHATS)]
            for _ in range(turns // 30):
                assert admitted(await posts_at_once([server.client], chats, 30)) == 30
            writes = await connection.fetchval("SELECT n FROM rate_slot_writes")
        finally:
            await connection.close()
    assert writes <= turns / 5, f"{writes} writes to rate_slots for {turns} turns"
