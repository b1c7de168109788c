"""Schemathesis's own command against a live `chatkeep serve`: a bounded, seeded run with zero 5xx.

`schemathesis run --checks all`, as a user would run it (every check, streamed turns' events
included, with the contract's two 422s allowed in tests/schemathesis.toml) but one: a retried
POST /chats replays its first answer, as idempotency promises, even when that chat was deleted
since (the fuzzer repeats keys across its scenarios), and reading it then 404s, which ST302
(`ensure_resource_availability`) cannot tell from a lost write; lost writes are what the store,
crash and concurrency tests look for. tests/api/test_schema_fuzz.py looks closer at every answer,
in process.
"""

import asyncio
import sys
from pathlib import Path

from tests.support.servers import chatkeep_server

KEY = "fuzz-key-0123456789abcdef"
SCHEMATHESIS = str(Path(sys.executable).parent / "schemathesis")
CONFIG = str(Path(__file__).parents[1] / "schemathesis.toml")


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
