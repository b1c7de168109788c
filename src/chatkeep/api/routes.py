"""The native API's routes: chats, their messages (the turn) and their summaries.

Routes translate HTTP to service calls and back, nothing more. Every error a route can return
is declared, so the OpenAPI document tells clients the whole contract.
"""

import hmac
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, Query, Request, Response, status
from pydantic import BaseModel

from chatkeep.api import sse
from chatkeep.api.attachments import check_images
from chatkeep.api.bodies import chat_page_body, json_response, page_body, with_siblings
from chatkeep.api.deps import (
    ChatPageDep,
    IdempotencyKeyHeader,
    MessagePageDep,
    MetricsDep,
    OwnerDep,
    ServiceDep,
    service_of,
)
from chatkeep.api.fast_turn_route import TURN_OPENAPI, read_message_post
from chatkeep.api.schemas import (
    BranchIn,
    ChatCreate,
    ChatList,
    ChatOut,
    ChatUpdate,
    MessageList,
    MessageOut,
    ModelList,
    Problem,
    RetryIn,
    SearchResultsOut,
    SummaryOut,
    TurnOut,
)
from chatkeep.domain import ChatChanges, Siblings
from chatkeep.errors import ChatkeepError, InvalidSearchError, ModelNotServedError, UnauthorizedError
from chatkeep.idempotency import IdempotencyKey
from chatkeep.metrics import CONTENT_TYPE
from chatkeep.search import MAX_QUERY_CHARS
from chatkeep.service import AnsweredTurn, ChatService
from chatkeep.turns.events import TurnEvent, TurnEvents

PROBLEM = "application/problem+json"


def _problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": Problem, "content": {PROBLEM: {}}} for code in statuses}


COMMON = _problems(413, 422)
MAX_SEARCH_PAGE = 50


def _key(value: str | None, route: str, body: BaseModel, *, exclude: set[str] | None = None) -> IdempotencyKey | None:
    """The request's key, fingerprinted by its route and body (what `exclude` names aside)."""
    if value is None:
        return None
    return IdempotencyKey.for_request(value, route, body.model_dump(mode="json", exclude=exclude))


operations = APIRouter(tags=["operations"], responses=_problems(500))
turns = APIRouter(responses=_problems(401, 500))  # served by fast_turn_route.RouteShortcut (see server/app.py)
router = APIRouter(responses=_problems(401, 500))


@operations.get("/healthz")
async def get_health() -> dict[str, str]:
    """Liveness: answers while the server runs, whatever its store and LLM do; needs no API key."""
    return {"status": "ok"}


@operations.get("/readyz", responses=_problems(503))
async def get_readiness(service: ServiceDep) -> dict[str, str]:
    """Readiness: 200 once the store answers with its schema up to date and the LLM endpoint
    answers (unless `CHATKEEP_READYZ_PROBE_LLM=false`), naming each part; else a 503 problem
    saying which part is down and why. Needs no API key."""
    return await service.readiness()


TEXT = {"type": "string"}
metrics_router = APIRouter(tags=["operations"], responses=_problems(401, 500))


@metrics_router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"description": "Prometheus text format", "content": {CONTENT_TYPE: {"schema": TEXT}}}},
)
async def get_metrics(request: Request, service: ServiceDep, metrics: MetricsDep) -> Response:
    """Prometheus metrics of every server process; with `CHATKEEP_METRICS_KEY`, only for that Bearer token."""
    key = service.settings.metrics_key
    if key is not None:
        scheme, _, presented = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(presented.encode(), key.get_secret_value().encode()):
            raise UnauthorizedError("/metrics needs the CHATKEEP_METRICS_KEY as `Authorization: Bearer <key>`")
    return Response(metrics.render(), media_type=CONTENT_TYPE)


@router.post(
    "/chats",
    status_code=status.HTTP_201_CREATED,
    response_model=ChatOut,
    tags=["chats"],
    responses=_problems(409, 413, 422, 429),
)
async def create_chat(
    service: ServiceDep,
    owner: OwnerDep,
    idempotency_key: IdempotencyKeyHeader = None,
    body: Annotated[ChatCreate | None, Body()] = None,
) -> Response:
    """Create a chat. With an `Idempotency-Key`, a retry gets the chat the first try created.
    429 `chat-quota` when the owner already keeps `CHATKEEP_MAX_CHATS` chats."""
    body = body or ChatCreate()
    _check_model(service, body.model)
    key = _key(idempotency_key, "POST /chats", body)
    chat = await service.create_chat(
        owner, title=body.title, metadata=body.metadata, system_prompt=body.system_prompt, model=body.model, key=key
    )
    return json_response(chat, status=201, headers={"Location": f"/chats/{chat.id}"})


NOT_HERE = "not taken here: a 422 says to search messages with `GET /search?q=`"


@router.get("/chats", response_model=ChatList, tags=["chats"], responses=COMMON)
async def list_chats(
    service: ServiceDep,
    owner: OwnerDep,
    page: ChatPageDep,
    q: Annotated[str | None, Query(description=NOT_HERE, deprecated=True)] = None,
) -> Response:
    """The owner's chats: newest first by default, by creation (`order_by=created_at`) or by last
    activity (`order_by=updated_at`: the chat with the latest message or update first). They are
    not filtered: `q` is a 422 that points to `GET /search`, rather than a filter silently ignored."""
    if q is not None:
        raise InvalidSearchError("GET /chats lists every chat; to find messages by their words, use GET /search?q=")
    return json_response(chat_page_body(await service.list_chats(owner, page), page))


QUERY = "the words to find, all of them, whole and in any case; punctuation and operators are plain separators"
SEARCH_CURSOR = "the `next_cursor` of the previous page"


@router.get("/search", response_model=SearchResultsOut, tags=["search"], responses=_problems(422))
async def search(
    service: ServiceDep,
    owner: OwnerDep,
    q: Annotated[str, Query(min_length=1, max_length=MAX_QUERY_CHARS, description=QUERY)],
    limit: Annotated[int, Query(ge=1, le=MAX_SEARCH_PAGE, description="page size")] = 20,
    after: Annotated[str | None, Query(min_length=1, max_length=200, description=SEARCH_CURSOR)] = None,
) -> Response:
    """Search the owner's messages: those that hold every word of `q`, best match first, each with
    its chat's title and a snippet whose matched words are marked parts (text, never markup).
    A 422 problem for a query with no word, too many or too long ones, or a cursor of another search."""
    return json_response((await service.search(owner, q, limit=limit, cursor=after)).body())


@router.get("/chats/{chat_id}", response_model=ChatOut, tags=["chats"], responses=_problems(404, 422))
async def get_chat(service: ServiceDep, owner: OwnerDep, chat_id: str) -> Response:
    return json_response(await service.get_chat(owner, chat_id))


@router.patch("/chats/{chat_id}", response_model=ChatOut, tags=["chats"], responses=_problems(404, 413, 422))
async def update_chat(service: ServiceDep, owner: OwnerDep, chat_id: str, body: ChatUpdate) -> Response:
    _check_model(service, body.model)
    fields = frozenset(body.model_fields_set)
    changes = ChatChanges(
        fields, title=body.title, metadata=body.metadata, system_prompt=body.system_prompt, model=body.model
    )
    return json_response(await service.update_chat(owner, chat_id, changes))


@router.get("/models", response_model=ModelList, tags=["chats"])
async def list_models(service: ServiceDep, owner: OwnerDep) -> dict[str, Any]:
    """The models a chat may name (`model` on `POST`/`PATCH /chats`), the default first."""
    models = service.settings.models
    return {"data": [{"id": name} for name in models], "default": models[0]}


def _check_model(service: ChatService, model: str | None) -> None:
    """Refuse, as invalid input naming the field, a model the server does not serve (null is its default)."""
    served = service.settings.models
    if model is not None and model not in served:
        allowed = ", ".join(repr(name) for name in served)
        raise ModelNotServedError(f"model {model!r} is not served here: name one of {allowed}, or null for the default")


@router.delete(
    "/chats/{chat_id}", status_code=status.HTTP_204_NO_CONTENT, tags=["chats"], responses=_problems(404, 422)
)
async def delete_chat(service: ServiceDep, owner: OwnerDep, chat_id: str) -> None:
    await service.delete_chat(owner, chat_id)


def _event_stream(description: str) -> dict[int | str, dict[str, Any]]:
    return {200: {"description": description, "content": {sse.MEDIA_TYPE: {"itemSchema": sse.EVENT_SCHEMA}}}}


STREAMED_TURN = _event_stream(
    "With `stream: true` or `Accept: text/event-stream`: the turn as server-sent events "
    "(`user_message`, `delta`..., then `assistant_message` or `error`), each with an `id`."
)


@turns.post(
    "/chats/{chat_id}/messages",
    status_code=status.HTTP_201_CREATED,
    response_model=TurnOut,
    tags=["messages"],
    responses=STREAMED_TURN | _problems(400, 404, 409, 413, 422, 429, 502, 503, 504),
    openapi_extra=TURN_OPENAPI,
)
async def post_message(request: Request, chat_id: str) -> Response:
    """Answer a user message: the reply sees the chat's earlier turns. Turns on one chat run in order.

    With an `Idempotency-Key`, a retry is answered once: the stored turn is replayed, or, when the
    LLM failed, only the reply to the stored question is run again. Each try may stream or not.
    """
    service = service_of(request)
    post = await read_message_post(request, max_chars=service.settings.max_message_chars)
    body = post.body
    check_images(body.images, service.settings)
    key = _key(post.idempotency_key, f"POST /chats/{chat_id}/messages", body, exclude={"stream"})
    if post.streamed:
        events = await service.stream_message(post.owner, chat_id, body.content, images=body.images, key=key)
        return sse.EventStream(events.follow(), sse.turn_event)
    answered = await service.post_message(post.owner, chat_id, body.content, images=body.images, key=key)
    return json_response(answered, status=201)


@router.get(
    "/chats/{chat_id}/messages/{user_message_id}/events",
    tags=["messages"],
    response_class=Response,
    responses=_event_stream("The turn's events after `Last-Event-ID`.") | _problems(404, 422),
)
async def resume_turn_events(
    service: ServiceDep,
    owner: OwnerDep,
    chat_id: str,
    user_message_id: str,
    last_event_id: Annotated[str | None, Header(max_length=32)] = None,
) -> Response:
    """Resume a streamed turn after `Last-Event-ID`: live while it runs, else its final event."""
    events = await service.turn_events(owner, chat_id, user_message_id, last_event_id)
    return sse.EventStream(_with_siblings(service, owner, chat_id, events), sse.turn_event)


@router.post(
    "/chats/{chat_id}/messages/{user_message_id}/retry",
    status_code=status.HTTP_201_CREATED,
    response_model=TurnOut,
    tags=["messages"],
    responses=STREAMED_TURN | _problems(400, 404, 409, 413, 422, 429, 502, 503, 504),
)
async def retry_turn(
    service: ServiceDep,
    owner: OwnerDep,
    chat_id: str,
    user_message_id: str,
    idempotency_key: IdempotencyKeyHeader = None,
    body: Annotated[RetryIn | None, Body()] = None,
) -> Response:
    """Answer a stored question whose reply was lost (the LLM failed, or the server stopped before
    storing it): the reply is run again, as a turn. 409 `chat-moved-on` when it is no longer the
    chat's last message (it has a reply, or messages came after it)."""
    return await _answer_again(service, owner, chat_id, user_message_id, idempotency_key, body, regenerate=False)


@router.post(
    "/chats/{chat_id}/messages/{user_message_id}/cancel",
    response_model=MessageOut,
    tags=["messages"],
    responses=_problems(404, 409, 422),
)
async def cancel_turn(service: ServiceDep, owner: OwnerDep, chat_id: str, user_message_id: str) -> Response:
    """Stop the reply being written to `user_message_id`, on whichever server writes it: what was
    written so far is stored as the reply, with `status: "incomplete"`, the turn's stream ends with
    it, and the chat is free for the next turn. 409 when no reply to that message is being written."""
    return json_response(await service.stop_turn(owner, chat_id, user_message_id))


@router.post(
    "/chats/{chat_id}/messages/{message_id}/regenerate",
    status_code=status.HTTP_201_CREATED,
    response_model=TurnOut,
    tags=["branches"],
    responses=STREAMED_TURN | _problems(400, 404, 409, 413, 422, 429, 502, 503, 504),
)
async def regenerate(
    service: ServiceDep,
    owner: OwnerDep,
    chat_id: str,
    message_id: str,
    idempotency_key: IdempotencyKeyHeader = None,
    body: Annotated[RetryIn | None, Body()] = None,
) -> Response:
    """A new reply to a question of the current branch (`message_id` is the question, or a reply
    to it), as a turn in the chat's order. The messages after the question leave the current
    branch and stay as the new reply's sibling (`siblings`, `PUT /chats/{id}/branch`). This also
    answers a question whose reply failed after the chat moved on."""
    return await _answer_again(service, owner, chat_id, message_id, idempotency_key, body, regenerate=True)


@router.post(
    "/chats/{chat_id}/messages/{message_id}/edit",
    status_code=status.HTTP_201_CREATED,
    response_model=TurnOut,
    tags=["branches"],
    responses=STREAMED_TURN | _problems(400, 404, 409, 413, 422, 429, 502, 503, 504),
    openapi_extra=TURN_OPENAPI,
)
async def edit_message(request: Request, chat_id: str, message_id: str) -> Response:
    """Answer a changed question in the place of the user question `message_id`, on a new branch:
    the question and everything after it stay, as the new question's sibling. The body is a
    message post's."""
    service = service_of(request)
    post = await read_message_post(request, max_chars=service.settings.max_message_chars)
    body = post.body
    check_images(body.images, service.settings)
    key = _key(post.idempotency_key, f"POST /chats/{chat_id}/messages/{message_id}/edit", body, exclude={"stream"})
    answered = await service.edit_message(
        post.owner, chat_id, message_id, body.content, images=body.images, streamed=post.streamed, key=key
    )
    return await _branched_turn(service, post.owner, chat_id, answered)


async def _answer_again(
    service: ChatService,
    owner: str,
    chat_id: str,
    message_id: str,
    idempotency_key: str | None,
    body: RetryIn | None,
    *,
    regenerate: bool,
) -> Response:
    """A stored question answered again, as a retry or a regenerate, keyed by its own route."""
    body = body or RetryIn()
    route = f"POST /chats/{chat_id}/messages/{message_id}/{'regenerate' if regenerate else 'retry'}"
    key = _key(idempotency_key, route, body, exclude={"stream"})
    answered = await service.answer_again(
        owner, chat_id, message_id, streamed=body.stream, key=key, regenerate=regenerate
    )
    if regenerate:
        return await _branched_turn(service, owner, chat_id, answered)
    if isinstance(answered, TurnEvents):
        return sse.EventStream(answered.follow(), sse.turn_event)
    return json_response(answered, status=201)


async def _branched_turn(
    service: ChatService, owner: str, chat_id: str, answered: AnsweredTurn | TurnEvents
) -> Response:
    """A turn on a new branch, answered as a message post is, its messages with their siblings."""
    if isinstance(answered, TurnEvents):
        return sse.EventStream(_with_siblings(service, owner, chat_id, answered.follow()), sse.turn_event)
    question, reply = answered.user_message, answered.assistant_message
    siblings = await service.siblings(owner, chat_id, [question, reply])
    body = {"user_message": with_siblings(question, siblings), "assistant_message": with_siblings(reply, siblings)}
    return json_response(body, status=201)


async def _with_siblings(
    service: ChatService, owner: str, chat_id: str, batches: AsyncGenerator[list[TurnEvent], None]
) -> AsyncGenerator[list[TurnEvent | sse.WithSiblings], None]:
    """A turn's events with its messages' `siblings`, as its JSON answer has them: for a turn that
    made a branch, and for one followed again (a branch may have been made at it since). A new
    turn at the end of its branch has none, so a message post streams without asking."""
    async with aclosing(batches):
        async for batch in batches:
            messages = [event.message for event in batch if event.message is not None]
            try:
                found = await service.siblings(owner, chat_id, messages) if messages else {}
            except ChatkeepError:  # the chat was deleted meanwhile: the stream ends as the turn did
                found = {}
            yield [_with_siblings_of(event, found) for event in batch]


def _with_siblings_of(event: TurnEvent, siblings: dict[str, Siblings]) -> TurnEvent | sse.WithSiblings:
    found = None if event.message is None else siblings.get(event.message.id)
    return event if found is None else sse.WithSiblings(event, found)


@router.put("/chats/{chat_id}/branch", response_model=ChatOut, tags=["branches"], responses=_problems(404, 422))
async def switch_branch(service: ServiceDep, owner: OwnerDep, chat_id: str, body: BranchIn) -> Response:
    """Make the branch through `message_id` the chat's current one: the one its messages, context,
    summaries and OpenAI's conversation view show. Below that message it follows the branch that
    was current last. Waits for the turns before it on the chat."""
    return json_response(await service.switch_branch(owner, chat_id, body.message_id))


@router.get("/chats/{chat_id}/messages", response_model=MessageList, tags=["messages"], responses=_problems(404, 422))
async def list_messages(service: ServiceDep, owner: OwnerDep, chat_id: str, page: MessagePageDep) -> Response:
    """The messages of the chat's current branch, by `seq`; each with its `siblings` on the other branches."""
    listed = await service.list_messages(owner, chat_id, page)
    siblings = await service.siblings(owner, chat_id, listed.data)
    body = page_body(listed)
    if siblings:
        body["data"] = [with_siblings(message, siblings) for message in listed.data]
    return json_response(body)


REFRESH = (
    "write the summary anew (from the chat's rolling summary, or its first message) rather than "
    "fold the new messages into the cached one; with nothing new since, the cached one is answered"
)


@router.get("/chats/{chat_id}/summary", tags=["chats"], responses=_problems(404, 422, 429, 503))
async def get_summary(
    service: ServiceDep,
    owner: OwnerDep,
    chat_id: str,
    refresh: Annotated[bool, Query(description=REFRESH)] = False,
) -> SummaryOut:
    """Exact counts, with an LLM summary brought up to date when messages came since it; never fails
    because the LLM does. An update takes a slot of the owner's rate limit, as a turn does, and
    makes a few LLM calls at most: past the limit, the cached summary is answered (`stale: true`),
    or a 429 with `refresh` or when none is cached yet. A summary still behind after an update
    (a long backlog) is `stale`, and the next request goes on from where it stopped."""
    return SummaryOut.from_domain(await service.summarize(owner, chat_id, refresh=refresh))
