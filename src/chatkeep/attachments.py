"""Attachments (images and files) as clients send them: data URLs and https URLs, read and checked.

A client sends an image as a `data:` URL (its bytes inline, base64) or an https URL, and a file
as a data URL or bare base64. Inline bytes are decoded strictly (canonical base64 only), so
that what a store keeps, the bytes, gives back the very text the client sent; an image's bytes
must be what its media type says (PNG, JPEG, GIF or WebP, by their signatures). A URL is never
fetched by chatkeep: an https one is passed on to the upstream as it is, any other refused.
Pure functions, no I/O: the API checks with them, the stores keep bytes with them.
"""

import base64
import binascii
import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

# The media types an image may have, with the signatures their bytes begin with (WebP: RIFF....WEBP).
IMAGE_SIGNATURES = {
    "image/png": (b"\x89PNG\r\n\x1a\n",),
    "image/jpeg": (b"\xff\xd8\xff",),
    "image/gif": (b"GIF87a", b"GIF89a"),
    "image/webp": (b"RIFF",),
}
MAX_URL_CHARS = 8192
_MEDIA_TYPE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]*/[a-z0-9][a-z0-9!#$&^_.+-]*", re.IGNORECASE)
_BASE64 = re.compile(rb"[A-Za-z0-9+/]*={0,2}")


Replacement = Callable[["Inline"], object]


class AttachmentError(ValueError):
    """Why a value cannot be an attachment; the caller names where it was."""


@dataclass(slots=True, frozen=True)
class Inline:
    """Bytes sent inline: the text before them (`data:image/png;base64,`, or "" for bare base64),
    their base64 text as sent, and the media type the prefix names (None for bare base64)."""

    prefix: str
    payload: str
    media_type: str | None

    @property
    def size(self) -> int:
        """The decoded size, from the base64 text alone (it is canonical: checked by `decoded`)."""
        return len(self.payload) * 3 // 4 - self.payload[-2:].count("=")

    def decoded(self) -> bytes:
        """The bytes. Raises AttachmentError unless the payload is canonical base64, which
        re-encodes to itself: the text a store rebuilds from the bytes is then the text sent."""
        raw = self.payload.encode("ascii", errors="replace")
        if len(raw) % 4 or not _BASE64.fullmatch(raw):
            raise AttachmentError("the data is not base64 (A-Z, a-z, 0-9, + and /, padded with = to a multiple of 4)")
        try:
            data = base64.b64decode(raw, validate=True)
        except binascii.Error as error:
            raise AttachmentError(f"the data is not base64: {error}") from None
        if base64.b64encode(data) != raw:
            raise AttachmentError("the data is not canonical base64 (its last character carries stray bits)")
        return data


def inline(value: str, *, bare_allowed: bool = False) -> Inline:
    """A data URL (`data:<type>[;params];base64,<data>`), or with `bare_allowed` bare base64, split
    into its parts. Raises AttachmentError for anything else."""
    if not value.startswith("data:"):
        if bare_allowed:
            return Inline("", value, None)
        raise AttachmentError("expected a data: URL")
    header, comma, payload = value.partition(",")
    params = header[len("data:") :].split(";")
    if not comma or params[-1] != "base64":
        raise AttachmentError("a data: URL must carry base64 data (`data:<media type>;base64,<data>`)")
    media_type = params[0].lower()
    if not _MEDIA_TYPE.fullmatch(media_type):
        raise AttachmentError("a data: URL must name its media type (`data:image/png;base64,...`)")
    return Inline(header + ",", payload, media_type)


def image_bytes(value: Inline) -> bytes:
    """An inline image's bytes, checked to be an image of the media type it names. Raises AttachmentError."""
    kinds = ", ".join(IMAGE_SIGNATURES)
    signatures = IMAGE_SIGNATURES.get(value.media_type or "")
    if signatures is None:
        raise AttachmentError(f"an image must be one of {kinds}, not {value.media_type or 'bare base64'}")
    data = value.decoded()
    webp = value.media_type != "image/webp" or data[8:12] == b"WEBP"
    if not data.startswith(signatures) or not webp:
        raise AttachmentError(f"the data is not a {value.media_type} image")
    return data


def check_https_url(url: str) -> None:
    """Raise AttachmentError unless `url` is an https URL with a host: the only URLs passed on
    (chatkeep fetches none; `file:`, `http:` and the like would ask the upstream to)."""
    if len(url) > MAX_URL_CHARS:
        raise AttachmentError(f"a URL may have at most {MAX_URL_CHARS} characters")
    try:
        parts = urlsplit(url)
    except ValueError:
        raise AttachmentError("not a URL") from None
    if parts.scheme.lower() != "https" or not parts.hostname or any(c.isspace() for c in url):
        raise AttachmentError("expected an https:// URL or a data: URL")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def encoded(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# The part types that carry an attachment, and the field that holds it.
ATTACHMENT_FIELDS = {"input_image": "image_url", "input_file": "file_data"}
BLOBS_KEY = "_chatkeep_blobs"  # a stored item's mark (store/blobs.py): the hashes of the blobs it references


def inline_in(part: object) -> tuple[str, Inline] | None:
    """The field of a content part that holds bytes inline, and those bytes; None for any other part
    (text, an image by https URL). Checks nothing: the API checked the part before it was stored."""
    if not isinstance(part, dict):
        return None
    field = ATTACHMENT_FIELDS.get(part.get("type", ""))
    if field is None:
        return None
    value = part.get(field)
    if not isinstance(value, str) or not (value.startswith("data:") or field == "file_data"):
        return None
    try:
        return field, inline(value, bare_allowed=True)
    except AttachmentError:
        return None


def has_attachments(item: dict[str, object]) -> bool:
    """Whether a conversation item is a message with an image or a file part."""
    content = item.get("content")
    return isinstance(content, list) and any(
        isinstance(part, dict) and part.get("type") in ATTACHMENT_FIELDS for part in content
    )


def replace_inline(item: dict[str, object], replacement: Replacement) -> dict[str, object]:
    """`item` with the value of each field that holds bytes inline replaced by `replacement(inline)`
    (a copy: `item` is left as it is)."""
    content = item.get("content")
    if not isinstance(content, list):
        return item
    parts = []
    for part in content:
        found = inline_in(part)
        if found is not None:
            field, data = found
            assert isinstance(part, dict)
            part = {**part, field: replacement(data)}
        parts.append(part)
    return {**item, "content": parts}


def images_of(item: dict[str, object]) -> list[str]:
    """The URLs (data: or https:) of a message item's images, in order."""
    content = item.get("content")
    if not isinstance(content, list):
        return []
    return [
        part["image_url"]
        for part in content
        if isinstance(part, dict) and part.get("type") == "input_image" and isinstance(part.get("image_url"), str)
    ]
