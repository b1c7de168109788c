"""Schemathesis against the app's own OpenAPI document, in process: a bounded, seeded run with zero 5xx.

Every generated request must get an answer that the schema declares (status, content type,
body), and every error must be a problem+json whose `status` is the HTTP status. The app runs
with an API key, so schemathesis also checks that requests without it are refused. Schema-valid
requests must be accepted, but for three refusals the schema cannot express, 422 by contract: a
cursor that names no object (ids are opaque strings), an Idempotency-Key already used for
another request (the fuzzer repeats keys), a chat's model that the server does not serve (the
models served are a setting), a search with no word to look for, or too many (`q` is any
text), or `GET /chats` given a search, and an import whose body (any text) is no export.
OpenAI's API under /v1 answers its errors in OpenAI's shape, and a 400 where the native API
says 422. tests/processes/test_schema_fuzz.py runs `schemathesis run --checks all` against a
live server.
"""

from typing import Any

import orjson
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import Case
from schemathesis.core.parameters import ParameterLocation
from schemathesis.specs.openapi.checks import positive_data_acceptance

from chatkeep.config import Settings
from chatkeep.server.app import create_app

KEY = "fuzz-key-0123456789abcdef"
CONTRACTUAL_422 = ("invalid-cursor", "idempotency-key-reused", "model-not-served", "invalid-search", "invalid-import")
AUTH = {"Authorization": f"Bearer {KEY}"}
app = create_app(Settings(llm_provider="offline", store="memory://", api_keys=f"fuzzer={KEY}"))
schema = schemathesis.openapi.from_asgi("/openapi.json", app)


@schemathesis.serializer("application/jsonl", "application/x-ndjson")
def json_lines(context: schemathesis.SerializationContext, value: Any) -> bytes:
    """An import's body, JSON Lines: the text generated for it (its schema is a string), as it is."""
    return value.encode() if isinstance(value, str) else orjson.dumps(value)


@schema.parametrize()
@settings(max_examples=40, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_answer_conforms_to_the_schema(case: Case[Any]) -> None:
    # A case generated without valid headers on purpose (e.g. no Authorization) is sent as it is.
    headers = {} if case.meta is not None and case.meta.is_negative_at(ParameterLocation.HEADER) else AUTH
    response = case.call(headers=headers)
    case.validate_response(response, headers=headers, excluded_checks=[positive_data_acceptance])
    assert response.status_code < 500
    if response.status_code >= 400 and case.path.startswith("/v1/"):
        assert response.headers["content-type"] == ["application/json"]  # OpenAI's error shape
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}
        assert response.status_code != 422
    elif response.status_code >= 400:
        assert response.headers["content-type"] == ["application/problem+json"]
        assert response.json()["status"] == response.status_code
    if response.status_code == 422 and case.meta is not None and not case.meta.generation.mode.is_negative:
        assert response.json()["type"].endswith(CONTRACTUAL_422), response.text
