"""FastAPI dependencies: the one place that reads `request.state`.

Every chat route takes the owner: the holder of the API key presented, or the default owner
when the server runs without keys. The store is always asked on someone's behalf.
"""

from collections.abc import Awaitable, Callable
from typing import Annotated, Literal

from fastapi import Depends, Header, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from chatkeep.api_keys import ApiKeys
from chatkeep.domain import Order, OrderBy, PageRequest
from chatkeep.idempotency import IDEMPOTENCY_KEY_HELP, KEY_PATTERN, MAX_KEY_CHARS
from chatkeep.metrics import Metrics
from chatkeep.request_context import current_request
from chatkeep.service import ChatService

DEFAULT_OWNER = "default"
MAX_PAGE = 100


# Dependencies are `async def` although none awaits: FastAPI runs plain `def` ones in a worker
# thread, a hop that cost more than a whole turn's own work.


async def get_service(request: Request) -> ChatService:
    return service_of(request)


_bearer = HTTPBearer(auto_error=False, description="an API key of CHATKEEP_API_KEYS")


async def get_owner(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> str:
    return _owner(request, credentials.credentials if credentials else None)


def owner_of(request: Request, authorization: str | None) -> str:
    """The owner, from the Authorization header read by hand (see `post_message`)."""
    scheme, _, credentials = (authorization or "").partition(" ")
    return _owner(request, credentials if scheme.lower() == "bearer" else None)


def service_of(request: Request) -> ChatService:
    service: ChatService = request.state.service
    return service


def _owner(request: Request, api_key: str | None) -> str:
    api_keys: ApiKeys | None = request.state.api_keys
    owner = DEFAULT_OWNER if api_keys is None else api_keys.owner(api_key)
    context = current_request()
    if context is not None:
        context.owner = owner  # for the request's access log line
    return owner


async def get_metrics(request: Request) -> Metrics:
    metrics: Metrics = request.state.metrics
    return metrics


ServiceDep = Annotated[ChatService, Depends(get_service)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
OwnerDep = Annotated[str, Depends(get_owner)]

IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=MAX_KEY_CHARS,
        pattern=KEY_PATTERN.pattern,
        description=IDEMPOTENCY_KEY_HELP,
    ),
]

Limit = Annotated[int, Query(ge=1, le=MAX_PAGE, description="page size")]
Cursor = Annotated[str | None, Query(min_length=1, max_length=100, description="an object id")]
ChatCursor = Annotated[
    str | None,
    Query(min_length=1, max_length=100, description="a listed chat's id, or a list's `first_cursor`/`last_cursor`"),
]
ORDER_BY_HELP = (
    "`created_at`: by creation; `updated_at`: by last activity (a new message or an update moves a chat"
    " to the newest end)"
)


def _page(default_order: Order) -> Callable[..., Awaitable[PageRequest]]:
    async def page(
        limit: Limit = 20,
        after: Cursor = None,
        before: Cursor = None,
        order: Literal["asc", "desc"] = default_order,
    ) -> PageRequest:
        return PageRequest(limit=limit, after=after, before=before, order=order)

    return page


async def _chat_page(
    limit: Limit = 20,
    after: ChatCursor = None,
    before: ChatCursor = None,
    order: Literal["asc", "desc"] = "desc",
    order_by: Annotated[OrderBy, Query(description=ORDER_BY_HELP)] = "created_at",
) -> PageRequest:
    return PageRequest(limit=limit, after=after, before=before, order=order, order_by=order_by)


ChatPageDep = Annotated[PageRequest, Depends(_chat_page)]
MessagePageDep = Annotated[PageRequest, Depends(_page("asc"))]
