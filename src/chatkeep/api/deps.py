"""FastAPI dependencies: the one place that reads `request.state`.

Every chat route takes the owner: the holder of the API key presented, or the default owner
when the server runs without keys. The store is always asked on someone's behalf.
"""

from collections.abc import Awaitable, Callable
from typing import Annotated, Literal

from fastapi import Depends, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from chatkeep.api_keys import ApiKeys
from chatkeep.config import Settings
from chatkeep.domain import Order, PageRequest
from chatkeep.service import ChatService

DEFAULT_OWNER = "default"
MAX_PAGE = 100


# Dependencies are `async def` although none awaits: FastAPI runs plain `def` ones in a worker
# thread, a hop that cost more than a whole turn's own work.


async def get_service(request: Request) -> ChatService:
    service: ChatService = request.state.service
    return service


async def get_settings(request: Request) -> Settings:
    service: ChatService = request.state.service
    return service.settings


_bearer = HTTPBearer(auto_error=False, description="an API key of CHATKEEP_API_KEYS")


async def get_owner(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> str:
    api_keys: ApiKeys | None = request.state.api_keys
    if api_keys is None:
        return DEFAULT_OWNER
    return api_keys.owner(credentials.credentials if credentials else None)


ServiceDep = Annotated[ChatService, Depends(get_service)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
OwnerDep = Annotated[str, Depends(get_owner)]

Limit = Annotated[int, Query(ge=1, le=MAX_PAGE, description="page size")]
Cursor = Annotated[str | None, Query(min_length=1, max_length=100, description="an object id")]


def _page(default_order: Order) -> Callable[..., Awaitable[PageRequest]]:
    async def page(
        limit: Limit = 20,
        after: Cursor = None,
        before: Cursor = None,
        order: Literal["asc", "desc"] = default_order,
    ) -> PageRequest:
        return PageRequest(limit=limit, after=after, before=before, order=order)

    return page


ChatPageDep = Annotated[PageRequest, Depends(_page("desc"))]
MessagePageDep = Annotated[PageRequest, Depends(_page("asc"))]
