"""Idempotency keys: a retried request is answered once, whatever the network did.

A request that carries a key claims it in the store (shared by every process). The claim tells
what to do: run the request, replay the answer of one that succeeded, re-run only the reply of
a turn whose LLM call failed after the question was stored, or refuse (the key is in flight,
409; or was used for another request, 422). A `HeldKey` then records how the request ended.
Keys are scoped per owner and kept KEY_TTL. While a request works on its key this process keeps
it alive in the store (the SQL stores refresh it on the heartbeat of their turn tickets), so a
retry can take over only a key whose holder died, however long its turn waits in line.
"""

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson

from chatkeep.domain import Chat, KeyState, utcnow
from chatkeep.errors import IdempotencyKeyInFlightError, IdempotencyKeyReusedError
from chatkeep.store import ChatStore

KEY_TTL = timedelta(hours=24)
MAX_KEY_CHARS = 255
KEY_PATTERN = re.compile(r"^[\x21-\x7e]+$")  # visible ASCII
IDEMPOTENCY_KEY_HELP = "retries with the same key and body are answered once (kept 24 h, per owner)"
IN_FLIGHT_RETRY_AFTER_SECONDS = 1.0


@dataclass(slots=True, frozen=True)
class IdempotencyKey:
    """A client's key, and the fingerprint of the request it came with."""

    value: str
    fingerprint: str

    @classmethod
    def for_request(cls, value: str, route: str, body: Any) -> "IdempotencyKey":
        """The fingerprint covers the route and the body's meaning (key order and spacing aside)."""
        canonical = orjson.dumps({"route": route, "body": body}, option=orjson.OPT_SORT_KEYS)
        return cls(value, hashlib.sha256(canonical).hexdigest())


class HeldKey:
    """One request's hold on its key: what to replay or retry, and how the request ended.

    `replay` is the stored result of a request that already succeeded (nothing to run);
    `retry_of` the stored question whose reply failed. Without a key, a hold does nothing.
    """

    def __init__(
        self,
        store: ChatStore | None,
        owner: str,
        key: str,
        *,
        replay: str | None = None,
        retry_of: str | None = None,
    ) -> None:
        self._store, self._owner, self._key = store, owner, key
        self.replay = replay
        self.retry_of = retry_of
        self._question = retry_of
        self._result: Callable[[], str] | None = None

    async def question_stored(self, user_message_id: str) -> None:
        """From here on a failure is retried by re-running only the reply."""
        self._question = user_message_id
        if self._store is not None:
            await self._store.update_key(
                self._owner, self._key, state=KeyState.RUNNING, user_message_id=user_message_id
            )

    def succeeded(self, result: Callable[[], str]) -> None:
        """The request succeeded; `result` renders what a retry replays (only when a key is held)."""
        self._result = result

    async def settle(self) -> None:
        """Record the ending: the result to replay, a failure to retry, or nothing stored at all."""
        if self._store is None or self.replay is not None:
            return
        self._store.let_key_lapse(self._owner, self._key)
        if self._result is not None:
            await self._store.update_key(self._owner, self._key, state=KeyState.DONE, result=self._result())
        elif self._question is not None:
            await self._store.update_key(self._owner, self._key, state=KeyState.FAILED)
        else:
            await self._store.release_key(self._owner, self._key)

    async def __aenter__(self) -> "HeldKey":
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.settle()


NO_KEY = HeldKey(None, "", "")


class IdempotencyKeys:
    def __init__(self, store: ChatStore, *, abandoned_after: timedelta) -> None:
        self._store = store
        self._abandoned_after = abandoned_after  # a RUNNING key not refreshed for this long lost its holder

    async def hold(self, owner: str, key: IdempotencyKey | None) -> HeldKey:
        """Claim `key` for a request. Raises IdempotencyKeyReusedError or IdempotencyKeyInFlightError."""
        if key is None:
            return NO_KEY
        now = utcnow()
        claim = await self._store.claim_key(
            owner,
            key.value,
            key.fingerprint,
            expired_before=now - KEY_TTL,
            abandoned_before=now - self._abandoned_after,
        )
        previous = claim.previous
        if claim.claimed:
            self._store.keep_key_alive(owner, key.value)
            return HeldKey(self._store, owner, key.value, retry_of=previous.user_message_id if previous else None)
        assert previous is not None
        if previous.fingerprint != key.fingerprint:
            raise IdempotencyKeyReusedError(f"the Idempotency-Key {key.value!r} was used for a different request")
        if previous.state is KeyState.DONE and previous.result is not None:
            return HeldKey(self._store, owner, key.value, replay=previous.result)
        raise IdempotencyKeyInFlightError(
            f"a request with the Idempotency-Key {key.value!r} is still in flight",
            retry_after=IN_FLIGHT_RETRY_AFTER_SECONDS,
        )

    async def purge(self) -> int:
        return await self._store.purge_keys(expired_before=utcnow() - KEY_TTL)


def chat_result(chat: Chat) -> str:
    return orjson.dumps(chat).decode()


def chat_from_result(result: str) -> Chat:
    data = orjson.loads(result)
    for moment in ("created_at", "updated_at"):
        data[moment] = datetime.fromisoformat(data[moment])
    return Chat(**data)


def turn_result(user_message_id: str, assistant_message_id: str) -> str:
    return orjson.dumps({"user_message_id": user_message_id, "assistant_message_id": assistant_message_id}).decode()


def turn_from_result(result: str) -> tuple[str, str]:
    data = orjson.loads(result)
    return data["user_message_id"], data["assistant_message_id"]
