"""Export and import routes: an owner's chats out as JSONL or Markdown, streamed; a JSONL export back in.

Exports stream a page of the store at a time (transfer/export.py), so they cost constant memory
however many chats there are; the 404 of a missing chat comes before the first byte. An import
reads its whole body (bounded by CHATKEEP_MAX_IMPORT_BYTES), checks every line, then stores all
of its new chats or none (transfer/importer.py).
"""

from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from starlette.exceptions import HTTPException

from chatkeep.api.deps import OwnerDep, ServiceDep
from chatkeep.api.schemas import ImportedChatOut, ImportOut, Problem
from chatkeep.api.security import is_json_lines
from chatkeep.domain import Chat, utcnow
from chatkeep.store import ChatStore
from chatkeep.transfer.export import jsonl_export, markdown_export, one_chat, owner_chats
from chatkeep.transfer.importer import import_chats
from chatkeep.transfer.reader import Limits, read_export

PROBLEM = "application/problem+json"
Format = Literal["jsonl", "markdown"]
MEDIA_TYPES = {"jsonl": "application/jsonl", "markdown": "text/markdown; charset=utf-8"}
SUFFIXES = {"jsonl": "jsonl", "markdown": "md"}
FORMAT_HELP = "`jsonl`: every field, to import again (POST /import); `markdown`: to read"


def _problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": Problem, "content": {PROBLEM: {}}} for code in statuses}


def _export_responses() -> dict[int | str, dict[str, Any]]:
    text = {"schema": {"type": "string"}}
    return {200: {"content": {"application/jsonl": text, "text/markdown": text}}, **_problems(422)}


router = APIRouter(tags=["export"], responses=_problems(401, 500))


@router.get(
    "/chats/{chat_id}/export", response_class=StreamingResponse, responses={**_export_responses(), **_problems(404)}
)
async def export_chat(
    chat_id: str,
    service: ServiceDep,
    owner: OwnerDep,
    format: Annotated[Format, Query(description=FORMAT_HELP)] = "jsonl",
) -> StreamingResponse:
    """One chat with its messages, as a file to download (`Content-Disposition`)."""
    chat = await service.store.get_chat(owner, chat_id)
    return _download(service.store, owner, format, one_chat(chat), f"chatkeep-{chat.id}")


@router.get("/export", response_class=StreamingResponse, responses=_export_responses())
async def export_all(
    service: ServiceDep, owner: OwnerDep, format: Annotated[Format, Query(description=FORMAT_HELP)] = "jsonl"
) -> StreamingResponse:
    """Every chat of the owner, oldest first, streamed a page at a time."""
    day = utcnow().strftime("%Y-%m-%d")
    return _download(service.store, owner, format, owner_chats(service.store, owner), f"chatkeep-export-{day}")


def _download(store: ChatStore, owner: str, format: Format, chats: AsyncIterator[Chat], name: str) -> StreamingResponse:
    body = jsonl_export(store, owner, chats) if format == "jsonl" else markdown_export(store, owner, chats)
    disposition = f'attachment; filename="{name}.{SUFFIXES[format]}"'
    return StreamingResponse(body, media_type=MEDIA_TYPES[format], headers={"Content-Disposition": disposition})


IMPORT_BODY = {
    "requestBody": {
        "required": True,
        "description": "a JSONL export (GET /export?format=jsonl), at most CHATKEEP_MAX_IMPORT_BYTES",
        "content": {media: {"schema": {"type": "string"}} for media in ("application/jsonl", "application/x-ndjson")},
    }
}


@router.post(
    "/import", response_model=ImportOut, openapi_extra=IMPORT_BODY, responses=_problems(409, 413, 415, 422, 429)
)
async def import_file(request: Request, service: ServiceDep, owner: OwnerDep) -> ImportOut:
    """Import a JSONL export: every line checked first (a 422 lists the bad lines), then all of its
    new chats stored or none. Chats the owner keeps already, exactly as in the file, are `unchanged`
    (importing a file twice stores nothing the second time); a chat id kept with other content, or
    taken by another owner, is a 409 naming its line."""
    if not is_json_lines(request.headers.get("content-type", "").encode("latin-1")):
        raise HTTPException(
            415, "an import is JSON Lines, sent with Content-Type: application/jsonl (or application/x-ndjson)"
        )
    settings = service.settings
    limits = Limits(max_message_chars=settings.max_message_chars, max_chat_messages=settings.max_chat_messages)
    chats = read_export(await request.body(), limits)
    done = await import_chats(service.store, owner, chats, max_chats=settings.max_chats)
    return ImportOut(
        imported=sum(chat.status == "imported" for chat in done),
        unchanged=sum(chat.status == "unchanged" for chat in done),
        chats=[ImportedChatOut(id=chat.id, line=chat.line, status=chat.status) for chat in done],
    )
