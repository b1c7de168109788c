"""Attachments' bytes kept once per content, apart from the messages that carry them.

An image or a file sent inline (a data: URL, or a file's bare base64) may take megabytes; a
chat that shows it twice, or a response chain that repeats it, would keep it in every message
row. So a store keeps the decoded bytes as a blob named by their SHA-256 (`BlobStore`: in
memory, in the database's `blobs` table, or in a directory, one file per hash), and the stored
item references it: the part's field holds `{"blob": <sha256>, "prefix": "data:image/png;base64,"}`
in place of the text, and the item is marked with the hashes it references (`BLOBS_KEY`), so
that a read finds the items to restore without walking them all. Reads rebuild the text as the
client sent it (the API admits canonical base64 only, which re-encodes to itself).

Blobs are shared by content, across chats and owners, so deleting a chat, an item or a response
leaves its blobs where they are: no route serves a blob by its hash, but the bytes stay stored
until an operator removes them (README, "Attachments").
"""

import asyncio
import logging
import os
import tempfile
from collections.abc import Collection, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Protocol, TypeVar

from chatkeep.attachments import (
    ATTACHMENT_FIELDS,
    BLOBS_KEY,
    AttachmentError,
    Inline,
    encoded,
    has_attachments,
    images_of,
    replace_inline,
    sha256,
)
from chatkeep.domain import AttachedMessage, Message, NewMessage, Role, StoredResponse
from chatkeep.errors import StoreUnavailableError

log = logging.getLogger(__name__)

UNAVAILABLE_RETRY_SECONDS = 5.0
Item = dict[str, Any]
M = TypeVar("M", bound=NewMessage | Message)


@dataclass(slots=True, frozen=True)
class Blob:
    sha256: str
    data: bytes


class BlobStore(Protocol):
    async def put(self, blobs: Sequence[Blob]) -> None:
        """Keep each blob under its hash, durably before returning; one kept already is left as it is.
        Raises StoreUnavailableError when they cannot be kept."""
        ...

    async def get(self, hashes: Collection[str]) -> dict[str, bytes]:
        """The kept blobs among `hashes`, by hash; a missing one is absent."""
        ...


class MemoryBlobs:
    """Blobs in this process's memory, gone on restart, as the memory store's messages are."""

    def __init__(self) -> None:
        self._blobs: dict[str, bytes] = {}

    async def put(self, blobs: Sequence[Blob]) -> None:
        for blob in blobs:
            self._blobs.setdefault(blob.sha256, blob.data)

    async def get(self, hashes: Collection[str]) -> dict[str, bytes]:
        return {digest: self._blobs[digest] for digest in hashes if digest in self._blobs}


class DirectoryBlobs:
    """Blobs as files of one directory, each named by its hash and written atomically (a temporary
    file renamed into place, after an fsync), so a reader finds a whole blob or none, and several
    processes or servers sharing the directory (a network file system) write the same bytes alike."""

    def __init__(self, directory: str | Path) -> None:
        self._directory = Path(directory)
        self._directory.mkdir(parents=True, exist_ok=True)

    async def put(self, blobs: Sequence[Blob]) -> None:
        try:
            await asyncio.to_thread(self._write, blobs)
        except OSError as error:
            log.warning("cannot write blobs to %s: %s", self._directory, error)
            raise StoreUnavailableError(
                "the attachments' directory cannot be written", retry_after=UNAVAILABLE_RETRY_SECONDS
            ) from error

    async def get(self, hashes: Collection[str]) -> dict[str, bytes]:
        try:
            return await asyncio.to_thread(self._read, hashes)
        except OSError as error:
            log.warning("cannot read blobs from %s: %s", self._directory, error)
            raise StoreUnavailableError(
                "the attachments' directory cannot be read", retry_after=UNAVAILABLE_RETRY_SECONDS
            ) from error

    def _write(self, blobs: Sequence[Blob]) -> None:
        written = False
        for blob in blobs:
            target = self._directory / blob.sha256
            if target.exists():
                continue
            descriptor, temporary = tempfile.mkstemp(dir=self._directory, prefix=".incoming-")
            try:
                with os.fdopen(descriptor, "wb") as file:
                    file.write(blob.data)
                    file.flush()
                    os.fsync(file.fileno())
                os.replace(temporary, target)
            except BaseException:
                Path(temporary).unlink(missing_ok=True)
                raise
            written = True
        if written:  # the renames themselves survive a crash once the directory is synced
            directory = os.open(self._directory, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)

    def _read(self, hashes: Collection[str]) -> dict[str, bytes]:
        found = {}
        for digest in hashes:
            try:
                found[digest] = (self._directory / digest).read_bytes()
            except FileNotFoundError:
                continue
        return found


class Attachments:
    """What a store does with attachments: keeps their bytes in `blobs` as messages (and responses'
    input items) are stored, and gives them back as sent when they are read."""

    def __init__(self, blobs: BlobStore) -> None:
        self._blobs = blobs

    async def kept(self, messages: Sequence[M]) -> list[M]:
        """`messages` as stored: the bytes of their attachments put in the blob store, their items
        referencing them. A message without attachments is itself."""
        blobs: dict[str, Blob] = {}
        kept = [
            replace(message, item=_kept_item(message.item, blobs))
            if message.item is not None and has_attachments(message.item)
            else message
            for message in messages
        ]
        if blobs:
            await self._blobs.put(list(blobs.values()))
        return kept

    async def restored(self, messages: list[Message]) -> list[Message]:
        """Stored messages as sent: each marked item with its attachments' text rebuilt from its blobs."""
        if not needs_restoring(messages):
            return messages
        found = await self._blobs.get({digest for m in messages if m.item for digest in m.item.get(BLOBS_KEY, ())})
        return [as_sent(m, _restored_item(m.item, found)) if m.item and BLOBS_KEY in m.item else m for m in messages]

    async def kept_items(self, items: list[Item]) -> list[Item]:
        """Conversation items (a response's input) as stored, as `kept` stores messages' items."""
        blobs: dict[str, Blob] = {}
        kept = [_kept_item(item, blobs) if has_attachments(item) else item for item in items]
        if blobs:
            await self._blobs.put(list(blobs.values()))
        return kept

    async def kept_response(self, response: StoredResponse) -> StoredResponse:
        """A response with its input items as stored (`kept_items`): the response itself, not a
        copy, when none of them holds an attachment (as almost none do)."""
        if not any(has_attachments(item) for item in response.input_items):
            return response
        return replace(response, input_items=await self.kept_items(response.input_items))

    async def restored_items(self, items: list[Item]) -> list[Item]:
        marked = [item for item in items if BLOBS_KEY in item]
        if not marked:
            return items
        found = await self._blobs.get({digest for item in marked for digest in item[BLOBS_KEY]})
        return [_restored_item(item, found) if BLOBS_KEY in item else item for item in items]


def needs_restoring(messages: Sequence[Message]) -> bool:
    """Whether any of `messages` has an item a store marked as holding attachments (cheap: one key each)."""
    return any(message.item is not None and BLOBS_KEY in message.item for message in messages)


def as_sent(message: Message, item: Item | None) -> Message:
    """`message` with `item` as its client sent it; a user message with images is an AttachedMessage,
    which lists them (the native API's `images`)."""
    images = tuple(images_of(item)) if item is not None and message.role is Role.USER else ()
    if not images:
        return replace(message, item=item)
    values = {field.name: getattr(message, field.name) for field in fields(Message)}
    return AttachedMessage(**(values | {"item": item, "images": images}))


def appended_as_sent(stored: Sequence[Message], sent: Sequence[NewMessage]) -> list[Message]:
    """Messages an append stored (their items as kept) with the items the caller gave them."""
    return [
        as_sent(message, new.item) if new.item is not None and has_attachments(new.item) else message
        for message, new in zip(stored, sent, strict=True)
    ]


def _kept_item(item: Item, blobs: dict[str, Blob]) -> Item:
    """`item` with each attachment's bytes referenced, not inline; the blobs it needs added to `blobs`."""
    referenced: list[str] = []

    def reference(data: Inline) -> object:
        try:
            raw = data.decoded()
        except AttachmentError:  # in an item the API keeps verbatim without reading it: kept as it came
            return data.prefix + data.payload
        digest = sha256(raw)
        blobs.setdefault(digest, Blob(digest, raw))
        referenced.append(digest)
        return {"blob": digest, "prefix": data.prefix}

    kept = replace_inline(item, reference)
    kept[BLOBS_KEY] = sorted(set(referenced))
    return kept


def _restored_item(item: Item, found: dict[str, bytes]) -> Item:
    """A kept item as it was sent: each referenced attachment's text rebuilt from its blob."""
    restored = {name: value for name, value in item.items() if name != BLOBS_KEY}
    content = restored.get("content")
    if isinstance(content, list):
        restored["content"] = [_restored_part(part, found) for part in content]
    return restored


def _restored_part(part: Any, found: dict[str, bytes]) -> Any:
    field = ATTACHMENT_FIELDS.get(part.get("type", "")) if isinstance(part, dict) else None
    reference = part.get(field) if field is not None else None
    if not isinstance(reference, dict):
        return part
    data = found.get(reference["blob"])
    if data is None:
        log.warning("the blob %s of a stored attachment is missing; it reads back empty", reference["blob"])
    return {**part, field: reference["prefix"] + (encoded(data) if data is not None else "")}
