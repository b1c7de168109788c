"""Schemathesis against the app's own OpenAPI document: bounded, seeded runs with zero 5xx.

`schemathesis run --checks all` against a live server, as a user would run it (every check,
streamed turns' events included, with the contract's two 422s allowed in tests/schemathesis.toml)
but one: a retried POST /chats replays its first answer, as idempotency promises, even when that
chat was deleted since (the fuzzer repeats keys across its scenarios), and reading it then 404s,
which ST302 (`ensure_resource_availability`) cannot tell from a lost write; lost writes are what
the store, crash and concurrency tests look for. And an in-process run that looks closer at
every answer:

Every generated request must get an answer that the schema declares (status, content type,
body), and every error must be a problem+json whose `status` is the HTTP status. The app runs
with an API key, so schemathesis also checks that requests without it are refused. Schema-valid
requests must be accepted, but for two refusals the schema cannot express, 422 by contract: a
cursor that names no object (ids are opaque strings), and an Idempotency-Key already used for
another request (the fuzzer repeats keys). OpenAI's API under /v1 answers its errors in OpenAI's
shape, and a 400 where the native API says 422.
"""

import asyncio
import sys
from pathlib import Path
from typing import Any

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import Case
from schemathesis.core.parameters import ParameterLocation
from schemathesis.specs.openapi.checks import positive_data_acceptance

from chatkeep.app import create_app
from chatkeep.config import Settings
from tests.servers import chatkeep_server

KEY = "fuzz-key-0123456789abcdef"
CONTRACTUAL_422 = ("invalid-cursor", "idempotency-key-reused")
AUTH = {"Authorization": f"Bearer {KEY}"}
SCHEMATHESIS = str(Path(sys.executable).parent / "schemathesis")
CONFIG = str(Path(__file__).with_name("schemathesis.toml"))
app = create_app(Settings(llm_provider="offline", store="memory://", api_keys=f"fuzzer={KEY}"))
schema = schemathesis.openapi.from_asgi("/openapi.json", app)


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


async def test_schemathesis_run_with_every_check_passes_against_a_live_server(tmp_path: Path) -> None:
    env = {"CHATKEEP_LLM_PROVIDER": "offline", "CHATKEEP_API_KEYS": f"fuzzer={KEY}"}
    async with chatkeep_server(env, tmp_path / "server.log") as server:
        run = await asyncio.create_subprocess_exec(
            *(SCHEMATHESIS, "--config-file", CONFIG, "run", f"{server.client.base_url}/openapi.json"),
            *("--checks", "all", "--exclude-checks", "ensure_resource_availability"),
            *("--header", f"Authorization: Bearer {KEY}", "--max-examples", "30", "--seed", "1"),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output, _ = await run.communicate()
    assert run.returncode == 0, output.decode()[-6000:]
