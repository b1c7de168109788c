"""The overload client: more turns than a server may hold offered at once, and what became of each.

It runs in a process of its own on the load core (`python -m bench.overload URL CHATS_FILE`), as
`bench.burst` does: it posts one turn to every chat at once, each on its own connection, then
reads every chat back. It prints one JSON line: how many turns were accepted (201) and refused
(503), how soon the refusals came, whether each carried Retry-After and the `overloaded` problem
type, and how many turns broke the contract: lost (accepted but not stored whole), doubled
(stored twice) or stored although refused. Figures that need an answer of their kind (the 503
percentiles, the accepted turns' wall time) are left out when there is none.
"""

import argparse
import asyncio
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson
import uvloop

from bench.client import TURN

TIMEOUT = aiohttp.ClientTimeout(total=120)
AUDIT_CONNECTIONS = 32
PROBLEM_JSON = "application/problem+json"
OVERLOADED_SLUG = "overloaded"
TURN_MESSAGES = 2  # the question and its reply


@dataclass(frozen=True, slots=True)
class Answer:
    status: int  # 0 when no answer came (connection error, timeout)
    sent: float
    answered: float
    retry_after: bool = False
    overloaded: bool = False  # a problem+json whose type ends with the overloaded slug

    @property
    def milliseconds(self) -> float:
        return (self.answered - self.sent) * 1000


async def offer(url: str, chat_ids: list[str]) -> dict[str, float]:
    connector = aiohttp.TCPConnector(limit=len(chat_ids), force_close=True)
    async with aiohttp.ClientSession(connector=connector, timeout=TIMEOUT) as http:
        started = time.perf_counter()
        answers = await asyncio.gather(*(_post(http, url, chat_id) for chat_id in chat_ids))
        counts = await _message_counts(http, url, chat_ids)
    return summary(list(answers), counts, started)


async def _post(http: aiohttp.ClientSession, url: str, chat_id: str) -> Answer:
    sent = time.perf_counter()
    try:
        async with http.post(f"{url}/chats/{chat_id}/messages", json=TURN) as response:
            body = await response.read()
    except (aiohttp.ClientError, TimeoutError):
        return Answer(0, sent, time.perf_counter())
    answered = time.perf_counter()
    retry_after = response.headers.get("Retry-After", "").strip().isdigit()
    overloaded = _is_overloaded(response.headers.get("Content-Type", ""), body)
    return Answer(response.status, sent, answered, retry_after=retry_after, overloaded=overloaded)


def _is_overloaded(kind: str, body: bytes) -> bool:
    if not kind.startswith(PROBLEM_JSON):
        return False
    try:
        problem = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    return isinstance(problem, dict) and str(problem.get("type", "")).endswith(OVERLOADED_SLUG)


async def _message_counts(http: aiohttp.ClientSession, url: str, chat_ids: list[str]) -> list[int]:
    """Every chat's stored messages, read once the burst is over; raises on a non-2xx answer."""
    limit = asyncio.Semaphore(AUDIT_CONNECTIONS)

    async def count(chat_id: str) -> int:
        async with limit, http.get(f"{url}/chats/{chat_id}") as response:
            response.raise_for_status()
            found: int = orjson.loads(await response.read())["message_count"]
            return found

    return list(await asyncio.gather(*(count(chat_id) for chat_id in chat_ids)))


def summary(answers: list[Answer], counts: list[int], started: float) -> dict[str, float]:
    accepted = [count for answer, count in zip(answers, counts, strict=True) if answer.status == 201]
    refused = [answer for answer in answers if answer.status == 503]
    stored_refused = sum(count > 0 for answer, count in zip(answers, counts, strict=True) if answer.status == 503)
    found: dict[str, float] = {
        "offered": len(answers),
        "accepted": len(accepted),
        "refused": len(refused),
        "other": len(answers) - len(accepted) - len(refused),
        "refused_without_retry_after": sum(not answer.retry_after for answer in refused),
        "refused_untyped": sum(not answer.overloaded for answer in refused),
        "lost": sum(count < TURN_MESSAGES for count in accepted),
        "doubled": sum(count > TURN_MESSAGES for count in accepted),
        "stored_refused": stored_refused,
    }
    if accepted:
        found["accepted_seconds"] = max(answer.answered for answer in answers if answer.status == 201) - started
    if refused:
        milliseconds = sorted(answer.milliseconds for answer in refused)
        found["refused_p50_ms"] = percentile(milliseconds, 0.5)
        found["refused_p99_ms"] = percentile(milliseconds, 0.99)
    return found


def percentile(ordered: list[float], share: float) -> float:
    """Nearest-rank percentile of sorted, non-empty `ordered`."""
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description="Post one turn to every chat at once; count what was refused.")
    parser.add_argument("url")
    parser.add_argument("chats", type=Path, help="a file with one chat id per line")
    args = parser.parse_args()
    chat_ids = args.chats.read_text().split()
    print(json.dumps(uvloop.run(offer(args.url, chat_ids))))


if __name__ == "__main__":
    main()
