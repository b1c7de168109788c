"""Search latency at a million messages on PostgreSQL: `ChatStore.search_messages` timed against
the same statement sent straight through asyncpg (its ceiling: what the database alone takes).

The messages are one owner's (the worst case for an owner's search: no other owner's messages to
leave out), 100 to a chat, their words drawn from a vocabulary of VOCABULARY words by a Zipf law,
as natural text's are, so a word's rank says how many messages hold it. They are loaded with COPY
into a schema that stops before the search migration, which then builds the index over them,
as it would on an existing database (its time is reported too). The queries are of a few shapes a
person looking for an old conversation types, each drawn afresh for every query from a band of
word ranks, so no two queries are the same statement with the same words.
"""

import asyncio
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import accumulate
from statistics import median, quantiles

import asyncpg

from chatkeep.search import query_terms
from chatkeep.store.sql import postgres
from chatkeep.store.sql.schema import SHARED_MIGRATIONS
from chatkeep.store.sql.search import postgres_search

OWNER = "bench"
VOCABULARY = 20_000
ZIPF_EXPONENT = 1.1
WORDS_A_MESSAGE = (5, 60)
MESSAGES_A_CHAT = 100
PAGE = 20
BEFORE_SEARCH = list(SHARED_MIGRATIONS).index("m015_message_search")
# Query shapes: words of a band of ranks, or the least common words of one stored message (what
# one remembers of a conversation is what set it apart).
RANKS: dict[str, tuple[int, int]] = {
    "one rare word": (2000, 10000),
    "a word no message holds": (VOCABULARY + 1, VOCABULARY + 1000),
    "one common word": (5, 20),
}
FROM_A_MESSAGE = {"two words of a message": 2, "three words of a message": 3}
SHAPES = ("one rare word", "two words of a message", "three words of a message", "a word no message holds")
WORST = "one common word"  # in one message of 5 or more: every one ranked; reported, outside the target


@dataclass(frozen=True)
class Timings:
    store_ms: dict[str, list[float]]  # by shape
    raw_ms: dict[str, list[float]]
    load_seconds: float
    index_seconds: float
    hits: dict[str, float]  # median hits on a first page, by shape


def word(rank: int) -> str:
    """The vocabulary's word of `rank` (1: the commonest); a rank past it names a word no message holds."""
    return f"w{rank:x}"


def messages(count: int, seed: int = 1) -> Iterator[tuple[object, ...]]:
    """COPY rows of the messages table: chat id, seq, id, role, content, created_at."""
    draw = random.Random(seed)
    cumulative = list(accumulate(1 / rank**ZIPF_EXPONENT for rank in range(1, VOCABULARY + 1)))
    ranks = range(1, VOCABULARY + 1)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    for n in range(count):
        chat, seq = divmod(n, MESSAGES_A_CHAT)
        length = draw.randint(*WORDS_A_MESSAGE)
        content = " ".join(word(rank) for rank in draw.choices(ranks, cum_weights=cumulative, k=length))
        role = "user" if seq % 2 == 0 else "assistant"
        yield f"chat_{chat}", seq + 1, f"msg_{n}", role, content, start + timedelta(seconds=n)


def chats(count: int) -> Iterator[tuple[object, ...]]:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    for chat in range(count):
        yield f"chat_{chat}", OWNER, f"chat {chat}", "{}", start, start, MESSAGES_A_CHAT, MESSAGES_A_CHAT // 2


async def load(url: str, count: int) -> tuple[float, float]:
    """The messages COPYed into a schema without the search index, then the index built: the seconds of each."""
    async with postgres.open_postgres_store(url, migrations=postgres.MIGRATIONS[:BEFORE_SEARCH]):
        pass
    began = time.monotonic()
    connection = await asyncpg.connect(url)
    try:
        chat_columns = ["id", "owner", "title", "metadata", "created_at", "updated_at"]
        chat_columns += ["message_count", "user_message_count"]
        await connection.copy_records_to_table("chats", records=chats(count // MESSAGES_A_CHAT), columns=chat_columns)
        columns = ["chat_id", "seq", "id", "role", "content", "created_at"]
        await connection.copy_records_to_table("messages", records=messages(count), columns=columns)
    finally:
        await connection.close()
    loaded = time.monotonic()
    async with postgres.open_postgres_store(url):  # m015: the index over every message
        pass
    indexed = time.monotonic()
    await _analyze(url)
    return loaded - began, indexed - loaded


async def _analyze(url: str) -> None:
    connection = await asyncpg.connect(url)
    try:
        await connection.execute("ANALYZE")
    finally:
        await connection.close()


async def queries_of(
    connection: asyncpg.Connection, count: int, queries: int, draw: random.Random
) -> list[dict[str, str]]:
    """`queries` rounds of one query of each shape."""
    ids = [f"msg_{draw.randrange(count)}" for _ in range(queries)]
    contents = [row[0] for row in await connection.fetch("SELECT content FROM messages WHERE id = ANY($1)", ids)]
    rounds = []
    for content in contents:
        distinctive = sorted(set(content.split()), key=lambda word: -int(word[1:], 16))
        remembered = {shape: " ".join(distinctive[:n]) for shape, n in FROM_A_MESSAGE.items()}
        ranked = {shape: word(draw.randint(*band)) for shape, band in RANKS.items()}
        rounds.append(ranked | remembered)
    return rounds


async def time_queries(url: str, count: int, queries: int, seed: int = 2) -> tuple[dict[str, list[float]], ...]:
    """Milliseconds a query takes through the store and as the bare statement, by shape, alternating."""
    draw = random.Random(seed)
    shapes = (*SHAPES, WORST)
    store_ms: dict[str, list[float]] = {shape: [] for shape in shapes}
    raw_ms: dict[str, list[float]] = {shape: [] for shape in shapes}
    hits: dict[str, list[float]] = {shape: [] for shape in shapes}
    connection = await asyncpg.connect(url)
    try:
        async with postgres.open_postgres_store(url) as store:
            for asked in await queries_of(connection, count, queries, draw):
                for shape in shapes:
                    terms = query_terms(asked[shape])
                    began = time.perf_counter()
                    page = await store.search_messages(OWNER, terms, limit=PAGE)
                    store_ms[shape].append((time.perf_counter() - began) * 1000)
                    hits[shape].append(len(page.hits))
                    plan = postgres_search(OWNER, terms, PAGE + 1, None)
                    custom_plan, statement = next(plan), plan.send(None)
                    began = time.perf_counter()
                    async with connection.transaction():
                        await connection.execute(custom_plan.query)
                        await connection.fetch(statement.query, *statement.args)
                    raw_ms[shape].append((time.perf_counter() - began) * 1000)
    finally:
        await connection.close()
    return store_ms, raw_ms, hits


def measure(url: str, *, count: int, queries: int) -> Timings:
    load_seconds, index_seconds = asyncio.run(load(url, count))
    store_ms, raw_ms, hits = asyncio.run(time_queries(url, count, queries))
    return Timings(store_ms, raw_ms, load_seconds, index_seconds, {s: median(h) for s, h in hits.items()})


def p99(values: list[float]) -> float:
    return quantiles(values, n=100, method="inclusive")[98]
