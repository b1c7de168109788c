"""Small, real attachments for tests: a PNG, a JPEG's first bytes, a PDF, as bytes and data: URLs;
and what a SQL store keeps of them (its `blobs` table, its messages' items)."""

import base64
import sqlite3
import struct
import zlib

import asyncpg

from chatkeep.store.urls import sqlite_location


def png(width: int = 2, height: int = 2, rgb: tuple[int, int, int] = (220, 40, 40)) -> bytes:
    """A real PNG of one colour, which a browser shows."""

    def part(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + bytes(rgb) * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + part(b"IHDR", header) + part(b"IDAT", zlib.compress(rows)) + part(b"IEND", b"")


PNG = png()
OTHER_PNG = png(rgb=(40, 40, 220))
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(32)
PDF = b"%PDF-1.4\n1 0 obj << >> endobj\ntrailer << >>\n%%EOF\n"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def data_url(data: bytes, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64,{b64(data)}"


async def sql_rows(url: str, query: str) -> list[tuple[object, ...]]:
    """The rows `query` selects from the SQL store `url` names."""
    if url.startswith("sqlite:"):
        db = sqlite3.connect(sqlite_location(url)[0])
        try:
            return [tuple(row) for row in db.execute(query)]
        finally:
            db.close()
    connection = await asyncpg.connect(url)
    try:
        return [tuple(row) for row in await connection.fetch(query)]
    finally:
        await connection.close()
