"""OpenAI's Conversations and Responses APIs, and the model list, under /v1.

Routes translate HTTP to `Conversations` and `Responses` calls and back, as the native routes
do for the service; owners, API keys, rate limits and Idempotency-Keys are the native API's.
`POST /v1/responses` is served by the route shortcut (see server/app.py), as the native turn is.
"""

from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Body, Depends, Query, Request, Response
from starlette.convertors import StringConvertor, register_url_convertor

from chatkeep.api import sse
from chatkeep.api.bodies import json_response
from chatkeep.api.deps import MAX_PAGE, IdempotencyKeyHeader, OwnerDep, service_of
from chatkeep.api.fast_turn_route import read_json_request, shortcut_openapi
from chatkeep.domain import PageRequest
from chatkeep.errors import ModelNotFoundError
from chatkeep.idempotency import IdempotencyKey
from chatkeep.openai_compat.conversations import Conversations
from chatkeep.openai_compat.requests import read_items, read_response_request
from chatkeep.openai_compat.responses import Responses
from chatkeep.openai_compat.schemas import (
    ConversationCreate,
    ConversationDeleted,
    ConversationOut,
    ConversationUpdate,
    InputTokens,
    InputTokensCount,
    ItemList,
    ItemsCreate,
    ModelList,
    ModelOut,
    OpenAIError,
    ResponseCreate,
    ResponseDeleted,
    ResponseOut,
)


class ResponseIdConvertor(StringConvertor):
    """A response id in a path: any segment but `input_tokens`, which names the token count's route,
    so that `/v1/responses/input_tokens` is that route's alone (its 405s allow POST only)."""

    regex = r"(?!input_tokens(?:/|$))[^/]+"


register_url_convertor("response_id", ResponseIdConvertor())


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": OpenAIError} for status in statuses}


responses_turns = APIRouter(tags=["openai"], responses=_errors(400, 401, 500))  # served by RouteShortcut
router = APIRouter(tags=["openai"], responses=_errors(400, 401, 500))


async def get_conversations(request: Request) -> Conversations:
    conversations: Conversations = request.state.conversations
    return conversations


async def get_responses(request: Request) -> Responses:
    responses: Responses = request.state.responses
    return responses


ConversationsDep = Annotated[Conversations, Depends(get_conversations)]
ResponsesDep = Annotated[Responses, Depends(get_responses)]


async def _item_page(
    after: Annotated[str | None, Query(min_length=1, max_length=100, description="an item id")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 20,
    order: Literal["asc", "desc"] = "desc",
) -> PageRequest:
    return PageRequest(limit=limit, after=after, order=order)


ItemPageDep = Annotated[PageRequest, Depends(_item_page)]


def _key(value: str | None, route: str, body: Any) -> IdempotencyKey | None:
    return None if value is None else IdempotencyKey.for_request(value, route, body)


# Conversations


@router.post("/v1/conversations", response_model=ConversationOut, responses=_errors(409, 429))
async def create_conversation(
    request: Request,
    conversations: ConversationsDep,
    owner: OwnerDep,
    idempotency_key: IdempotencyKeyHeader = None,
    body: Annotated[ConversationCreate | None, Body()] = None,
) -> Response:
    """A conversation (a chat: the same id works under /chats), with up to 20 first items."""
    body = body or ConversationCreate()
    items = read_items(body.items or [], "items", service_of(request).settings)
    key = _key(idempotency_key, "POST /v1/conversations", body.model_dump(mode="json"))
    return json_response(await conversations.create(owner, items, body.metadata or {}, key))


@router.get("/v1/conversations/{conversation_id}", response_model=ConversationOut, responses=_errors(404))
async def get_conversation(conversations: ConversationsDep, owner: OwnerDep, conversation_id: str) -> Response:
    return json_response(await conversations.get(owner, conversation_id))


@router.post("/v1/conversations/{conversation_id}", response_model=ConversationOut, responses=_errors(404))
async def update_conversation(
    conversations: ConversationsDep, owner: OwnerDep, conversation_id: str, body: ConversationUpdate
) -> Response:
    """Replace the conversation's metadata."""
    return json_response(await conversations.update(owner, conversation_id, body.metadata))


@router.delete("/v1/conversations/{conversation_id}", response_model=ConversationDeleted, responses=_errors(404))
async def delete_conversation(conversations: ConversationsDep, owner: OwnerDep, conversation_id: str) -> Response:
    return json_response(await conversations.delete(owner, conversation_id))


@router.post("/v1/conversations/{conversation_id}/items", response_model=ItemList, responses=_errors(404, 409, 429))
async def create_items(
    request: Request,
    conversations: ConversationsDep,
    owner: OwnerDep,
    conversation_id: str,
    body: ItemsCreate,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    """Append up to 20 items, in order, after any response running on the conversation."""
    items = read_items(body.items, "items", service_of(request).settings)
    key = _key(idempotency_key, f"POST /v1/conversations/{conversation_id}/items", body.model_dump(mode="json"))
    return json_response(await conversations.add_items(owner, conversation_id, items, key))


@router.get("/v1/conversations/{conversation_id}/items", response_model=ItemList, responses=_errors(404))
async def list_items(
    conversations: ConversationsDep, owner: OwnerDep, conversation_id: str, page: ItemPageDep
) -> Response:
    """The conversation's items, newest first unless `order=asc`."""
    return json_response(await conversations.list_items(owner, conversation_id, page))


@router.get("/v1/conversations/{conversation_id}/items/{item_id}", responses=_errors(404))
async def get_item(conversations: ConversationsDep, owner: OwnerDep, conversation_id: str, item_id: str) -> Response:
    return json_response(await conversations.get_item(owner, conversation_id, item_id))


@router.delete(
    "/v1/conversations/{conversation_id}/items/{item_id}", response_model=ConversationOut, responses=_errors(404)
)
async def delete_item(conversations: ConversationsDep, owner: OwnerDep, conversation_id: str, item_id: str) -> Response:
    """Delete an item; answers the conversation."""
    return json_response(await conversations.delete_item(owner, conversation_id, item_id))


# Responses

RESPONSE_EVENTS: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "With `stream: true`: the response's events, each with its `type` and `sequence_number`.",
        "content": {
            sse.MEDIA_TYPE: {
                "itemSchema": {
                    "type": "object",
                    "required": ["event", "data"],
                    "properties": {
                        "event": {"type": "string", "pattern": "^response\\."},
                        "data": {
                            "type": "string",
                            "contentMediaType": "application/json",
                            "contentSchema": {
                                "type": "object",
                                "required": ["type", "sequence_number"],
                                "properties": {"type": {"type": "string"}, "sequence_number": {"type": "integer"}},
                            },
                        },
                    },
                }
            }
        },
    }
}


@responses_turns.post(
    "/v1/responses",
    response_model=ResponseOut,
    responses=RESPONSE_EVENTS | _errors(404, 409, 429, 502, 503, 504),
    openapi_extra=shortcut_openapi(ResponseCreate),
)
async def create_response(request: Request) -> Response:
    """A model response. With `conversation`, a turn on it: it queues behind the conversation's
    other turns, and its input and output are appended. With `previous_response_id`, the chain of
    earlier responses is its context."""
    read = await read_json_request(request, ResponseCreate)
    responses: Responses = request.state.responses
    asked = read_response_request(read.body, service_of(request).settings, read.idempotency_key)
    if asked.background:
        body, events = await responses.background(read.owner, asked)
        return sse.EventStream(events, response_event) if read.body.stream else json_response(body)
    if read.body.stream:
        return sse.EventStream(await responses.stream(read.owner, asked), response_event)
    return json_response(await responses.create(read.owner, asked))


def response_event(event: dict[str, Any]) -> bytes:
    """An event of a streamed response on the wire, as OpenAI writes them."""
    return b"event: %s\ndata: %s\n\n" % (event["type"].encode(), orjson.dumps(event))


@router.get(
    "/v1/responses/{response_id:response_id}", response_model=ResponseOut, responses=RESPONSE_EVENTS | _errors(404)
)
async def get_response(
    responses: ResponsesDep,
    owner: OwnerDep,
    response_id: str,
    stream: bool = False,
    starting_after: Annotated[int | None, Query(description="the sequence number of the last event seen")] = None,
) -> Response:
    """The response as it is now (a background one at every step). With `stream=true`, a background
    response's events after `starting_after`, live until it ends, from whichever server makes it."""
    if stream:
        return sse.EventStream(await responses.events(owner, response_id, starting_after), response_event)
    return json_response(await responses.get(owner, response_id))


@router.post("/v1/responses/{response_id:response_id}/cancel", response_model=ResponseOut, responses=_errors(404))
async def cancel_response(responses: ResponsesDep, owner: OwnerDep, response_id: str) -> Response:
    """Cancel a background response, wherever it is made: what it wrote is kept. One that ended is
    answered as it ended; a response not made in the background is a 400."""
    return json_response(await responses.cancel(owner, response_id))


@router.delete("/v1/responses/{response_id:response_id}", response_model=ResponseDeleted, responses=_errors(404))
async def delete_response(responses: ResponsesDep, owner: OwnerDep, response_id: str) -> Response:
    return json_response(await responses.delete(owner, response_id))


@router.get("/v1/responses/{response_id:response_id}/input_items", response_model=ItemList, responses=_errors(404))
async def list_input_items(responses: ResponsesDep, owner: OwnerDep, response_id: str, page: ItemPageDep) -> Response:
    return json_response(await responses.input_items(owner, response_id, page))


@router.post("/v1/responses/input_tokens", response_model=InputTokens, responses=_errors(404))
async def count_input_tokens(
    request: Request, responses: ResponsesDep, owner: OwnerDep, body: InputTokensCount
) -> Response:
    """The tokens a response's input would take upstream (tools aside), counted as its context would
    be built now: the conversation's items or the chain's earlier responses that fit, then the input."""
    asked = read_response_request(body, service_of(request).settings, None)
    return json_response(await responses.input_tokens(owner, asked))


# Models


@router.get("/v1/models", response_model=ModelList)
async def list_models(request: Request, owner: OwnerDep) -> Response:
    """The models clients may ask for by name (CHATKEEP_LLM_MODEL, then CHATKEEP_LLM_MODELS)."""
    return json_response({"object": "list", "data": [_model(name) for name in service_of(request).settings.models]})


@router.get("/v1/models/{model}", response_model=ModelOut, responses=_errors(404))
async def get_model(request: Request, owner: OwnerDep, model: str) -> Response:
    if model not in service_of(request).settings.models:
        raise ModelNotFoundError(f"no model {model!r}; GET /v1/models lists them")
    return json_response(_model(model))


def _model(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "chatkeep"}
