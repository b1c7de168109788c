"""Requests of OpenAI's API read into chatkeep's terms, or refused with a 400 naming the field.

Tools and the text format are translated to their Chat Completions forms, which is what the
upstream speaks; what has no such form (OpenAI's hosted tools, stored prompts) is refused
rather than silently dropped. Every value is checked to be storable:
no NUL characters (PostgreSQL refuses them), no integers beyond 64 bits, no NaN, bounded depth.
"""

import math
from typing import Any

from chatkeep.config import Settings
from chatkeep.domain import NewMessage, Role
from chatkeep.errors import InvalidInputError
from chatkeep.idempotency import IdempotencyKey
from chatkeep.llm.base import NO_OPTIONS, CallOptions
from chatkeep.openai_compat.items import check_attachment_sizes, check_item_sizes, stored_from_item
from chatkeep.openai_compat.response_objects import ResponseRequest
from chatkeep.openai_compat.schemas import ConversationRef, ResponseCreate

MAX_DEPTH = 32
TOOL_CHOICES = ("auto", "none", "required")
INT64 = 2**63
NUL_TEXT = "text may not contain NUL characters"


def read_items(raw: list[Any], param: str, settings: Settings) -> list[NewMessage]:
    """Input items as stored, each checked (its text, and the JSON of one kept verbatim, within
    CHATKEEP_MAX_MESSAGE_CHARS; its images and files within CHATKEEP_MAX_ATTACHMENT_BYTES each and
    CHATKEEP_MAX_REQUEST_ATTACHMENT_BYTES in all). Raises InvalidInputError naming the item (or the
    part) at fault. Every route that stores items reads them here: conversations, items appended,
    and a response's input."""
    max_chars = settings.max_message_chars
    check_storable(raw, param)
    items = [stored_from_item(item, f"{param}[{n}]") for n, item in enumerate(raw)]
    for n, item in enumerate(items):
        if len(item.content) > max_chars:
            raise InvalidInputError(f"an item's text may have at most {max_chars} characters", param=f"{param}[{n}]")
    check_item_sizes(items, param, max_chars=max_chars)
    check_attachment_sizes(
        items, param, each=settings.max_attachment_bytes, total=settings.max_request_attachment_bytes
    )
    return items


def read_response_request(body: ResponseCreate, settings: Settings, idempotency_key: str | None) -> ResponseRequest:
    """What a `POST /v1/responses` asks, with its Idempotency-Key if sent. Raises InvalidInputError."""
    _check_storable_fields(body)
    key = None
    if idempotency_key is not None:
        fingerprinted = body.model_dump(mode="json", exclude={"stream"})
        key = IdempotencyKey.for_request(idempotency_key, "POST /v1/responses", fingerprinted)
    if body.conversation is not None and body.previous_response_id is not None:
        raise InvalidInputError(
            "`conversation` and `previous_response_id` cannot be used together", param="previous_response_id"
        )
    if body.background and body.store is False:
        raise InvalidInputError("background responses are kept: `store` cannot be false with them", param="background")
    if body.prompt is not None:
        raise InvalidInputError("stored prompts are not supported; send `instructions` instead", param="prompt")
    if body.input is None:  # counting the tokens of a conversation or chain as it is
        inputs = []
    elif isinstance(body.input, str):
        if len(body.input) > settings.max_message_chars:
            raise InvalidInputError(f"`input` may have at most {settings.max_message_chars} characters", param="input")
        inputs = [NewMessage(Role.USER, body.input)]
    else:
        inputs = read_items(body.input, "input", settings)
    conversation = body.conversation.id if isinstance(body.conversation, ConversationRef) else body.conversation
    options = _call_options(body, settings)
    echo = {
        "max_output_tokens": body.max_output_tokens,
        "metadata": body.metadata or {},
        "parallel_tool_calls": True if body.parallel_tool_calls is None else body.parallel_tool_calls,
        "temperature": body.temperature,
        "top_p": body.top_p,
        "tool_choice": body.tool_choice or "auto",
        "tools": body.tools or [],
        "text": body.text or {"format": {"type": "text"}},
        "truncation": body.truncation or "disabled",
        "user": body.user,
    }
    return ResponseRequest(
        inputs=inputs,
        conversation=conversation,
        previous_response_id=body.previous_response_id,
        instructions=body.instructions,
        options=options,
        store=body.store is not False,
        echo=echo,
        key=key,
        background=body.background is True,
    )


def _call_options(body: ResponseCreate, settings: Settings) -> CallOptions:
    """What the request asks of the model beyond its prompt: NO_OPTIONS (as a native turn asks,
    which the LLM client sends without a look at each knob) when it asks nothing."""
    tools = tuple(_tool(tool, f"tools[{n}]") for n, tool in enumerate(body.tools or []))
    tool_choice = _tool_choice(body.tool_choice)
    # A served model named wins over the conversation's own (the turn engine's `model_for`).
    model = body.model if body.model in settings.models else None
    response_format = _response_format(body.text)
    knobs = (model, body.parallel_tool_calls, body.temperature, body.top_p, body.max_output_tokens, response_format)
    if not tools and knobs.count(None) == len(knobs):  # every knob left to the model
        return NO_OPTIONS
    return CallOptions(
        model=model,
        tools=tools,
        tool_choice=tool_choice if tools else None,
        parallel_tool_calls=body.parallel_tool_calls,
        temperature=body.temperature,
        top_p=body.top_p,
        max_tokens=body.max_output_tokens,
        response_format=response_format,
    )


# The fields whose values the schema leaves free: JSON of any shape, or text that may hold NUL.
FREE_FIELDS = ("input", "instructions", "model", "previous_response_id", "user", "tools", "tool_choice", "text")


def _check_storable_fields(body: ResponseCreate) -> None:
    for name in FREE_FIELDS:
        value = getattr(body, name)
        if value is not None:
            check_storable(value, name)
    if body.conversation is not None:
        conversation = body.conversation if isinstance(body.conversation, str) else body.conversation.id
        check_storable(conversation, "conversation")


def check_storable(value: Any, param: str, depth: int = 0) -> None:
    """Raise InvalidInputError, naming where, for what no store can keep."""
    where = param or None
    if depth > MAX_DEPTH:
        raise InvalidInputError(f"values may nest at most {MAX_DEPTH} deep", param=where)
    if isinstance(value, str):  # the commonest value (and every key): tested first
        if "\x00" in value:
            raise InvalidInputError(NUL_TEXT, param=where)
    elif isinstance(value, dict):
        for name, inner in value.items():
            check_storable(name, param, depth + 1)
            check_storable(inner, f"{param}.{name}" if param else str(name), depth + 1)
    elif isinstance(value, list):
        for n, inner in enumerate(value):
            check_storable(inner, f"{param}[{n}]", depth + 1)
    else:
        problem = _unstorable(value)
        if problem is not None:
            raise InvalidInputError(problem, param=where)


def _unstorable(value: Any) -> str | None:
    if isinstance(value, int) and not isinstance(value, bool) and not -INT64 <= value < INT64:
        return "integers must fit in 64 bits"
    if isinstance(value, float) and not math.isfinite(value):
        return "numbers must be finite"
    return None


def _tool(tool: dict[str, Any], param: str) -> dict[str, Any]:
    """A function tool in the Chat Completions shape."""
    if tool.get("type") != "function":
        raise InvalidInputError("only function tools are supported", param=f"{param}.type")
    if not isinstance(tool.get("name"), str) or not tool["name"]:
        raise InvalidInputError("a function tool needs a `name`", param=f"{param}.name")
    function = {"name": tool["name"]}
    for field in ("description", "parameters", "strict"):
        if tool.get(field) is not None:
            function[field] = tool[field]
    return {"type": "function", "function": function}


def _tool_choice(choice: str | dict[str, Any] | None) -> str | dict[str, Any] | None:
    if choice is None or choice in TOOL_CHOICES:
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise InvalidInputError(
        "`tool_choice` must be auto, none, required, or a function as {type: function, name}", param="tool_choice"
    )


def _response_format(text: dict[str, Any] | None) -> dict[str, Any] | None:
    """The Chat Completions `response_format` of the Responses API's `text.format`."""
    shape = (text or {}).get("format")
    if shape is None:
        return None
    kind = shape.get("type") if isinstance(shape, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema" and isinstance(shape.get("name"), str) and isinstance(shape.get("schema"), dict):
        schema = {name: shape[name] for name in ("name", "schema", "description", "strict") if name in shape}
        return {"type": "json_schema", "json_schema": schema}
    raise InvalidInputError(
        "`text.format` must be text, json_object, or json_schema with a name and a schema", param="text.format"
    )
