"""The search contract (`ChatStore.search_messages`), run against every store, and the SQL stores'
index built over messages stored before it existed."""

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from chatkeep.domain import NewMessage, Role
from chatkeep.search import ELLIPSIS, SearchHit, query_terms
from chatkeep.store import ChatStore
from chatkeep.store.sql.schema import SHARED_MIGRATIONS
from chatkeep.store.sql.search import SEARCH_BATCH
from tests.support.conditions import until
from tests.support.stores import (
    OLD_VERSION_CHAT,
    OLD_VERSION_MESSAGE,
    SQL_STORES,
    execute_sql,
    fresh_database,
    open_sql_store,
)

ALICE, BOB = "alice", "bob"


async def chat_with(store: ChatStore, *contents: str, owner: str = ALICE, title: str | None = None) -> str:
    chat = await store.create_chat(owner, title=title, metadata={}, system_prompt=None)
    for n, content in enumerate(contents):
        await store.append_message(owner, chat.id, NewMessage(Role.USER if n % 2 == 0 else Role.ASSISTANT, content))
    return chat.id


async def search(store: ChatStore, query: str, owner: str = ALICE, limit: int = 50) -> list[SearchHit]:
    return (await store.search_messages(owner, query_terms(query), limit=limit)).hits


def contents(hits: list[SearchHit]) -> list[str]:
    return ["".join(part.text for part in hit.snippet) for hit in hits]


async def test_search_finds_messages_with_every_word_best_first(store: ChatStore) -> None:
    chat_id = await chat_with(
        store,
        "Rome Rome Rome",
        "A long answer about many places to see in Italy, of which Rome is only one among many others",
        "Nothing of the kind here",
        "Three days in Florence, then rome",
        title="Trip",
    )
    hits = await search(store, "rome")
    assert contents(hits) == [
        "Rome Rome Rome",
        "Three days in Florence, then rome",
        "A long answer about many places to see in Italy, of which Rome is only one among many others",
    ]
    first = hits[0]
    assert (first.chat_id, first.chat_title, first.seq, first.role) == (chat_id, "Trip", 1, Role.USER)
    assert first.message_id == (await store.recent_messages(ALICE, chat_id, limit=10))[-1].id
    assert first.score > hits[1].score > hits[2].score
    assert contents(await search(store, "FLORENCE days")) == ["Three days in Florence, then rome"]
    assert await search(store, "florence italy") == []  # every word, in one message


async def test_snippets_mark_the_matches_around_the_first(store: ChatStore) -> None:
    words = [f"w{n}" for n in range(80)]
    words[50] = "Colosseum"
    words[53] = "colosseum"
    await chat_with(store, " ".join(words))
    [hit] = await search(store, "colosseum")
    marked = [part.text for part in hit.snippet if part.match]
    assert marked == ["Colosseum", "colosseum"]
    text = "".join(part.text for part in hit.snippet)
    assert text.startswith(ELLIPSIS)
    assert text.endswith(ELLIPSIS)
    assert text.strip(ELLIPSIS).strip() in " ".join(words)
    assert len(text.split()) < 40  # a window, not the message


async def test_pages_walk_every_hit_once_in_order(store: ChatStore) -> None:
    for _ in range(2):  # equal scores too: the cursor's ties break on chat and seq
        await chat_with(store, *["alpha beta"] * 7, *["alpha alpha alpha gamma"] * 3, "no match", "alpha")
    everything = await search(store, "alpha", limit=100)
    assert len(everything) == 22
    walked: list[SearchHit] = []
    after = None
    while True:
        page = await store.search_messages(ALICE, query_terms("alpha"), limit=4, after=after)
        walked += page.hits
        if not page.has_more:
            break
        after = page.hits[-1].key
    assert [hit.key for hit in walked] == [hit.key for hit in everything]
    assert len({(hit.chat_id, hit.seq) for hit in walked}) == 22
    in_order = sorted(walked, key=lambda hit: (-hit.score, hit.chat_id, hit.seq))
    assert [hit.key for hit in walked] == [hit.key for hit in in_order]


async def test_owners_are_isolated(store: ChatStore) -> None:
    await chat_with(store, "the password is swordfish", owner=BOB)
    await chat_with(store, "a swordfish is a fish", owner=ALICE)
    assert contents(await search(store, "swordfish", owner=ALICE)) == ["a swordfish is a fish"]
    assert contents(await search(store, "password", owner=BOB)) == ["the password is swordfish"]
    assert await search(store, "password", owner=ALICE) == []
    assert await search(store, "swordfish", owner="carol") == []


async def test_deleted_chats_and_forgotten_messages_are_never_found(store: ChatStore) -> None:
    gone = await chat_with(store, "zebra crossing", "zebra stripes")
    kept = await chat_with(store, "a zebra here", "and a giraffe")
    await store.delete_chat(ALICE, gone)
    giraffe = (await store.recent_messages(ALICE, kept, limit=1))[0]
    await store.forget_message(ALICE, kept, giraffe.id)
    await chat_with(store, "plain words", "more plain words")  # may reuse the deleted rows' places
    assert contents(await search(store, "zebra")) == ["a zebra here"]
    assert await search(store, "giraffe") == []
    assert await search(store, "stripes") == []


@pytest.mark.parametrize(
    "query",
    ['"near" AND (x OR -y*)', "NEAR(a b) col:val ^start", "' OR 1=1 --", "NOT", '"unterminated', "a:b:c !!! & | <->"],
)
async def test_operator_looking_queries_are_words(store: ChatStore, query: str) -> None:
    await chat_with(store, 'he said "near" AND (x OR -y*) then NEAR(a b) col:val ^start; OR 1=1 -- NOT "unterminated')
    await chat_with(store, "a:b:c !!! & | <->")
    hits = await search(store, query)
    assert len(hits) == 1
    assert {part.text.lower() for part in hits[0].snippet if part.match} <= set(query_terms(query))


async def test_unicode_words_match_in_any_case_with_their_accents(store: ChatStore) -> None:
    await chat_with(store, "Grüße aus KÖLN und 東京", "un café crème à Montréal")
    assert contents(await search(store, "köln GRÜSSE")) == []  # ß is its own letter
    assert contents(await search(store, "köln GRÜßE")) == ["Grüße aus KÖLN und 東京"]
    assert contents(await search(store, "東京")) == ["Grüße aus KÖLN und 東京"]
    [hit] = await search(store, "CAFÉ montréal")
    assert [part.text for part in hit.snippet if part.match] == ["café", "Montréal"]
    assert await search(store, "cafe") == []  # accents are kept, in every store alike


BEFORE_SEARCH = list(SHARED_MIGRATIONS).index("m015_message_search")  # the migrations without it and after it


@pytest.fixture(params=SQL_STORES)
async def sql_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    async with fresh_database(request.param, tmp_path) as url:
        yield url


async def test_the_search_migration_indexes_messages_stored_before_it(sql_url: str) -> None:
    async with open_sql_store(sql_url, migrations=BEFORE_SEARCH):
        pass
    dialect = sql_url.partition(":")[0]  # written as the first schema allows: later code writes more columns
    await execute_sql(sql_url, OLD_VERSION_CHAT[dialect], "conv_old")
    await execute_sql(sql_url, OLD_VERSION_MESSAGE[dialect], "conv_old")
    async with open_sql_store(sql_url) as store:
        assert contents(await search(store, "old version")) == ["from the old version"]
        await chat_with(store, "a new version")
        assert len(await search(store, "version")) == 2


async def test_sqlite_search_survives_a_vacuum(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'chatkeep.db'}"
    async with open_sql_store(url) as store:
        first = await chat_with(store, *[f"filler {n}" for n in range(20)])
        await chat_with(store, "the needle", "in a haystack")
        await store.delete_chat(ALICE, first)
    db = sqlite3.connect(tmp_path / "chatkeep.db", isolation_level=None)
    db.execute("VACUUM")
    db.close()
    async with open_sql_store(url) as store:
        assert contents(await search(store, "needle")) == ["the needle"]
        assert contents(await search(store, "haystack")) == ["in a haystack"]


def _sqlite_index(path: Path) -> tuple[int, int]:
    """How many messages SQLite's search index holds, and how many the file stores; raises
    sqlite3.DatabaseError when FTS5's integrity check finds the index out of step with them."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        indexed = db.execute("SELECT count(*) FROM messages_search_docsize").fetchone()[0]
        stored = db.execute("SELECT count(*) FROM messages").fetchone()[0]
        if indexed == stored:
            db.execute("INSERT INTO messages_search (messages_search) VALUES ('integrity-check')")
        return indexed, stored
    finally:
        db.close()


async def test_sqlite_indexes_a_turns_messages_later_in_a_batch(tmp_path: Path) -> None:
    path = tmp_path / "chatkeep.db"
    async with open_sql_store(f"sqlite:///{path}") as store:
        await chat_with(store, "a question", "its answer")
        assert _sqlite_index(path) == (0, 2)  # the turn paid for no indexing
        assert contents(await search(store, "answer")) == ["its answer"]
        assert _sqlite_index(path) == (2, 2)
        await chat_with(store, *[f"filler {n}" for n in range(SEARCH_BATCH)])
        assert _sqlite_index(path) == (2 + SEARCH_BATCH, 2 + SEARCH_BATCH)  # a batch, with no search


async def test_sqlite_indexes_the_batch_a_waiting_turns_question_completes(tmp_path: Path) -> None:
    """A turn whose ticket waits behind another's stores its question only once it heads the chat:
    the batch it completes is indexed then (it was skipped, its count taken with the ticket)."""
    path = tmp_path / "chatkeep.db"
    async with open_sql_store(f"sqlite:///{path}") as store:
        chat_id = await chat_with(store, *[f"filler {n}" for n in range(SEARCH_BATCH - 1)])

        async def ask(question: str) -> None:  # as a turn does: its question stored with its ticket, or after
            async with store.turn_lease(ALICE, chat_id, question=question) as ticket:
                if ticket.question is None:
                    await store.append_question(ALICE, chat_id, question, ticket=ticket)

        async with store.turn_lease(ALICE, chat_id):
            waiting = asyncio.create_task(ask("the last of the batch"))
            await until(lambda: _sqlite_tickets(path) == 2)  # its ticket is taken, behind this one
            assert _sqlite_index(path) == (0, SEARCH_BATCH - 1)
        await waiting
        assert _sqlite_index(path) == (SEARCH_BATCH, SEARCH_BATCH)


def _sqlite_tickets(path: Path) -> int:
    db = sqlite3.connect(path, isolation_level=None)
    try:
        tickets: int = db.execute("SELECT count(*) FROM turn_tickets").fetchone()[0]
        return tickets
    finally:
        db.close()


async def test_sqlite_index_stays_exact_through_deletes_forgets_and_reused_rowids(tmp_path: Path) -> None:
    path = tmp_path / "chatkeep.db"
    async with open_sql_store(f"sqlite:///{path}") as store:
        indexed = await chat_with(store, "indexed zebra", "indexed giraffe")
        newest = await chat_with(store, "newest okapi", "newest lemur")
        assert len(await search(store, "indexed")) == 2  # both chats indexed now
        await store.delete_chat(ALICE, newest)  # frees the highest rowids, which the next messages take
        reused = await chat_with(store, "reused tapir", "reused ibex")
        pending = await chat_with(store, "pending panda", "pending koala")  # past the index
        giraffe = (await store.recent_messages(ALICE, indexed, limit=1))[0]
        await store.forget_message(ALICE, indexed, giraffe.id)
        koala = (await store.recent_messages(ALICE, pending, limit=1))[0]
        await store.forget_message(ALICE, pending, koala.id)
        await store.delete_chat(ALICE, reused)
        await chat_with(store, "after all of it")
        assert contents(await search(store, "indexed")) == ["indexed zebra"]
        for word in ("okapi", "giraffe", "koala", "tapir", "ibex"):
            assert await search(store, word) == []
        assert contents(await search(store, "pending")) == ["pending panda"]
        assert contents(await search(store, "after")) == ["after all of it"]
    indexed_count, stored = _sqlite_index(path)
    assert indexed_count == stored  # and FTS5's own integrity check passed
