"""Every failure chatkeep reports, each carrying its HTTP meaning as class variables.

Layers below the API raise these; the API renders them as RFC 9457 problem details without
knowing where they came from. Upstream (LLM) failures are translated into `LLMError`
subclasses in the LLM client and nowhere else.
"""

from typing import Any, ClassVar, Protocol


class Failure(Protocol):
    """What a client is told of a failure: one of chatkeep's errors, or one relayed from another process."""

    @property
    def status(self) -> int: ...

    @property
    def title(self) -> str: ...

    @property
    def slug(self) -> str: ...

    @property
    def detail(self) -> str: ...

    @property
    def retry_after(self) -> float | None: ...

    def extensions(self) -> dict[str, Any]: ...


class ChatkeepError(Exception):
    """Base of every expected failure. `detail` is safe to show to the client."""

    status: ClassVar[int] = 500
    title: ClassVar[str] = "Internal error"
    slug: ClassVar[str] = "internal"

    def __init__(self, detail: str, *, retry_after: float | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retry_after = retry_after

    def extensions(self) -> dict[str, Any]:
        """Extra problem members beyond type, title, status and detail."""
        return {}


class ChatNotFoundError(ChatkeepError):
    status = 404
    title = "Chat not found"
    slug = "chat-not-found"


class MessageNotFoundError(ChatkeepError):
    status = 404
    title = "Message not found"
    slug = "message-not-found"


class ResponseNotFoundError(ChatkeepError):
    status = 404
    title = "Response not found"
    slug = "response-not-found"


class ResponseLostError(ChatkeepError):
    """A background response whose server stopped (killed, restarted) before the response ended."""

    status = 503
    title = "The response was lost"
    slug = "response-lost"


class ModelNotFoundError(ChatkeepError):
    status = 404
    title = "Model not found"
    slug = "model-not-found"


class ModelNotServedError(ChatkeepError):
    """A chat named a model the server does not serve: invalid input, though its schema cannot say
    so (the models served are a setting), so it has a slug of its own; `errors` names the field."""

    status = 422
    title = "Model not served"
    slug = "model-not-served"

    def extensions(self) -> dict[str, Any]:
        return {"errors": [{"loc": ["body", "model"], "msg": self.detail, "type": "model_not_served"}]}


class ReplyNotFoundError(ChatkeepError):
    """A turn to resume is neither running in this process nor answered in the store."""

    status = 404
    title = "Reply not found"
    slug = "reply-not-found"


class InvalidInputError(ChatkeepError):
    """A well-formed request asking what chatkeep cannot do (an item it cannot read, a tool it
    does not have); `param` names the field at fault."""

    status = 400
    title = "Invalid request"
    slug = "invalid-input"

    def __init__(self, detail: str, *, param: str | None = None) -> None:
        super().__init__(detail)
        self.param = param

    def extensions(self) -> dict[str, Any]:
        return {"param": self.param}


class PreviousResponseNotFoundError(InvalidInputError):
    """`previous_response_id` names no kept response: a 400, as OpenAI answers it, whose code
    (`previous_response_not_found`) clients' recovery code keys on to start a new chain."""

    title = "Previous response not found"
    slug = "previous-response-not-found"


class AttachmentTooLargeError(InvalidInputError):
    """An image or file, or all of a request's together, decode to more bytes than allowed."""

    status = 413
    title = "Attachment too large"
    slug = "attachment-too-large"


class IdempotencyKeyReusedError(ChatkeepError):
    status = 422
    title = "Idempotency-Key reused"
    slug = "idempotency-key-reused"


class IdempotencyKeyInFlightError(ChatkeepError):
    status = 409
    title = "Request with this Idempotency-Key in flight"
    slug = "idempotency-key-in-flight"


class ChatMovedOnError(ChatkeepError):
    """A retried turn's question is no longer the chat's latest message: answering it now would
    put its reply after messages that came later."""

    status = 409
    title = "The chat has moved on"
    slug = "chat-moved-on"


class InvalidCursorError(ChatkeepError):
    """A pagination cursor names no object in the listed collection."""

    status = 422
    title = "Invalid cursor"
    slug = "invalid-cursor"


class InvalidSearchError(ChatkeepError):
    """A search that cannot be run: no word to look for, or more than a search takes."""

    status = 422
    title = "Invalid search"
    slug = "invalid-search"


class IdTakenError(ChatkeepError):
    """A store already holds a chat or message under an id a whole chat was to be stored with
    (`Chats.insert_chats`), whoever owns it; `taken` names it when the store can tell."""

    status = 409
    title = "Id taken"
    slug = "id-taken"

    def __init__(self, taken: str | None) -> None:
        super().__init__(f"the id {taken!r} is taken" if taken else "an id of the import is taken")
        self.taken = taken


class LineErrors(ChatkeepError):
    """Errors of an uploaded file, each naming its line: `errors` is [{"line", "detail"}]."""

    def __init__(self, detail: str, errors: list[dict[str, Any]]) -> None:
        super().__init__(detail)
        self.errors = errors

    def extensions(self) -> dict[str, Any]:
        return {"errors": self.errors}


class InvalidImportError(LineErrors):
    """An import file that is not a valid export: nothing of it was stored."""

    status = 422
    title = "Invalid import"
    slug = "invalid-import"


class ImportConflictError(LineErrors):
    """An import whose chats clash with what is stored (an id taken, a chat of the same id with
    other content): nothing of it was stored."""

    status = 409
    title = "Import conflict"
    slug = "import-conflict"


class ChatBusyError(ChatkeepError):
    """Too many turns already wait on one chat; the client should retry later."""

    status = 429
    title = "Too many turns waiting on this chat"
    slug = "chat-busy"


class OwnerBusyError(ChatkeepError):
    """One owner already holds its share of this server's turns in flight (`owner_share`): the
    others keep their room however many turns one of them starts."""

    status = 429
    title = "Too many of this owner's turns in flight"
    slug = "owner-busy"


class RateLimitedError(ChatkeepError):
    status = 429
    title = "Rate limit exceeded"
    slug = "rate-limited"


class ChatQuotaError(ChatkeepError):
    """The owner already keeps as many chats as one owner may (`max_chats`): another can be
    created once one is deleted. Waiting alone does not help, so it comes with no Retry-After."""

    status = 429
    title = "Too many chats"
    slug = "chat-quota"


class ChatFullError(ChatkeepError):
    """The chat would hold more messages and items than one chat may (`max_chat_messages`) with
    what the request adds; nothing of it is stored. Waiting does not help: no Retry-After."""

    status = 429
    title = "The chat is full"
    slug = "chat-full"


class UnauthorizedError(ChatkeepError):
    status = 401
    title = "Unauthorized"
    slug = "unauthorized"


class OverloadedError(ChatkeepError):
    """This server process already has as many turns in flight as it is allowed."""

    status = 503
    title = "Server over capacity"
    slug = "overloaded"


class TurnNotRunningError(ChatkeepError):
    """A turn asked to stop is not running: it ended, failed, or its server is gone."""

    status = 409
    title = "The turn is not running"
    slug = "turn-not-running"


class TurnStoppedError(ChatkeepError):
    """A turn was stopped (its server shutting down) before it had anything to store."""

    status = 503
    title = "The turn was stopped"
    slug = "turn-stopped"


class TurnLapsedError(ChatkeepError):
    """This server stalled past its hold on the chat's turn, and another server took the turn."""

    status = 503
    title = "The turn's hold on the chat lapsed"
    slug = "turn-lapsed"


class StoreUnavailableError(ChatkeepError):
    """The store cannot answer now: it cannot be opened or reached, or it stays locked."""

    status = 503
    title = "Store unavailable"
    slug = "store-unavailable"


class LLMError(ChatkeepError):
    """The LLM could not produce a reply. The service names the stored user message.

    `unhealthy` says whether the failure is the upstream's health failing (it cannot be reached,
    answers 5xx, or never begins a reply), which the circuit breaker counts; a slow or stalled
    reply, a rate limit or a refused request says nothing about it.
    """

    status = 502
    title = "LLM error"
    slug = "llm-error"
    unhealthy: ClassVar[bool] = False

    def __init__(self, detail: str, *, retry_after: float | None = None) -> None:
        super().__init__(detail, retry_after=retry_after)
        self.user_message_id: str | None = None

    def extensions(self) -> dict[str, Any]:
        return {} if self.user_message_id is None else {"user_message_id": self.user_message_id}


class LLMBadResponseError(LLMError):
    """The LLM answered an error status or a body that is not a usable completion."""

    status = 502
    title = "Bad response from the LLM"
    slug = "llm-bad-response"


class LLMRejectedError(LLMBadResponseError):
    """The LLM refused the request itself (a 4xx: bad key, unknown model, prompt too long)."""

    def __init__(self, detail: str, *, upstream_status: int | None = None) -> None:
        super().__init__(detail)
        self.upstream_status = upstream_status  # the status it answered


class LLMInputRefusedError(LLMError):
    """The LLM refused (400) a request that carried images or files: most likely a model that
    takes text alone. The client's request is what to change, hence a 400 rather than a 502."""

    status = 400
    title = "The model refused the request's attachments"
    slug = "llm-input-refused"


class LLMServerError(LLMBadResponseError):
    """The LLM answered a 5xx: it is failing."""

    unhealthy = True


class LLMRateLimitedError(LLMError):
    status = 429
    title = "The LLM is rate-limiting requests"
    slug = "llm-rate-limited"


class LLMUnavailableError(LLMError):
    status = 503
    title = "The LLM is unreachable"
    slug = "llm-unavailable"
    unhealthy = True


class LLMCircuitOpenError(LLMUnavailableError):
    """The LLM failed so often lately that it is not called for a while (the circuit breaker)."""

    title = "The LLM is failing; calls are paused"
    slug = "llm-circuit-open"


class LLMTimeoutError(LLMError):
    """The LLM did not begin its reply in time."""

    status = 504
    title = "The LLM timed out"
    slug = "llm-timeout"
    unhealthy = True


class LLMStalledError(LLMTimeoutError):
    """A reply under way went silent too long, or outlasted the cap on a whole call: the reply's
    fault, or the network's, more than the upstream's health."""

    unhealthy = False
