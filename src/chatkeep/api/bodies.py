"""JSON bodies of successful answers, written by orjson straight from the domain dataclasses.

The domain objects have exactly the fields of their API schemas (schemas.py), so orjson can
write them directly: several times cheaper than validating them into pydantic models first,
on the path every turn takes. The schemas still document the answers, and the schemathesis run
in `make test` checks every answer against them.
"""

from typing import Any, TypeVar

import orjson
from starlette.responses import Response

from chatkeep.domain import Identified, Page

OPTIONS = orjson.OPT_UTC_Z

T = TypeVar("T", bound=Identified)


def json_response(body: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(body, option=OPTIONS), status_code=status, media_type="application/json", headers=headers
    )


def page_body(page: Page[T]) -> dict[str, Any]:
    return {"data": page.data, "first_id": page.first_id, "last_id": page.last_id, "has_more": page.has_more}
