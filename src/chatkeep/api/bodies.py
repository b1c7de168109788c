"""JSON bodies of successful answers, written by orjson straight from the domain dataclasses.

The domain objects have exactly the fields of their API schemas (schemas.py), so orjson can
write them directly: several times cheaper than validating them into pydantic models first,
on the path every turn takes. The schemas still document the answers, and the schemathesis run
in `make test` checks every answer against them.
"""

from dataclasses import fields
from typing import Any, TypeVar

import orjson
from starlette.responses import Response

from chatkeep.domain import Chat, Identified, Message, Page, PageRequest, Siblings
from chatkeep.store.paging import activity_cursor

OPTIONS = orjson.OPT_UTC_Z

T = TypeVar("T", bound=Identified)


def json_response(body: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(body, option=OPTIONS), status_code=status, media_type="application/json", headers=headers
    )


def page_body(page: Page[T]) -> dict[str, Any]:
    return {"data": page.data, "first_id": page.first_id, "last_id": page.last_id, "has_more": page.has_more}


def chat_page_body(page: Page[Chat], request: PageRequest) -> dict[str, Any]:
    """A page of chats, with the cursors of its ends: by last activity, the places they were listed
    at (`activity_cursor`), which page on stably while chats move; by creation, their ids."""
    cursor = activity_cursor if request.order_by == "updated_at" else _id_of
    ends = (page.data[0], page.data[-1]) if page.data else None
    return page_body(page) | {
        "first_cursor": cursor(ends[0]) if ends else None,
        "last_cursor": cursor(ends[1]) if ends else None,
    }


def _id_of(chat: Chat) -> str:
    return chat.id


def with_siblings(message: Message, siblings: dict[str, Siblings]) -> Message | dict[str, Any]:
    """`message`, with its `siblings` when it has any (a chat that branched: rare, so the dict
    built here costs the messages of other chats nothing)."""
    found = siblings.get(message.id)
    if found is None:
        return message
    body = {field.name: getattr(message, field.name) for field in fields(message)}
    return body | {"siblings": {"ids": found.ids, "index": found.index}}
