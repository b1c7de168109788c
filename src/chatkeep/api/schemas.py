"""Request and response bodies of the native API, and the input limits they enforce.

Limits live in the types so they show in the OpenAPI document; the one limit that is a setting
(`CHATKEEP_MAX_MESSAGE_CHARS`) is checked by the route. Text that cannot be stored or sent on
(NUL characters) is refused here, before anything is stored.
"""

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, WithJsonSchema

from chatkeep.domain import IncompleteReason, Summary

MAX_TITLE_CHARS = 200
MAX_METADATA_PAIRS = 16
MAX_METADATA_KEY_CHARS = 64
MAX_METADATA_VALUE_CHARS = 512
MAX_SYSTEM_PROMPT_CHARS = 32_000

# Patterns rather than validator functions, so the OpenAPI document states the rules too. NUL
# cannot be stored (PostgreSQL text refuses it); single-line fields (a title shown in the chat list)
# take no control characters (C0, DEL, C1), no line or paragraph separator, and none of the
# invisible marks that reorder text around them (bidirectional embeddings, overrides and isolates,
# LRM/RLM/ALM): `"\u202eexe.txt"` would show as "txt.exe".
# Lone surrogates never get this far: the JSON body itself is refused.
NO_NUL = r"^[^\x00]*$"
SINGLE_LINE = r"^[^\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]*$"
NOT_BLANK = r"^[^\x00]*[^\s\x00][^\x00]*$"

Title = Annotated[str, StringConstraints(min_length=1, max_length=MAX_TITLE_CHARS, pattern=SINGLE_LINE)]
MetadataKey = Annotated[str, StringConstraints(min_length=1, max_length=MAX_METADATA_KEY_CHARS, pattern=SINGLE_LINE)]
MetadataValue = Annotated[str, StringConstraints(max_length=MAX_METADATA_VALUE_CHARS, pattern=NO_NUL)]
# Stated by hand: pydantic would put the key pattern in `patternProperties`, which leaves keys
# that do not match it unconstrained in the document (though refused by the validation).
METADATA_SCHEMA = {
    "type": "object",
    "maxProperties": MAX_METADATA_PAIRS,
    "propertyNames": {"minLength": 1, "maxLength": MAX_METADATA_KEY_CHARS, "pattern": SINGLE_LINE},
    "additionalProperties": {"type": "string", "maxLength": MAX_METADATA_VALUE_CHARS, "pattern": NO_NUL},
}
Metadata = Annotated[
    dict[MetadataKey, MetadataValue], Field(max_length=MAX_METADATA_PAIRS), WithJsonSchema(METADATA_SCHEMA)
]
SystemPrompt = Annotated[str, StringConstraints(max_length=MAX_SYSTEM_PROMPT_CHARS, pattern=NO_NUL)]
Content = Annotated[str, StringConstraints(min_length=1, pattern=NOT_BLANK)]
MAX_IMAGES = 10
# What an image may begin with; the rest (base64, the bytes' format, the size) is checked when read.
ImageUrl = Annotated[str, StringConstraints(pattern=r"^(data:image/(png|jpeg|gif|webp);base64,|https://)")]
MODEL_HELP = (
    "the model the chat's turns ask for: one of `GET /models` (CHATKEEP_LLM_MODEL, CHATKEEP_LLM_MODELS);"
    " null: the server's default"
)
ModelName = Annotated[str, StringConstraints(min_length=1, max_length=MAX_TITLE_CHARS)]


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ChatCreate(_Input):
    title: Title | None = None
    metadata: Metadata = Field(default_factory=dict)
    system_prompt: SystemPrompt | None = Field(
        default=None, description="null: the server's default system prompt; empty: none"
    )
    model: ModelName | None = Field(default=None, description=MODEL_HELP)


class ChatUpdate(_Input):
    """Only the fields present are changed; `metadata` is replaced whole."""

    title: Title | None = None
    metadata: Metadata = Field(default_factory=dict)
    system_prompt: SystemPrompt | None = None
    model: ModelName | None = Field(default=None, description=MODEL_HELP)


class MessageCreate(_Input):
    content: Content
    images: Annotated[list[ImageUrl], Field(max_length=MAX_IMAGES)] = Field(
        default_factory=list,
        description="images the message shows the model, in order after its text: each a data: URL of a PNG, JPEG,"
        " GIF or WebP image (`data:image/png;base64,...`, at most CHATKEEP_MAX_ATTACHMENT_BYTES decoded) or an"
        " https:// URL, passed on to the model as it is (chatkeep fetches none)",
    )
    stream: bool = False


# The answers: documentation of what bodies.py writes straight from the domain objects.


class ChatOut(BaseModel):
    id: str
    title: str | None
    metadata: dict[str, str]
    system_prompt: str | None
    created_at: datetime
    updated_at: datetime = Field(description="the chat's last write: a message added, an update")
    message_count: int
    model: str | None = Field(description="the model the chat's turns ask for; null: the server's default")


class UsageOut(BaseModel):
    prompt_tokens: int
    completion_tokens: int


class SiblingsOut(BaseModel):
    ids: list[str] = Field(description="their ids in creation order, this message's among them")
    index: int = Field(description="this message's place in `ids`, from 0 (`PUT /chats/{id}/branch` shows another)")


class MessageOut(BaseModel):
    id: str
    chat_id: str
    seq: int
    role: Literal["user", "assistant"]
    content: str
    created_at: datetime
    model: str | None = Field(description="the model that wrote an assistant message")
    usage: UsageOut | None = Field(description="tokens of an assistant message, when the provider reported them")
    status: Literal["completed", "incomplete"] = Field(
        description="`incomplete`: a reply cut short, with what was written by then (`incomplete_reason` says why)"
    )
    incomplete_reason: IncompleteReason | None = Field(
        default=None,
        description="why an incomplete reply was cut short: `stopped` (a client asked), `max_tokens`, `content_filter`,"
        " `timeout` (the LLM went silent mid-reply or outlasted the cap), `upstream_error` (its stream broke off),"
        " `shutdown` (the server shut down)",
    )
    images: list[str] = Field(
        default_factory=list,
        description="a user message's images as sent (data: or https: URLs), in order; absent when it has none",
    )
    siblings: SiblingsOut | None = Field(
        default=None,
        description="the messages at this one's place on every branch of the chat (a regenerated reply's versions,"
        " an edited question's), when there are others; absent when there are none",
    )


CURSOR_HELP = (
    "pass as `after` or `before` to page on from where this chat was listed, whatever was written since"
    " (by `updated_at`, a new message moves a chat; its id would page from its new place); its id otherwise"
)


class ChatList(BaseModel):
    data: list[ChatOut]
    first_id: str | None
    last_id: str | None
    has_more: bool
    first_cursor: str | None = Field(description=CURSOR_HELP)
    last_cursor: str | None = Field(description=CURSOR_HELP)


class ModelOut(BaseModel):
    id: str


class ModelList(BaseModel):
    data: list[ModelOut] = Field(description="the models a chat may name, the default first")
    default: str = Field(description="the model of chats that name none (CHATKEEP_LLM_MODEL)")


class MessageList(BaseModel):
    data: list[MessageOut]
    first_id: str | None
    last_id: str | None
    has_more: bool


class SnippetPartOut(BaseModel):
    text: str
    match: bool = Field(description="true for a word the search matched: draw it highlighted, as text")


class SearchHitOut(BaseModel):
    chat_id: str
    chat_title: str | None
    message_id: str
    seq: int
    role: Literal["user", "assistant"]
    created_at: datetime
    snippet: list[SnippetPartOut] = Field(
        description="the message around its first match, in parts of plain text; `…` where it was cut"
    )


class SearchResultsOut(BaseModel):
    data: list[SearchHitOut] = Field(description="best match first")
    has_more: bool
    next_cursor: str | None = Field(description="pass as `after` for the next page; null on the last")


class BranchIn(_Input):
    message_id: Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=NO_NUL)] = Field(
        description="a message of the chat, on any branch: the branch through it becomes the current one"
    )


class RetryIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    stream: bool = Field(default=False, description="answer with the turn's server-sent events")


class TurnOut(BaseModel):
    user_message: MessageOut
    assistant_message: MessageOut


class SummaryOut(BaseModel):
    chat_id: str
    message_count: int
    user_message_count: int
    assistant_message_count: int
    first_message_at: datetime | None
    last_message_at: datetime | None
    summary: str | None
    highlights: list[str]
    up_to_seq: int = Field(description="seq of the last message the summary covers (0: none)")
    stale: bool = Field(description="true when messages came after up_to_seq, e.g. because the LLM failed")

    @classmethod
    def from_domain(cls, summary: Summary) -> "SummaryOut":
        stats, text = summary.stats, summary.text
        return cls(
            chat_id=summary.chat_id,
            message_count=stats.message_count,
            user_message_count=stats.user_message_count,
            assistant_message_count=stats.assistant_message_count,
            first_message_at=stats.first_message_at,
            last_message_at=stats.last_message_at,
            summary=text.summary if text else None,
            highlights=list(text.highlights) if text else [],
            up_to_seq=summary.up_to_seq,
            stale=summary.stale,
        )


class ValidationIssue(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class LineIssue(BaseModel):
    """What is wrong with one line of an uploaded file (POST /import)."""

    line: int
    detail: str


class ImportedChatOut(BaseModel):
    id: str
    line: int = Field(description="the file's line of its chat")
    status: Literal["imported", "unchanged"]


class ImportOut(BaseModel):
    imported: int = Field(description="chats stored by this import")
    unchanged: int = Field(description="chats of the file the owner kept already, exactly as in the file")
    chats: list[ImportedChatOut]


class Problem(BaseModel):
    """An RFC 9457 problem details object."""

    type: str
    title: str
    status: int
    detail: str | None = None
    errors: list[ValidationIssue | LineIssue] | None = None
    user_message_id: str | None = Field(default=None, description="the stored user message of a failed turn")
    request_id: str | None = Field(default=None, description="the request's X-Request-ID, which its log lines carry")
