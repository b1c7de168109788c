"""ChatService: what chatkeep does, for both of its APIs: chats, their messages and summaries, and turns.

It builds the turn's parts once (admission, engine, running turns, the relay and the locator)
and owns their background work. The native API's turn is here in its own terms (one user message
in, one reply out, replayed by the two message ids); OpenAI's API translates its requests into
the same admission and engine (openai_compat/).
"""

import asyncio
import logging
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta

from chatkeep.api.attachments import image_message
from chatkeep.api_keys import parse_api_keys
from chatkeep.config import Settings
from chatkeep.domain import Chat, ChatChanges, Message, NewMessage, Page, PageRequest, Role, Siblings, Summary
from chatkeep.errors import LLMUnavailableError, MessageNotFoundError, StoreUnavailableError
from chatkeep.idempotency import (
    IdempotencyKey,
    IdempotencyKeys,
    chat_from_result,
    chat_result,
    turn_from_result,
    turn_result,
)
from chatkeep.llm import LLM
from chatkeep.llm.probe import EndpointProbe
from chatkeep.metrics import Metrics
from chatkeep.rate_limit import RateLimit
from chatkeep.search import SearchResults, decode_cursor, encode_cursor, query_terms
from chatkeep.store import ChatStore
from chatkeep.summaries.chat import ChatSummaries
from chatkeep.summaries.rolling import RollingSummaries
from chatkeep.summaries.summarizer import ExtractiveSummarizer, LLMSummarizer, Summarizer
from chatkeep.turns.admission import Admission, Admitted
from chatkeep.turns.engine import NewTurn, TurnEngine
from chatkeep.turns.events import TurnEvent, TurnEvents, TurnOutcome
from chatkeep.turns.locate import TurnLocator
from chatkeep.turns.queue import TurnQueue
from chatkeep.turns.relay import TurnRelay
from chatkeep.turns.running import RunningTurns

log = logging.getLogger(__name__)

PURGE_KEYS_EVERY_SECONDS = 3600.0
READY_TIMEOUT_SECONDS = 2.0


@dataclass(slots=True, frozen=True)
class AnsweredTurn:
    """A native turn's answer: the stored question and its stored reply."""

    user_message: Message
    assistant_message: Message


class ChatService:
    def __init__(
        self, store: ChatStore, llm: LLM, settings: Settings, metrics: Metrics, *, rate_limit: RateLimit | None = None
    ) -> None:
        self.store = store
        self.settings = settings
        self._rate_limit = rate_limit
        summarizer: Summarizer = ExtractiveSummarizer() if settings.provider == "offline" else LLMSummarizer(llm)
        self._summaries = ChatSummaries(
            store, summarizer, metrics, budget=settings.context_tokens // 2, rate_limit=rate_limit
        )
        self._rolling = (
            RollingSummaries(
                store,
                summarizer,
                metrics,
                budget=settings.context_tokens,
                summarize_at=settings.summarize_at,
                summary_tokens=settings.rolling_summary_tokens,
            )
            if settings.rolling_summaries
            else None
        )
        # A held key is refreshed a few times per lease; one not refreshed for a whole lease lost its process.
        self._keys = IdempotencyKeys(store, abandoned_after=timedelta(seconds=settings.turn_lease))
        queue = TurnQueue(
            metrics,
            max_waiting=settings.max_waiting_turns,
            max_in_flight=settings.max_turns_in_flight,
            max_per_owner=_owner_share(settings),
        )
        self.admission = Admission(
            store,
            queue,
            self._keys,
            metrics,
            rate_limit=rate_limit,
            max_chats=settings.max_chats,
            max_chat_messages=settings.max_chat_messages,
        )
        self.running = RunningTurns()
        self.engine = TurnEngine(
            store,
            llm,
            metrics,
            self.running,
            system_prompt=settings.system_prompt,
            budget=settings.context_tokens,
            rolling=self._rolling,
            models=settings.models,
        )
        broadcast = store.broadcast
        self._relay = TurnRelay(broadcast, self.running, store) if broadcast is not None else None
        self.locator = TurnLocator(store, self.running, self._relay)
        if self._relay is not None:
            self._relay.start()
        self._janitor = asyncio.create_task(self._purge_expired_keys(), name="chatkeep-key-purge")
        self._llm_probe = _llm_probe(settings)
        self._abandoned: set[asyncio.Future[None]] = set()  # readiness checks given up on (`_store_ready`)

    async def aclose(self) -> None:
        """Stop the background work and wait while it stores what it wrote (see `RunningTurns.aclose`)."""
        self._janitor.cancel()
        await asyncio.gather(self._janitor, self.running.aclose(), return_exceptions=True)
        await self._summaries.aclose()
        if self._rolling is not None:
            await self._rolling.aclose()
        if self._relay is not None:
            await self._relay.aclose()

    async def readiness(self) -> dict[str, str]:
        """What serves: the store (answering, schema current) and the LLM provider, its endpoint
        answering unless CHATKEEP_READYZ_PROBE_LLM is false (llm/probe.py), both asked at once.
        Raises StoreUnavailableError (naming the LLM too when it is down as well) or LLMUnavailableError."""
        store, llm = await asyncio.gather(self._store_ready(), self._llm_ready(), return_exceptions=True)
        if isinstance(store, StoreUnavailableError) and isinstance(llm, LLMUnavailableError):
            raise StoreUnavailableError(f"{store.detail}; {llm.detail}", retry_after=store.retry_after)
        if isinstance(store, BaseException):
            raise store
        if isinstance(llm, BaseException):
            raise llm
        ready = {"status": "ready", "store": "ok", "llm": self.settings.provider}
        return ready if llm is None else ready | {"llm_endpoint": llm}

    async def _store_ready(self) -> None:
        """Ask the store (and Redis) within READY_TIMEOUT_SECONDS. The check runs in a task of its own
        that is cancelled, not waited for, when the time is up: a hung database keeps a cancelled
        query's connection busy for as long as it hangs, and readiness must answer regardless."""
        check = asyncio.ensure_future(self._ask_store())
        done, _ = await asyncio.wait({check}, timeout=READY_TIMEOUT_SECONDS)
        if not done:
            check.cancel()
            self._abandoned.add(check)  # kept until its cleanup ends, so it is not collected half-done
            check.add_done_callback(self._abandoned.discard)
            raise StoreUnavailableError(
                f"the store did not answer within {READY_TIMEOUT_SECONDS:g}s", retry_after=READY_TIMEOUT_SECONDS
            )
        check.result()

    async def _ask_store(self) -> None:
        await self.store.check_ready()
        if self._rate_limit is not None:
            await self._rate_limit.check_ready()

    async def _llm_ready(self) -> str | None:
        """How the LLM endpoint answered; None for the offline provider, which has none."""
        if self._llm_probe is not None:
            return await self._llm_probe.check()
        if self.settings.provider == "offline":
            return None
        return "not asked (CHATKEEP_READYZ_PROBE_LLM=false)"

    async def create_chat(
        self,
        owner: str,
        *,
        title: str | None,
        metadata: dict[str, str],
        system_prompt: str | None,
        messages: list[NewMessage] | None = None,
        model: str | None = None,
        key: IdempotencyKey | None = None,
    ) -> Chat:
        """Create a chat (with its first `messages`, in the same write); with a key, once: a retry
        gets the chat the first try created. Raises ChatQuotaError or ChatFullError (see
        `Admission.admit_chat`)."""
        async with await self.admission.admit_chat(owner, key, messages=len(messages or ())) as held:
            if held.replay is not None:
                return chat_from_result(held.replay)
            chat = await self.store.create_chat(
                owner,
                title=title,
                metadata=metadata,
                system_prompt=system_prompt,
                messages=messages or (),
                model=model,
            )
            held.succeeded(lambda: chat_result(chat))
            return chat

    async def get_chat(self, owner: str, chat_id: str) -> Chat:
        return await self.store.get_chat(owner, chat_id)

    async def list_chats(self, owner: str, page: PageRequest) -> Page[Chat]:
        return await self.store.list_chats(owner, page)

    async def search(self, owner: str, query: str, *, limit: int, cursor: str | None = None) -> SearchResults:
        """The owner's messages holding every word of `query`, best first, a page at a time.
        Raises InvalidSearchError for a query with no word (or too many), InvalidCursorError for a
        cursor that is not one this search handed out."""
        terms = query_terms(query)
        after = None if cursor is None else decode_cursor(terms, cursor)
        page = await self.store.search_messages(owner, terms, limit=limit, after=after)
        next_cursor = encode_cursor(terms, page.hits[-1].key) if page.has_more else None
        return SearchResults(page.hits, page.has_more, next_cursor)

    async def update_chat(self, owner: str, chat_id: str, changes: ChatChanges) -> Chat:
        return await self.store.update_chat(owner, chat_id, changes)

    async def delete_chat(self, owner: str, chat_id: str) -> None:
        await self.store.delete_chat(owner, chat_id)

    async def list_messages(self, owner: str, chat_id: str, page: PageRequest) -> Page[Message]:
        return await self.store.list_messages(owner, chat_id, page)

    async def summarize(self, owner: str, chat_id: str, *, refresh: bool = False) -> Summary:
        """The chat's counts and summary (see summaries/chat.py): an update that calls the LLM takes
        the owner's rate slot, as a turn does. Raises ChatNotFoundError, RateLimitedError or
        StoreUnavailableError."""
        return await self._summaries.summary(owner, chat_id, refresh=refresh)

    async def post_message(
        self,
        owner: str,
        chat_id: str,
        content: str,
        *,
        images: Sequence[str] = (),
        key: IdempotencyKey | None = None,
    ) -> AnsweredTurn:
        """Run one turn: store the question, ask the LLM with the chat's context, store the reply.

        Raises what admission refuses with (see turns/admission.py), or an LLMError naming the
        stored user message (which stays stored: a retry with the same key re-runs only the reply).
        """
        answered = await self._answer(owner, chat_id, _native_turn(content, images), key, streamed=False)
        assert isinstance(answered, AnsweredTurn)
        return answered

    async def stream_message(
        self,
        owner: str,
        chat_id: str,
        content: str,
        *,
        images: Sequence[str] = (),
        key: IdempotencyKey | None = None,
    ) -> TurnEvents:
        """Start a turn whose reply is streamed: its events, which it writes whether or not anyone
        reads them. What admission refuses is raised here, before anything streams."""
        events = await self._answer(owner, chat_id, _native_turn(content, images), key, streamed=True)
        assert isinstance(events, TurnEvents)
        return events

    async def answer_again(
        self,
        owner: str,
        chat_id: str,
        message_id: str,
        *,
        streamed: bool,
        key: IdempotencyKey | None = None,
        regenerate: bool = False,
    ) -> AnsweredTurn | TurnEvents:
        """Run the reply to a stored question again, as a turn. Without `regenerate`, a question
        whose reply was lost (the LLM failed, or the server stopped before storing it), and
        ChatMovedOnError when it is no longer the chat's last message. With it, any question of
        the current branch, or a reply (its question is answered): what came after the question
        leaves the current branch, kept as the new reply's sibling. Its events when `streamed`,
        else the answered turn."""
        turn = NewTurn([], _ids_of, answers=message_id, regenerate=regenerate)
        return await self._answer(owner, chat_id, turn, key, streamed=streamed, inputs=0)

    async def edit_message(
        self,
        owner: str,
        chat_id: str,
        message_id: str,
        content: str,
        *,
        images: Sequence[str] = (),
        streamed: bool,
        key: IdempotencyKey | None = None,
    ) -> AnsweredTurn | TurnEvents:
        """Answer `content` in the place of the user question `message_id`, on a new branch: the
        question and what came after it stay, as its sibling. Its events when `streamed`, else the
        answered turn."""
        turn = replace(_native_turn(content, images), replaces=message_id)
        return await self._answer(owner, chat_id, turn, key, streamed=streamed)

    async def switch_branch(self, owner: str, chat_id: str, message_id: str) -> Chat:
        """Make the branch through `message_id` the chat's current one, in the chat's turn order."""
        admitted = await self.admission.admit(owner, chat_id, None, inputs=0, replies=0, rated=False)
        return await self.engine.switch_branch(admitted, message_id)

    async def siblings(self, owner: str, chat_id: str, messages: Sequence[Message]) -> dict[str, Siblings]:
        return await self.store.siblings(owner, chat_id, messages)

    async def _answer(
        self, owner: str, chat_id: str, turn: NewTurn, key: IdempotencyKey | None, *, streamed: bool, inputs: int = 1
    ) -> AnsweredTurn | TurnEvents:
        """Admit and run a native turn that answers one question: its events when `streamed`, else
        the answered turn (a replay of the key's, when it already was)."""
        admitted = await self.admission.admit(owner, chat_id, key, inputs=inputs)
        if admitted.replay is not None:
            answered = await self._replayed(admitted)
            return TurnEvents.ended(answered.user_message, answered.assistant_message) if streamed else answered
        if streamed:
            events = self.engine.start(admitted, turn).events
            assert events is not None
            return events
        outcome = await self.engine.run(admitted, turn)
        return AnsweredTurn(outcome.inputs[-1], outcome.outputs[0])

    async def turn_events(
        self, owner: str, chat_id: str, user_message_id: str, last_event_id: str | None
    ) -> AsyncGenerator[list[TurnEvent], None]:
        """Resume a streamed turn after `last_event_id` (see `TurnLocator.events_after`)."""
        return await self.locator.events_after(owner, chat_id, user_message_id, last_event_id)

    async def stop_turn(self, owner: str, chat_id: str, user_message_id: str) -> Message:
        """Stop the reply to `user_message_id` on whichever process writes it (see `TurnLocator.stop`)."""
        return await self.locator.stop(owner, chat_id, user_message_id)

    async def _replayed(self, admitted: Admitted) -> AnsweredTurn:
        assert admitted.replay is not None
        assert admitted.chat is not None
        user_message_id, assistant_message_id = turn_from_result(admitted.replay)
        question, reply = await self._on_any_branch(
            admitted.owner, admitted.chat.id, user_message_id, assistant_message_id
        )
        return AnsweredTurn(question, reply)

    async def _on_any_branch(self, owner: str, chat_id: str, *message_ids: str) -> list[Message]:
        """The messages by id, from the current branch or, when one left it since, from the others."""
        found: list[Message] = []
        for message_id in message_ids:
            try:
                found.append(await self.store.get_message(owner, chat_id, message_id))
            except MessageNotFoundError:
                kept = {off.message.id: off.message for off in await self.store.off_branch_messages(owner, chat_id)}
                if message_id not in kept:
                    raise
                found.append(kept[message_id])
        return found

    async def _purge_expired_keys(self) -> None:
        while True:
            await asyncio.sleep(PURGE_KEYS_EVERY_SECONDS)
            try:
                purged = await self._keys.purge()
            except Exception:
                log.exception("purging expired idempotency keys failed")
            else:
                log.info("purged %d expired idempotency keys", purged)


def _owner_share(settings: Settings) -> int | None:
    """How many turns in flight one owner may hold here; None when only one owner exists to hold them."""
    keys = settings.api_keys
    owners = len(set(parse_api_keys(keys.get_secret_value()).values())) if keys is not None else 1
    if owners < 2 or settings.owner_share >= 1:
        return None
    return max(1, int(settings.max_turns_in_flight * settings.owner_share))


def _llm_probe(settings: Settings) -> EndpointProbe | None:
    """What /readyz asks whether the LLM endpoint answers, if anything."""
    if settings.provider == "offline" or not settings.readyz_probe_llm:
        return None
    key = settings.openai_api_key
    return EndpointProbe(
        settings.openai_base_url, key.get_secret_value() if key else None, timeout=READY_TIMEOUT_SECONDS
    )


def _native_turn(content: str, images: Sequence[str] = ()) -> NewTurn:
    """A native turn: one user message in (with its images, a message item: api/attachments.py),
    one reply out, replayed by its two message ids."""
    item = image_message(content, list(images)) if images else None
    return NewTurn([NewMessage(Role.USER, content, item=item)], _ids_of)


def _ids_of(outcome: TurnOutcome) -> str:
    return turn_result(outcome.inputs[-1].id, outcome.outputs[0].id)
