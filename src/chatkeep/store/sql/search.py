"""Search in the SQL stores: each database's own full-text index, kept in step with `messages`.

SQLite: an FTS5 table over `messages.content` with external content (the text is not stored
twice; `snippet()` reads it from `messages` by rowid). New messages are indexed in batches (m019:
before each search, and every SEARCH_BATCH appends); triggers on insert, delete (a chat's delete
cascades to them) and a change of content (a forgotten message is emptied) keep the messages
indexed so far in step, whatever path writes them. Its tokenizer is unicode61 without diacritics
removal, so that both databases and the memory store match the same words
(case-insensitively, accents kept). Ranked by bm25.

PostgreSQL: a stored generated column `search_vector`, `to_tsvector('simple', content)`, under a
GIN index; ranked by ts_rank with length normalization, snippets by ts_headline. `simple`
lowercases words and nothing else: no stemming, no stop words, whatever the language, so a
search finds exactly the words typed in any language (an English configuration would stem a
French chat's words as if they were English, and drop "it" or "who" from a query). The column
is stored rather than an index on the expression so that ranking reads each candidate's vector
instead of parsing its text again.

Terms reach the database as data: FTS5 gets each term as a quoted string (terms are letters and
digits only, so no quote can be in one), PostgreSQL a `plainto_tsquery` of the words, which has
no operators. Both migrations build the index over the messages already stored.
"""

from collections.abc import Sequence

from chatkeep.search import ELLIPSIS, MATCH_END, MATCH_START, SNIPPET_WORDS, SearchKey
from chatkeep.store.sql.rows import Row, to_json
from chatkeep.store.sql.statements import Plan, execute, fetch

M015_SQLITE = (
    """CREATE VIRTUAL TABLE messages_search USING fts5(
    content, content='messages', tokenize='unicode61 remove_diacritics 0')""",
    """CREATE TRIGGER messages_search_insert AFTER INSERT ON messages BEGIN
    INSERT INTO messages_search (rowid, content) VALUES (new.rowid, new.content);
END""",
    """CREATE TRIGGER messages_search_delete AFTER DELETE ON messages BEGIN
    INSERT INTO messages_search (messages_search, rowid, content) VALUES ('delete', old.rowid, old.content);
END""",
    """CREATE TRIGGER messages_search_update AFTER UPDATE OF content ON messages BEGIN
    INSERT INTO messages_search (messages_search, rowid, content) VALUES ('delete', old.rowid, old.content);
    INSERT INTO messages_search (rowid, content) VALUES (new.rowid, new.content);
END""",
    "INSERT INTO messages_search (messages_search) VALUES ('rebuild')",  # the messages stored before
)
# m019: SQLite's index kept in step lazily. An FTS5 insert that commits alone writes a segment of
# its own and merges them: about 35 us a message, twice a turn, where a batch costs 2-4 us a
# message. So a message is indexed later, in a batch (`SQLITE_CATCH_UP`): before a search reads the
# index, and every SEARCH_BATCH messages a process appends. The index then holds exactly the
# messages with a rowid up to `messages_search_progress.indexed_to`, with their current content:
# the triggers keep that true for those (a rowid a deleted message frees can be given again, and
# is indexed at once), and leave the others to the catch-up. A chatkeep older than m019 that
# writes to the file meanwhile (a rolling upgrade) leaves its messages to the newer one's catch-up.
LAZY_INDEX = "(SELECT indexed_to FROM messages_search_progress)"
M019_SQLITE = (
    "DROP TRIGGER messages_search_insert",
    "DROP TRIGGER messages_search_delete",
    "DROP TRIGGER messages_search_update",
    "CREATE TABLE messages_search_progress (one INTEGER PRIMARY KEY CHECK (one = 1), indexed_to INTEGER NOT NULL)",
    "INSERT INTO messages_search_progress (one, indexed_to) SELECT 1, coalesce(max(rowid), 0) FROM messages",
    f"""CREATE TRIGGER messages_search_insert AFTER INSERT ON messages WHEN new.rowid <= {LAZY_INDEX} BEGIN
    INSERT INTO messages_search (rowid, content) VALUES (new.rowid, new.content);
END""",
    f"""CREATE TRIGGER messages_search_delete AFTER DELETE ON messages WHEN old.rowid <= {LAZY_INDEX} BEGIN
    INSERT INTO messages_search (messages_search, rowid, content) VALUES ('delete', old.rowid, old.content);
END""",
    f"""CREATE TRIGGER messages_search_update AFTER UPDATE OF content ON messages WHEN old.rowid <= {LAZY_INDEX} BEGIN
    INSERT INTO messages_search (messages_search, rowid, content) VALUES ('delete', old.rowid, old.content);
    INSERT INTO messages_search (rowid, content) VALUES (new.rowid, new.content);
END""",
)
SEARCH_BATCH = 256
# Index the messages past `indexed_to`, then move it to the newest (never back: a rowid at or
# below it that is given again is indexed by the insert trigger).
SQLITE_CATCH_UP = (
    f"INSERT INTO messages_search (rowid, content) SELECT rowid, content FROM messages WHERE rowid > {LAZY_INDEX}",
    "UPDATE messages_search_progress SET indexed_to = max(indexed_to, (SELECT coalesce(max(rowid), 0) FROM messages))",
)
M015_POSTGRES = (
    """ALTER TABLE messages ADD COLUMN search_vector tsvector
    GENERATED ALWAYS AS (to_tsvector('simple'::regconfig, content)) STORED""",
    "CREATE INDEX messages_by_words ON messages USING gin (search_vector)",
)

# A page of hits (the cursor's key in ?3 to ?5, NULL for the first page), best first.
SQLITE_PAGE = """WITH hits AS (
    SELECT rowid AS hit, -bm25(messages_search) AS score FROM messages_search WHERE messages_search MATCH ?1
)
SELECT m.rowid, m.chat_id, c.title, m.id, m.seq, m.role, m.created_at, hits.score
FROM hits JOIN messages m ON m.rowid = hits.hit JOIN chats c ON c.id = m.chat_id
WHERE c.owner = ?2 AND (?3 IS NULL OR hits.score < ?3 OR (hits.score = ?3 AND (m.chat_id, m.seq) > (?4, ?5)))
ORDER BY hits.score DESC, m.chat_id, m.seq LIMIT ?6"""
# The snippets of a page's hits (their rowids a JSON array), computed for those alone.
SQLITE_SNIPPETS = f"""SELECT rowid, snippet(messages_search, 0, ?2, ?3, '{ELLIPSIS}', ?4) FROM messages_search
WHERE messages_search MATCH ?1 AND rowid IN (SELECT value FROM json_each(?5))"""

# ts_headline's fragment drops words even of a message that would fit whole: a short one is shown whole.
WHOLE_CHARS = 160
MARKERS = f"StartSel={MATCH_START}, StopSel={MATCH_END}"
HEADLINE_OPTIONS = f"{MARKERS}, MaxFragments=1, MaxWords={SNIPPET_WORDS}, MinWords={SNIPPET_WORDS // 2}, ShortWord=0"
WHOLE_OPTIONS = f"{MARKERS}, HighlightAll=true"
# The query's words in $2; the cursor's key in $3 to $5 (NULL for the first page). The page is
# chosen on the index and the stored vectors; only its hits' text is read for their headlines.
POSTGRES_PAGE = f"""WITH hits AS (
    SELECT m.chat_id, m.seq, ts_rank(m.search_vector, plainto_tsquery('simple', $2), 1) AS score
    FROM chats c JOIN messages m ON m.chat_id = c.id
    WHERE c.owner = $1 AND m.search_vector @@ plainto_tsquery('simple', $2)
), page AS (
    SELECT chat_id, seq, score FROM hits
    WHERE $3::real IS NULL OR score < $3::real OR (score = $3::real AND (chat_id, seq) > ($4::text, $5::bigint))
    ORDER BY score DESC, chat_id, seq LIMIT $6
)
SELECT page.chat_id, c.title, m.id, page.seq, m.role, m.created_at, page.score, headline.marked,
    position(replace(replace(headline.marked, $8, ''), $9, '') IN m.content), length(m.content)
FROM page JOIN messages m ON m.chat_id = page.chat_id AND m.seq = page.seq JOIN chats c ON c.id = page.chat_id,
    LATERAL (SELECT ts_headline('simple', m.content, plainto_tsquery('simple', $2),
        CASE WHEN length(m.content) <= {WHOLE_CHARS} THEN $10 ELSE $7 END) AS marked) headline
ORDER BY page.score DESC, page.chat_id, page.seq"""


# A search is planned for its own words: a generic plan, which the statement cache of a pooled
# connection comes to after five runs, cannot tell a rare word (the index) from a common one, and
# picked a scan of every message of the owner. Set for the search's own transaction only.
CUSTOM_PLAN = "SET LOCAL plan_cache_mode = force_custom_plan"


def _cursor(after: SearchKey | None) -> tuple[object, object, object]:
    return (None, None, None) if after is None else (after.score, after.chat_id, after.seq)


def sqlite_catch_up() -> Plan[None]:
    """Index the messages the SQLite index has yet to hold (m019), in the caller's write transaction."""
    for statement in SQLITE_CATCH_UP:
        yield execute(statement)


def sqlite_search(owner: str, terms: Sequence[str], limit: int, after: SearchKey | None) -> Plan[list[Row]]:
    """Rows of (chat id, title, message id, seq, role, created_at, score, marked snippet)."""
    match = " ".join(f'"{term}"' for term in terms)
    found = yield fetch(SQLITE_PAGE, match, owner, *_cursor(after), limit)
    if not found:
        return []
    rowids = to_json([row[0] for row in found])
    snippets = dict((yield fetch(SQLITE_SNIPPETS, match, MATCH_START, MATCH_END, SNIPPET_WORDS, rowids)))
    return [(*row[1:], snippets.get(row[0], "")) for row in found]


def postgres_search(owner: str, terms: Sequence[str], limit: int, after: SearchKey | None) -> Plan[list[Row]]:
    """Rows of (chat id, title, message id, seq, role, created_at, score, marked snippet)."""
    yield execute(CUSTOM_PLAN)
    headlines = (HEADLINE_OPTIONS, MATCH_START, MATCH_END, WHOLE_OPTIONS)
    found = yield fetch(POSTGRES_PAGE, owner, " ".join(terms), *_cursor(after), limit, *headlines)
    return [(*row[:7], _ellipsized(row[7], row[8], row[9])) for row in found]


def _ellipsized(headline: str, starts_at: int, length: int) -> str:
    """A headline with an ellipsis where it cuts the message short, as FTS5's snippet() has:
    ts_headline adds none. `starts_at` is where its text begins in the message (1: the start)."""
    shown = len(headline.replace(MATCH_START, "").replace(MATCH_END, ""))
    before = ELLIPSIS if starts_at > 1 else ""
    after = ELLIPSIS if starts_at and starts_at - 1 + shown < length else ""
    return before + headline + after
