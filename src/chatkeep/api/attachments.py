"""The images of a native message post, checked before anything is stored, and the message item
that carries them: a user message of OpenAI's shape, its text first, then its images, so that
the context, the stores and `/v1` treat it as any message with images (context.py, store/blobs.py)."""

from typing import Any

from chatkeep.attachments import AttachmentError, inline
from chatkeep.config import Settings
from chatkeep.errors import AttachmentTooLargeError
from chatkeep.openai_compat.items import check_image_url


def check_images(images: list[str], settings: Settings) -> None:
    """Raise InvalidInputError naming the image (`images[1]`) that is not a PNG, JPEG, GIF or WebP
    data: URL or an https:// URL, or AttachmentTooLargeError for one over CHATKEEP_MAX_ATTACHMENT_BYTES
    (or all over CHATKEEP_MAX_REQUEST_ATTACHMENT_BYTES)."""
    spent = 0
    for n, url in enumerate(images):
        param = f"images[{n}]"
        size = _inline_size(url)
        if size > settings.max_attachment_bytes:
            raise AttachmentTooLargeError(
                f"an image may have at most {settings.max_attachment_bytes} bytes; this one has {size}", param=param
            )
        spent += size
        if spent > settings.max_request_attachment_bytes:
            raise AttachmentTooLargeError(
                f"the images of one message may have at most {settings.max_request_attachment_bytes} bytes in all",
                param=param,
            )
        check_image_url(url, param)


def _inline_size(url: str) -> int:
    """The bytes a data: URL holds (0 for an https URL, or for what is no data: URL, which the check refuses)."""
    try:
        return inline(url).size if url.startswith("data:") else 0
    except AttachmentError:
        return 0


def image_message(text: str, images: list[str]) -> dict[str, Any]:
    """The conversation item of a user message with images."""
    parts: list[dict[str, Any]] = [{"type": "input_text", "text": text}]
    parts += [{"type": "input_image", "image_url": url, "detail": "auto"} for url in images]
    return {"type": "message", "role": "user", "content": parts}
