"""FastAPI dependencies: the one place that reads `request.state`.

The owner is the default one until API keys arrive; every route already takes it, so the store
is always asked on someone's behalf.
"""

from collections.abc import Callable
from typing import Annotated, Literal

from fastapi import Depends, Query, Request

from chatkeep.config import Settings
from chatkeep.domain import Order, PageRequest
from chatkeep.service import ChatService

DEFAULT_OWNER = "default"
MAX_PAGE = 100


def get_service(request: Request) -> ChatService:
    service: ChatService = request.state.service
    return service


def get_settings(request: Request) -> Settings:
    return get_service(request).settings


def get_owner() -> str:
    return DEFAULT_OWNER


ServiceDep = Annotated[ChatService, Depends(get_service)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
OwnerDep = Annotated[str, Depends(get_owner)]

Limit = Annotated[int, Query(ge=1, le=MAX_PAGE, description="page size")]
Cursor = Annotated[str | None, Query(min_length=1, max_length=100, description="an object id")]


def _page(default_order: Order) -> Callable[..., PageRequest]:
    def page(
        limit: Limit = 20,
        after: Cursor = None,
        before: Cursor = None,
        order: Literal["asc", "desc"] = default_order,
    ) -> PageRequest:
        return PageRequest(limit=limit, after=after, before=before, order=order)

    return page


ChatPageDep = Annotated[PageRequest, Depends(_page("desc"))]
MessagePageDep = Annotated[PageRequest, Depends(_page("asc"))]
