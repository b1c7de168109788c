"""Search across an owner's messages: what a query means, how results are ranked and paged, and
how a snippet marks its matches. Plain values and functions, no I/O; every store answers with them.

A query is a list of words (`query_terms`): letters and digits, lowercased, everything else a
separator. A message matches when it holds every word, whole and in any case; no user text is
ever read as an operator of SQLite's FTS5 or PostgreSQL's tsquery. Results come best first, then
by chat and seq, so that a page's last result is a stable cursor (`SearchKey`), which goes out
opaque. A snippet is a list of parts, each plain text, with the matching words as parts of
their own: a client draws them as text nodes, so a result cannot carry markup into a page.
"""

import base64
import binascii
import hashlib
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from chatkeep.domain import Role
from chatkeep.errors import InvalidCursorError, InvalidSearchError

MAX_QUERY_CHARS = 200
MAX_TERMS = 12
MAX_TERM_CHARS = 64
# What the SQL stores' snippet functions put around a match: private-use characters, which no
# keyboard types; one in a message itself at worst moves a highlight, it never becomes markup.
MATCH_START, MATCH_END = "\ue000", "\ue001"
SNIPPET_WORDS = 24
ELLIPSIS = "…"
WORD = re.compile(r"[^\W_]+")  # letters and digits: the words SQLite's unicode61 and PostgreSQL split text into


def query_terms(text: str) -> tuple[str, ...]:
    """The words of a query, lowercased, each once, in order. Raises InvalidSearchError for a
    query with no word, too long, or with too many or too long words."""
    if len(text) > MAX_QUERY_CHARS:
        raise InvalidSearchError(f"a search is at most {MAX_QUERY_CHARS} characters")
    terms = tuple(dict.fromkeys(word.lower() for word in WORD.findall(text)))
    if not terms:
        raise InvalidSearchError("a search needs at least one word of letters or digits")
    if len(terms) > MAX_TERMS:
        raise InvalidSearchError(f"a search takes at most {MAX_TERMS} words")
    if any(len(term) > MAX_TERM_CHARS for term in terms):
        raise InvalidSearchError(f"a word of a search is at most {MAX_TERM_CHARS} characters")
    return terms


@dataclass(slots=True, frozen=True)
class SnippetPart:
    text: str
    match: bool


@dataclass(slots=True, frozen=True, order=True)
class SearchKey:
    """Where a result sits in the order of a search: best score first, then chat id, then seq."""

    score: float
    chat_id: str
    seq: int

    def follows(self, other: "SearchKey") -> bool:
        """Whether this result comes after `other` in the search's order."""
        return (-self.score, self.chat_id, self.seq) > (-other.score, other.chat_id, other.seq)


@dataclass(slots=True, frozen=True)
class SearchHit:
    chat_id: str
    chat_title: str | None
    message_id: str
    seq: int
    role: Role
    created_at: datetime
    snippet: list[SnippetPart]
    score: float  # the store's own rank, higher first: only comparable within one store

    @property
    def key(self) -> SearchKey:
        return SearchKey(self.score, self.chat_id, self.seq)


@dataclass(slots=True, frozen=True)
class SearchPage:
    hits: list[SearchHit]
    has_more: bool


@dataclass(slots=True, frozen=True)
class SearchResults:
    """A page of a search as the API answers it: `next_cursor` asks for the page after it."""

    hits: list[SearchHit]
    has_more: bool
    next_cursor: str | None

    def body(self) -> dict[str, Any]:
        """The answer's JSON body (a hit's score stays inside: each store ranks its own way)."""
        data = [
            {
                "chat_id": hit.chat_id,
                "chat_title": hit.chat_title,
                "message_id": hit.message_id,
                "seq": hit.seq,
                "role": hit.role,
                "created_at": hit.created_at,
                "snippet": hit.snippet,
            }
            for hit in self.hits
        ]
        return {"data": data, "has_more": self.has_more, "next_cursor": self.next_cursor}


def encode_cursor(terms: Sequence[str], key: SearchKey) -> str:
    """An opaque cursor for the results after `key` of the search for `terms`."""
    raw = orjson.dumps([_fingerprint(terms), key.score, key.chat_id, key.seq])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(terms: Sequence[str], cursor: str) -> SearchKey:
    """The key `encode_cursor` wrote. Raises InvalidCursorError for anything else, or for a
    cursor of another search (its order would mean nothing here)."""
    try:
        fingerprint, score, chat_id, seq = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, TypeError, binascii.Error):
        raise InvalidCursorError("this cursor is not one a search handed out") from None
    if fingerprint != _fingerprint(terms):
        raise InvalidCursorError("this cursor belongs to another search")
    valid = isinstance(score, float | int) and math.isfinite(score) and isinstance(chat_id, str)
    if not valid or not isinstance(seq, int) or isinstance(seq, bool):
        raise InvalidCursorError("this cursor is not one a search handed out")
    return SearchKey(float(score), chat_id, seq)


def _fingerprint(terms: Sequence[str]) -> str:
    return hashlib.blake2s(" ".join(terms).encode(), digest_size=6).hexdigest()


def marked_parts(marked: str) -> list[SnippetPart]:
    """A snippet whose matches sit between MATCH_START and MATCH_END, as parts; a marker
    without its pair is dropped."""
    first, *pieces = marked.split(MATCH_START)
    parts: list[SnippetPart] = []
    _add(parts, first.replace(MATCH_END, ""), match=False)
    for piece in pieces:
        matched, found, rest = piece.partition(MATCH_END)
        if found:
            _add(parts, matched, match=True)
        _add(parts, (rest if found else piece).replace(MATCH_END, ""), match=False)
    return parts


def _add(parts: list[SnippetPart], text: str, *, match: bool) -> None:
    if not text:
        return
    if parts and parts[-1].match == match:
        parts[-1] = SnippetPart(parts[-1].text + text, match)
    else:
        parts.append(SnippetPart(text, match))


def scan_score(content: str, terms: Sequence[str]) -> float:
    """A message's rank for a search by scanning it (the memory store): 0 unless it holds every
    term; else the terms' occurrences, damped by the message's length as bm25 and ts_rank's
    normalization damp them, so a short message that repeats the words ranks first."""
    wanted = set(terms)
    words = [word.lower() for word in WORD.findall(content)]
    found = [word for word in words if word in wanted]
    if set(found) != wanted:
        return 0.0
    return len(found) / (1.0 + math.log(1 + len(words)))


def scan_snippet(content: str, terms: Sequence[str]) -> list[SnippetPart]:
    """About SNIPPET_WORDS words of `content` around its first match, every match a part of its own."""
    wanted = set(terms)
    words = list(WORD.finditer(content))
    first = next((n for n, word in enumerate(words) if word[0].lower() in wanted), 0)
    start = max(0, min(first - SNIPPET_WORDS // 3, len(words) - SNIPPET_WORDS))
    shown = words[start : start + SNIPPET_WORDS]
    if not shown:
        return []
    begin = 0 if start == 0 else shown[0].start()
    end = len(content) if start + SNIPPET_WORDS >= len(words) else shown[-1].end()
    parts: list[SnippetPart] = []
    _add(parts, ELLIPSIS if begin else "", match=False)
    at = begin
    for word in shown:
        if word[0].lower() in wanted:
            _add(parts, content[at : word.start()], match=False)
            _add(parts, word[0], match=True)
            at = word.end()
    _add(parts, content[at:end], match=False)
    _add(parts, ELLIPSIS if end < len(content) else "", match=False)
    return parts
