"""Bodies of OpenAI's API under /v1, as OpenAI documents them (`openai/types/conversations`,
`openai/types/responses`).

Requests ignore fields they do not name, as OpenAI's clients send many that chatkeep has no
use for (`include`, `reasoning`, `prompt_cache_key`...); the ones it cannot honour are refused
when read (reading.py). Items are free-form objects here and read one by one (items.py), so
that an error names the item at fault. The answers are documented loosely: their items are
kept verbatim, whatever their type.
"""

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from chatkeep.api.schemas import Metadata
from chatkeep.openai_compat.conversations import MAX_ITEMS_PER_REQUEST

MAX_INPUT_ITEMS = 1000

Items = Annotated[list[dict[str, Any]], Field(max_length=MAX_ITEMS_PER_REQUEST)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)  # no 0 for false, no "1" for 1


class ConversationCreate(_Body):
    items: Items | None = None
    metadata: Metadata | None = None


class ConversationUpdate(_Body):
    metadata: Metadata


class ItemsCreate(_Body):
    items: Annotated[list[dict[str, Any]], Field(min_length=1, max_length=MAX_ITEMS_PER_REQUEST)]


class ConversationRef(_Body):
    id: str


# The most an upstream's `max_tokens` takes: Chat Completions servers read it as a 32-bit integer.
MAX_OUTPUT_TOKENS = 2**31 - 1


class ResponseCreate(_Body):
    model: str | None = None
    input: str | Annotated[list[dict[str, Any]], Field(min_length=1, max_length=MAX_INPUT_ITEMS)]
    instructions: str | None = None
    conversation: str | ConversationRef | None = None
    previous_response_id: str | None = None
    stream: bool | None = None
    store: bool | None = None
    max_output_tokens: Annotated[int, Field(ge=1, le=MAX_OUTPUT_TOKENS)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    metadata: Metadata | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    text: dict[str, Any] | None = None
    truncation: Literal["auto", "disabled"] | None = None
    user: str | None = None
    background: bool | None = None
    prompt: dict[str, Any] | None = None


class InputTokensCount(ResponseCreate):
    """What `POST /v1/responses/input_tokens` counts: a response's request, its input optional."""

    input: str | Annotated[list[dict[str, Any]], Field(min_length=1, max_length=MAX_INPUT_ITEMS)] | None = None  # type: ignore[assignment]


# The answers


class _Answer(BaseModel):
    model_config = ConfigDict(extra="allow")


class ConversationOut(_Answer):
    id: str
    object: Literal["conversation"]
    created_at: int
    metadata: dict[str, str]


class ConversationDeleted(_Answer):
    id: str
    object: Literal["conversation.deleted"]
    deleted: Literal[True]


class ItemList(_Answer):
    object: Literal["list"]
    data: list[dict[str, Any]]
    first_id: str | None
    last_id: str | None
    has_more: bool


class ResponseOut(_Answer):
    id: str
    object: Literal["response"]
    created_at: int
    status: Literal["completed", "incomplete", "in_progress", "failed", "queued", "cancelled"]
    model: str
    output: list[dict[str, Any]]
    usage: dict[str, Any] | None


class InputTokens(_Answer):
    object: Literal["response.input_tokens"]
    input_tokens: int


class ResponseDeleted(_Answer):
    id: str
    object: Literal["response.deleted"]
    deleted: Literal[True]


class ModelOut(_Answer):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(_Answer):
    object: Literal["list"]
    data: list[ModelOut]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIError(BaseModel):
    error: ErrorDetail
