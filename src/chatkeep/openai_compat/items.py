"""Conversation items (OpenAI's Conversations and Responses APIs) as chatkeep keeps them.

A stored message is a conversation item. A plain user or assistant text message keeps only its
role and text, as the native API's messages do; any other item (a function call or its output,
reasoning, a message with another role or with more than text) is kept verbatim in
`Message.item`, with its plain words in `content` for the native API, summaries and the token
budget. Two conversions live here: an input item to what is stored, and a stored message to the
item clients read back (how stored items go upstream is the context's: context.py). A message's
content parts are checked here too (`check_parts`): text, and images and files, which go
upstream as Chat Completions parts; what has no such form is refused, naming the part, never
turned into text. Their bytes are kept apart from the item by the store (store/blobs.py).

Every item stored obeys CHATKEEP_MAX_MESSAGE_CHARS: a plain message's text, and an item kept
verbatim, of any type, its JSON as stored (`check_item_sizes`), text and framing alike.
"""

from collections.abc import Sequence
from typing import Any

import orjson

from chatkeep.attachments import (
    ATTACHMENT_FIELDS,
    BLOBS_KEY,
    AttachmentError,
    Inline,
    check_https_url,
    image_bytes,
    inline,
    inline_in,
    replace_inline,
)
from chatkeep.domain import Message, NewMessage, Role, new_id
from chatkeep.errors import AttachmentTooLargeError, InvalidInputError

TEXT_PARTS = {"input_text", "output_text", "text"}
MESSAGE_PARTS = TEXT_PARTS | {"refusal", *ATTACHMENT_FIELDS}
IMAGE_DETAILS = ("low", "high", "auto", "original")
PLAIN_MESSAGE_KEYS = {"type", "role", "content", "id", "status"}
PLAIN_PART_KEYS = {"type", "text", "annotations", "logprobs"}
INPUT_ROLES = {"user", "system", "developer"}
# OpenAI's id prefix of each item type it names; messages (and other kinds) get the store's `msg_` ids.
ID_PREFIXES = {
    "function_call": "fc",
    "function_call_output": "fco",
    "reasoning": "rs",
    "custom_tool_call": "ctc",
    "custom_tool_call_output": "ctco",
}


def stored_from_item(item: Any, param: str) -> NewMessage:
    """What an input item stores: a plain message, or the item verbatim with its plain words.

    Raises InvalidInputError, naming `param`, for an item that is not one.
    """
    if not isinstance(item, dict):
        raise InvalidInputError("an input item must be an object", param=param)
    if BLOBS_KEY in item:  # a stored item's mark: sent by a client, it would name blobs it never sent
        raise InvalidInputError(f"`{BLOBS_KEY}` is chatkeep's own field of a stored item", param=f"{param}.{BLOBS_KEY}")
    kind = item.get("type", "message")
    if not isinstance(kind, str):
        raise InvalidInputError("an input item's type must be a string", param=f"{param}.type")
    if kind == "message":
        return _message(item, param)
    item_id = new_id(ID_PREFIXES[kind]) if kind in ID_PREFIXES else None
    if kind == "function_call":
        _require_strings(item, param, "call_id", "name", "arguments")
        return NewMessage(Role.ASSISTANT, f"{item['name']}({item['arguments']})", item=item, id=item_id)
    if kind == "function_call_output":
        _require_strings(item, param, "call_id")
        return NewMessage(Role.USER, _output_text(item.get("output"), f"{param}.output"), item=item, id=item_id)
    if kind == "reasoning":
        summary = item.get("summary")
        parts = summary if isinstance(summary, list) else []
        return NewMessage(Role.ASSISTANT, _text_of(parts), item=item, id=item_id)
    if kind == "item_reference":
        _require_strings(item, param, "id")  # resolved to the item it names before the turn (responses.py)
    # another kind: kept and listed back, never sent upstream
    return NewMessage(Role.ASSISTANT, "", item=item, id=item_id)


def referenced(inputs: Sequence[NewMessage]) -> set[str]:
    """The ids the `item_reference` inputs name: each stands for an earlier item of that id."""
    return {message.item["id"] for message in inputs if message.item is not None and _is_reference(message.item)}


def with_references(
    inputs: Sequence[NewMessage], found: dict[str, dict[str, Any]], param: str, where: str
) -> list[NewMessage]:
    """`inputs` with each `item_reference` replaced by a copy of the item it names, from `found`.
    Raises InvalidInputError naming a reference to an item not found (`where` says where it was looked for)."""
    resolved: list[NewMessage] = []
    for n, message in enumerate(inputs):
        if message.item is None or not _is_reference(message.item):
            resolved.append(message)
            continue
        item = found.get(message.item["id"])
        if item is None:
            raise InvalidInputError(f"no item {message.item['id']!r} in {where}", param=f"{param}[{n}].id")
        resolved.append(
            stored_from_item({name: value for name, value in item.items() if name != "id"}, f"{param}[{n}]")
        )
    return resolved


def _is_reference(item: dict[str, Any]) -> bool:
    return item.get("type") == "item_reference"


def check_item_sizes(items: Sequence[NewMessage], param: str, *, max_chars: int) -> None:
    """Raise InvalidInputError, naming the item (`param[n]`), for an item kept verbatim whose JSON
    takes more than `max_chars` characters; a plain message keeps only its text, held to the same
    bound where it is read."""
    for n, item in enumerate(items):
        if item.item is None:
            continue
        encoded = orjson.dumps(item.item)
        # A character takes at least one byte: only JSON of more bytes than the bound needs counting.
        if len(encoded) > max_chars:  # its attachments' bytes are kept apart: they count by their own limits
            encoded = orjson.dumps(replace_inline(item.item, lambda data: data.prefix))
        if len(encoded) > max_chars and len(encoded.decode()) > max_chars:
            raise InvalidInputError(
                f"an item may take at most {max_chars} characters as JSON; this one takes {len(encoded.decode())}",
                param=f"{param}[{n}]",
            )


def item_from_message(message: Message) -> dict[str, Any]:
    """The conversation item a stored message is read back as, with the message's id as its id.

    An item kept verbatim is read back as OpenAI reads it in: with its `type` (a message when it
    had none) and a message's content as a list of parts (a string is one text part)."""
    if message.item is not None:
        item = {"type": "message", **message.item, "id": message.id}
        if item["type"] == "message":
            item["content"] = _typed_parts(item.get("content"), item.get("role"))
        if item["type"] in ("message", "function_call", "function_call_output"):
            item.setdefault("status", "completed")
        return item
    if message.role is Role.USER:
        content: dict[str, Any] = {"type": "input_text", "text": message.content}
    else:
        content = {"type": "output_text", "text": message.content, "annotations": [], "logprobs": []}
    return {  # `_value_`: an enum member's value as a plain attribute (`.value` is a property, slower)
        "type": "message",
        "id": message.id,
        "role": message.role._value_,
        "status": message.status._value_,
        "content": [content],
    }


def _typed_parts(content: Any, role: Any) -> Any:
    """A message's content as a list of parts: a string becomes the text part of its role, and an
    assistant's text parts carry the `annotations` OpenAI's clients require."""
    if isinstance(content, str):
        content = [{"type": "output_text" if role == "assistant" else "input_text", "text": content}]
    if role == "assistant" and isinstance(content, list):
        content = [
            {**part, "annotations": part.get("annotations") or []}
            if isinstance(part, dict) and part.get("type") == "output_text"
            else part
            for part in content
        ]
    return content


def _message(item: dict[str, Any], param: str) -> NewMessage:
    role = item.get("role")
    if role not in ("user", "assistant", "system", "developer"):
        raise InvalidInputError("a message's role must be user, assistant, system or developer", param=f"{param}.role")
    content = item.get("content")
    if isinstance(content, str):
        text = content
    elif isinstance(content, list):
        check_parts(content, role, f"{param}.content")
        text = _text_of(content)
    else:
        raise InvalidInputError(
            "a message's content must be a string or a list of content parts", param=f"{param}.content"
        )
    stored_role = Role.ASSISTANT if role == "assistant" else Role.USER
    plain = role in ("user", "assistant") and set(item) <= PLAIN_MESSAGE_KEYS and _is_plain(content, role)
    return NewMessage(stored_role, text, item=None if plain else item)


def _is_plain(content: str | list[Any], role: str) -> bool:
    """Whether a message's content is exactly one text part (or a string) that the plain form gives back."""
    if isinstance(content, str):
        return True
    if len(content) != 1 or not isinstance(content[0], dict):
        return False
    part = content[0]
    expected = "input_text" if role == "user" else "output_text"
    return (
        part.get("type") == expected
        and set(part) <= PLAIN_PART_KEYS
        and not part.get("annotations")
        and not part.get("logprobs")
    )


def _text_of(parts: list[Any]) -> str:
    """The text of content (or summary) parts, joined; parts without text (images, files) say what they are."""
    texts = []
    for part in parts:
        if isinstance(part, dict) and part.get("type") in TEXT_PARTS | {"summary_text", "reasoning_text", "refusal"}:
            texts.append(str(part.get("text") or part.get("refusal") or ""))
        elif isinstance(part, dict):
            texts.append(f"[{part.get('type', 'part')}]")
    return "\n".join(texts)


def _output_text(output: Any, param: str) -> str:
    if isinstance(output, str):
        return output
    if isinstance(output, list):
        for n, part in enumerate(output):
            if isinstance(part, dict) and part.get("type") in ATTACHMENT_FIELDS:
                raise InvalidInputError(
                    "a function call's output goes upstream as a Chat Completions tool message, which takes text"
                    f" alone; send the {part['type']} in a user message",
                    param=f"{param}[{n}]",
                )
        return _text_of(output)
    raise InvalidInputError("a function call's output must be a string or a list of content parts", param=param)


def _require_strings(item: dict[str, Any], param: str, *names: str) -> None:
    for name in names:
        if not isinstance(item.get(name), str):
            raise InvalidInputError(f"a {item['type']} item needs a string `{name}`", param=f"{param}.{name}")


# Content parts: text, and the attachments (images, files) that go upstream as Chat Completions parts.


def check_parts(parts: list[Any], role: str, param: str) -> None:
    """Raise InvalidInputError, naming the part, for one that cannot go upstream: a type Chat
    Completions has no part for, an attachment outside a user message (Chat Completions takes
    images and files in user messages alone), or an attachment that is not one (`_check_image`,
    `_check_file`)."""
    for n, part in enumerate(parts):
        where = f"{param}[{n}]"
        if not isinstance(part, dict):
            raise InvalidInputError("a content part must be an object", param=where)
        kind = part.get("type")
        if kind not in MESSAGE_PARTS:
            raise InvalidInputError(
                f"a content part of type {kind!r} has no Chat Completions form; chatkeep sends text,"
                " input_image and input_file parts",
                param=f"{where}.type",
            )
        if kind in ATTACHMENT_FIELDS and role != "user":
            raise InvalidInputError(f"only a user message may carry an {kind} part", param=where)
        if kind == "input_image":
            _check_image(part, where)
        elif kind == "input_file":
            _check_file(part, where)


def _check_image(part: dict[str, Any], param: str) -> None:
    """An image by `image_url`: an https URL (passed on, never fetched here) or a data: URL of a
    PNG, JPEG, GIF or WebP image."""
    if part.get("file_id") is not None:
        raise InvalidInputError(
            "`file_id` names a file of OpenAI's Files API, which chatkeep does not serve;"
            " send the image as `image_url`, a data: URL or an https:// URL",
            param=f"{param}.file_id",
        )
    url = part.get("image_url")
    if not isinstance(url, str):
        raise InvalidInputError(
            "an input_image needs `image_url`: a data: URL or an https:// URL", param=f"{param}.image_url"
        )
    detail = part.get("detail")
    if detail is not None and detail not in IMAGE_DETAILS:
        raise InvalidInputError(f"`detail` must be one of {', '.join(IMAGE_DETAILS)}", param=f"{param}.detail")
    check_image_url(url, f"{param}.image_url")


def check_image_url(url: str, param: str) -> None:
    """Raise InvalidInputError, naming `param`, unless `url` is an https URL or a data: URL of a PNG,
    JPEG, GIF or WebP image (its bytes checked to be one)."""
    try:
        if url.startswith("data:"):
            image_bytes(inline(url))
        else:
            check_https_url(url)
    except AttachmentError as error:
        raise InvalidInputError(str(error), param=param) from None


def _check_file(part: dict[str, Any], param: str) -> None:
    """A file by `file_data` (a data: URL or bare base64) and `filename`: Chat Completions' file
    part takes nothing else chatkeep could honour."""
    if part.get("file_id") is not None:
        raise InvalidInputError(
            "`file_id` names a file of OpenAI's Files API, which chatkeep does not serve; send `file_data`",
            param=f"{param}.file_id",
        )
    if part.get("file_url") is not None:
        raise InvalidInputError(
            "Chat Completions has no form for a file by URL (and chatkeep fetches none); send the file as `file_data`",
            param=f"{param}.file_url",
        )
    data = part.get("file_data")
    if not isinstance(data, str) or not data:
        raise InvalidInputError("an input_file needs `file_data`: a data: URL or base64", param=f"{param}.file_data")
    filename = part.get("filename")
    if not isinstance(filename, str) or not filename:
        raise InvalidInputError("an input_file with `file_data` needs its `filename`", param=f"{param}.filename")
    try:
        inline(data, bare_allowed=True).decoded()
    except AttachmentError as error:
        raise InvalidInputError(str(error), param=f"{param}.file_data") from None


def check_attachment_sizes(items: Sequence[NewMessage], param: str, *, each: int, total: int) -> None:
    """Raise AttachmentTooLargeError, naming the part, for an attachment sent inline that decodes
    to more than `each` bytes, or one that takes the request's past `total`."""
    spent = 0
    for n, item in enumerate(items):
        for where, data in _inline_parts(item.item, f"{param}[{n}]"):
            if data.size > each:
                raise AttachmentTooLargeError(
                    f"an attachment may have at most {each} bytes; this one has {data.size}", param=where
                )
            spent += data.size
            if spent > total:
                raise AttachmentTooLargeError(
                    f"the attachments of one request may have at most {total} bytes in all", param=where
                )


def _inline_parts(item: dict[str, Any] | None, param: str) -> list[tuple[str, Inline]]:
    """Each content part of `item` that holds bytes inline, with its param (`input[0].content[1].image_url`)."""
    content = item.get("content") if item is not None else None
    if not isinstance(content, list):
        return []
    found = []
    for n, part in enumerate(content):
        held = inline_in(part)
        if held is not None:
            field, data = held
            found.append((f"{param}.content[{n}].{field}", data))
    return found
