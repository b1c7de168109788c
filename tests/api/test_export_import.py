"""Export and import over the API, on every store: a lossless round trip, a refused hostile file,
an idempotent re-import, a readable Markdown export."""

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from chatkeep.config import Settings
from chatkeep.domain import Chat, NewMessage, Role, Usage
from chatkeep.store import ChatStore, open_store
from chatkeep.transfer.export import jsonl_export, one_chat
from tests.support.app import serve
from tests.support.chats import as_owner, new_chat, post
from tests.support.images import data_url, png
from tests.support.stores import STORES, fresh_database

IMAGE_ITEM = {
    "type": "message",
    "role": "user",
    "content": [
        {"type": "input_text", "text": "what is it?"},
        {"type": "input_image", "image_url": data_url(png()), "detail": "auto"},
    ],
}

JSONL = {"Content-Type": "application/jsonl"}
IMAGE = data_url(png())
ALICE_KEY, BOB_KEY = "alice-key-0123456789", "bob-key-0123456789ab"
T0 = "2024-03-01T12:30:15.123456Z"


@pytest.fixture(params=STORES)
async def two_stores(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[str, str]]:
    """Two new, empty databases of one kind."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    async with (
        fresh_database(request.param, tmp_path / "a") as one,
        fresh_database(request.param, tmp_path / "b") as two,
    ):
        yield one, two


def line(**fields: Any) -> bytes:
    return orjson.dumps(fields)


def header(version: int = 1) -> bytes:
    return line(type="chatkeep.export", version=version, exported_at=T0)


def chat(chat_id: str, count: int, **fields: Any) -> bytes:
    values = {"type": "chat", "id": chat_id, "title": "Handmade", "metadata": {"team": "blue"},
              "system_prompt": "Be brief.", "model": None, "created_at": T0,
              "updated_at": "2024-03-01T12:31:00.000001Z", "message_count": count}  # fmt: skip
    return line(**(values | fields))


def message(chat_id: str, seq: int, message_id: str, content: str = "hi", **fields: Any) -> bytes:
    values = {"type": "message", "chat_id": chat_id, "id": message_id, "seq": seq, "role": "user", "content": content,
              "created_at": f"2024-03-01T12:30:{20 + seq:02}.000{seq:03}Z", "model": None, "usage": None,
              "status": "completed", "incomplete_reason": None, "item": None}  # fmt: skip
    return line(**(values | fields))


def branch(chat_id: str, seq: int, message_id: str, parent_id: str | None, left_at: int = 1, **fields: Any) -> bytes:
    """A message of another branch of the chat, after `parent_id`."""
    fields = {"parent_id": parent_id, "left_at": left_at, "content": f"other {seq}", **fields}
    return line(**orjson.loads(message(chat_id, seq, message_id, **fields)) | {"type": "branch_message"})


def handmade(chat_id: str = "conv_handmade1", prefix: str = "hand") -> bytes:
    """A chat of a question with an image, a function call and its output, and an incomplete reply."""
    image = {"type": "input_image", "image_url": IMAGE, "detail": "auto"}
    question = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "what is it?"}, image]}
    call = {
        "type": "function_call",
        "call_id": "call_1",
        "name": "look",
        "arguments": '{"where": "here"}',
        "id": f"fc_{prefix}",
    }
    output = {"type": "function_call_output", "call_id": "call_1", "output": "a cat", "id": f"fco_{prefix}"}
    lines = [
        header(),
        chat(chat_id, 4),
        message(chat_id, 1, f"msg_{prefix}1", "what is it?", item=question),
        message(chat_id, 2, f"fc_{prefix}", "look", role="assistant", model="m1", item=call),
        message(chat_id, 3, f"fco_{prefix}", "a cat", item=output),
        message(
            chat_id,
            4,
            f"msg_{prefix}4",
            "It is a c",
            role="assistant",
            model="m1",
            usage={"prompt_tokens": 12, "completion_tokens": 3},
            status="incomplete",
            incomplete_reason="stopped",
        ),
    ]
    return b"\n".join(lines) + b"\n"


async def export(client: httpx.AsyncClient, path: str = "/export", **headers: str) -> bytes:
    response = await client.get(path, params={"format": "jsonl"}, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-disposition"].startswith('attachment; filename="chatkeep-')
    return response.content


def without_header(exported: bytes) -> list[bytes]:
    first, *rest = exported.split(b"\n")
    assert orjson.loads(first)["type"] == "chatkeep.export"
    return rest


async def import_file(client: httpx.AsyncClient, body: bytes, **headers: str) -> httpx.Response:
    return await client.post("/import", content=body, headers=JSONL | headers)


async def test_an_export_imports_into_a_fresh_store_and_exports_the_same(two_stores: tuple[str, str]) -> None:
    first_url, second_url = two_stores
    async with serve(Settings(store=first_url, llm_provider="offline")) as client:
        assert (await import_file(client, handmade())).json()["imported"] == 1
        made = await new_chat(client, title="Made here")
        assert (await post(client, made, "Plan three days in Rome")).status_code == 201
        images = {"content": "and this?", "images": [IMAGE]}
        assert (await client.post(f"/chats/{made}/messages", json=images)).status_code == 201
        exported = await export(client)
        assert exported.count(b'"type":"chat"') == 2
        one = await export(client, f"/chats/{made}/export")
    async with serve(Settings(store=second_url, llm_provider="offline")) as client:
        answer = await import_file(client, exported)
        assert (answer.status_code, answer.json()["imported"], answer.json()["unchanged"]) == (200, 2, 0)
        again = await export(client)
        assert without_header(again) == without_header(exported)
        assert without_header(await export(client, f"/chats/{made}/export")) == without_header(one)
        kept = (await client.get(f"/chats/{made}/messages")).json()["data"]
        assert kept[2]["images"] == [IMAGE]
        assert (await post(client, made, "one more")).status_code == 201  # an imported chat takes turns
    handmade_lines = [orjson.loads(text) for text in without_header(handmade()) if text]
    exported_lines = [orjson.loads(text) for text in without_header(exported) if text]
    assert exported_lines[: len(handmade_lines)] == handmade_lines  # ids, seqs, times and items as given


async def test_a_second_import_of_a_file_stores_nothing(store_url: str) -> None:
    async with serve(Settings(store=store_url, llm_provider="offline")) as client:
        first = await import_file(client, handmade())
        second = await import_file(client, handmade())
        listed = (await client.get("/chats")).json()["data"]
    assert (first.json()["imported"], first.json()["unchanged"]) == (1, 0)
    assert second.json() == {
        "imported": 0,
        "unchanged": 1,
        "chats": [{"id": "conv_handmade1", "line": 2, "status": "unchanged"}],
    }
    assert len(listed) == 1


async def test_a_changed_chat_is_a_conflict_named_by_its_line(store_url: str) -> None:
    async with serve(Settings(store=store_url, llm_provider="offline")) as client:
        assert (await import_file(client, handmade())).status_code == 200
        assert (await client.patch("/chats/conv_handmade1", json={"title": "Renamed"})).status_code == 200
        answer = await import_file(client, handmade(prefix="other"))
    assert (answer.status_code, answer.headers["content-type"]) == (409, "application/problem+json")
    assert answer.json()["errors"][0]["line"] == 2


def joined(*lines: bytes) -> bytes:
    return b"\n".join(lines)


H1 = "conv_h1"
HOSTILE: dict[str, tuple[Callable[[], bytes], int, str]] = {
    "malformed JSON on line 7": (
        lambda: joined(header(), chat(H1, 3), message(H1, 1, "msg_1"), message(H1, 2, "msg_2"), b'{"id": ', b""),
        5,
        "not valid JSON",
    ),
    "a seq gap": (lambda: joined(header(), chat(H1, 2), message(H1, 1, "msg_a"), message(H1, 3, "msg_b")), 4, "seq 3"),
    "a message id twice": (
        lambda: joined(
            header(), chat(H1, 1), message(H1, 1, "msg_a"), chat("conv_h2", 1), message("conv_h2", 1, "msg_a")
        ),
        5,
        "used twice",
    ),
    "a chat id twice": (lambda: joined(header(), chat(H1, 0), chat(H1, 0)), 3, "used twice"),
    "a message before its chat": (lambda: joined(header(), message(H1, 1, "msg_a")), 2, "a message of chat 'conv_h1'"),
    "oversized content": (
        lambda: joined(header(), chat(H1, 1), message(H1, 1, "msg_a", "x" * 101)),
        3,
        "over CHATKEEP_MAX_MESSAGE_CHARS",
    ),
    "an unknown type": (lambda: joined(header(), line(type="branch", id="b")), 2, "unknown line type"),
    "another version": (lambda: joined(line(type="chatkeep.export", version=3), chat(H1, 0)), 1, "version 3"),
    "an other branch's message whose parent is unknown": (
        lambda: joined(header(2), chat(H1, 1), message(H1, 1, "msg_a"), branch(H1, 2, "msg_b", "msg_zz")),
        4,
        "parent_id 'msg_zz'",
    ),
    "an other branch's message whose parent comes later": (
        lambda: joined(
            header(2),
            chat(H1, 1),
            message(H1, 1, "msg_a"),
            branch(H1, 3, "msg_c", "msg_b"),
            branch(H1, 2, "msg_b", "msg_a"),
        ),
        4,
        "parent_id 'msg_b'",
    ),
    "an other branch's seq that is not its parent's + 1": (
        lambda: joined(
            header(2), chat(H1, 2), message(H1, 1, "msg_a"), message(H1, 2, "msg_b"), branch(H1, 3, "msg_c", "msg_a")
        ),
        5,
        "seq 3 after 'msg_a' (seq 1)",
    ),
    "a first message of another branch with a parent": (
        lambda: joined(header(2), chat(H1, 1), message(H1, 1, "msg_a"), branch(H1, 1, "msg_b", "msg_a")),
        4,
        "seq 1 after 'msg_a'",
    ),
    "an other branch's message id twice": (
        lambda: joined(header(2), chat(H1, 1), message(H1, 1, "msg_a"), branch(H1, 1, "msg_a", None)),
        4,
        "used twice",
    ),
    "an other branch's message deeper than the limit": (
        lambda: joined(
            header(2),
            chat(H1, 5),
            *(message(H1, n, f"msg_{n}") for n in range(1, 6)),
            branch(H1, 6, "msg_6", "msg_5"),
        ),
        8,
        "CHATKEEP_MAX_CHAT_MESSAGES",
    ),
    "a message line after the branch lines": (
        lambda: joined(
            header(2), chat(H1, 2), message(H1, 1, "msg_a"), branch(H1, 1, "msg_b", None), message(H1, 2, "msg_c")
        ),
        5,
        "come last",
    ),
    "another branch in a version 1 file": (
        lambda: joined(header(), chat(H1, 1), message(H1, 1, "msg_a"), branch(H1, 1, "msg_b", None)),
        4,
        "version 1 file",
    ),
    "a missing header": (lambda: chat(H1, 0), 1, "header"),
    "a count that does not add up": (
        lambda: joined(header(), chat(H1, 2), message(H1, 1, "msg_a")),
        2,
        "message_count 2",
    ),
    "a NUL": (lambda: joined(header(), chat(H1, 1), message(H1, 1, "msg_a", "a\x00b")), 3, "NUL"),
    "a chat over the message limit": (lambda: joined(header(), chat(H1, 6)), 2, "CHATKEEP_MAX_CHAT_MESSAGES"),
    "an unknown field": (lambda: joined(header(), chat(H1, 0, branch="x")), 2, "branch"),
}


@pytest.mark.parametrize("case", HOSTILE)
async def test_a_hostile_import_stores_nothing_and_names_the_line(case: str) -> None:
    body, bad_line, says = HOSTILE[case]
    good = [chat("conv_ok", 1), message("conv_ok", 1, "msg_ok")]  # a valid chat first: it is not stored either
    lines = body().split(b"\n")
    has_header = lines[0] in (header(), header(2))
    file = b"\n".join([lines[0], *good, *lines[1:]]) if has_header else body()
    shift = len(good) if has_header else 0  # so the malformed line is the file's 7th
    async with serve(Settings(llm_provider="offline", max_message_chars=100, max_chat_messages=5)) as client:
        answer = await import_file(client, file)
        listed = (await client.get("/chats")).json()["data"]
    assert (answer.status_code, answer.headers["content-type"]) == (422, "application/problem+json"), answer.text
    problem = answer.json()
    assert problem["type"].endswith("invalid-import")
    assert problem["errors"][0]["line"] == bad_line + shift, problem
    assert says in problem["errors"][0]["detail"], problem
    assert listed == []


async def test_another_owners_chat_id_is_refused_and_not_revealed(store_url: str) -> None:
    settings = Settings(llm_provider="offline", store=store_url, api_keys=f"alice={ALICE_KEY},bob={BOB_KEY}")
    async with serve(settings) as client:
        assert (await import_file(client, handmade(), **as_owner(BOB_KEY))).status_code == 200
        bobs = await export(client, **as_owner(BOB_KEY))
        fresh = handmade("conv_alices1", "alice")
        answer = await import_file(
            client, fresh.rstrip(b"\n") + b"\n" + b"\n".join(without_header(handmade())), **as_owner(ALICE_KEY)
        )
        assert (answer.status_code, answer.json()["errors"][0]["line"]) == (409, 7), answer.text
        assert "Handmade" not in answer.text
        assert "blue" not in answer.text
        assert (await client.get("/chats", headers=as_owner(ALICE_KEY))).json()["data"] == []
        assert without_header(await export(client, **as_owner(BOB_KEY))) == without_header(bobs)
        stolen = handmade("conv_alices2", "hand")  # bob's message ids under a new chat id
        answer = await import_file(client, stolen, **as_owner(ALICE_KEY))
        assert answer.status_code == 409
        assert answer.json()["errors"][0]["line"] in range(3, 7)  # one of bob's message ids: its line


async def test_an_import_over_the_chat_quota_stores_nothing(store_url: str) -> None:
    async with serve(Settings(llm_provider="offline", store=store_url, max_chats=2)) as client:
        await new_chat(client)
        body = b"\n".join([header(), chat("conv_q1", 0), chat("conv_q2", 0)])
        answer = await import_file(client, body)
        assert (answer.status_code, answer.json()["type"]) == (429, "urn:chatkeep:problem:chat-quota")
        assert len((await client.get("/chats")).json()["data"]) == 1


async def test_an_import_takes_json_lines_only_and_its_own_size_limit() -> None:
    async with serve(Settings(llm_provider="offline", max_import_bytes=2000)) as client:
        as_json = await client.post("/import", content=handmade()[:100], headers={"Content-Type": "application/json"})
        as_text = await client.post("/import", content=b"x", headers={"Content-Type": "text/plain"})
        ndjson = await client.post(
            "/import",
            content=b"\n".join([header(), chat("conv_n1", 0)]),
            headers={"Content-Type": "application/x-ndjson"},
        )
        too_big = await import_file(client, b"\n".join([header(), chat("conv_n2", 0, title="x" * 2000)]))
    assert (as_json.status_code, as_text.status_code, ndjson.status_code, too_big.status_code) == (415, 415, 200, 413)
    assert "2000 bytes" in too_big.json()["detail"]


async def test_the_markdown_export_reads_as_the_conversation(offline_client: httpx.AsyncClient) -> None:
    assert (await import_file(offline_client, handmade())).status_code == 200
    response = await offline_client.get("/chats/conv_handmade1/export", params={"format": "markdown"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/markdown")
    assert response.headers["content-disposition"] == 'attachment; filename="chatkeep-conv_handmade1.md"'
    text = response.text
    assert text.startswith("# Handmade\n")
    assert "**User** · 2024-03-01 12:30:21 UTC\n\nwhat is it?" in text
    assert "_[an image, image/png," in text
    assert IMAGE not in text
    assert "Calls `look`" in text
    assert '"where": "here"' in text
    assert "**Function output**" in text
    assert "a cat" in text
    assert "**Assistant (m1)** · 2024-03-01 12:30:24 UTC · _incomplete (stopped)_\n\nIt is a c" in text
    assert (await offline_client.get("/chats/conv_nope/export")).status_code == 404
    assert (await offline_client.get("/export", params={"format": "pdf"})).status_code == 422


async def a_branched_chat(store: ChatStore) -> Chat:
    """A chat whose first reply was regenerated, then whose first question was edited: three branches."""
    chat = await store.create_chat("someone", title="Branched", metadata={}, system_prompt=None)
    await store.append_message("someone", chat.id, NewMessage(Role.USER, "what is it?", item=IMAGE_ITEM))
    await store.append_message("someone", chat.id, NewMessage(Role.ASSISTANT, "A cat.", model="m1", usage=Usage(3, 2)))
    await store.fork_at("someone", chat.id, 2)
    await store.append_message("someone", chat.id, NewMessage(Role.ASSISTANT, "A dog."))
    await store.fork_at("someone", chat.id, 1)
    await store.append_message("someone", chat.id, NewMessage(Role.USER, "and now?"))
    await store.append_message("someone", chat.id, NewMessage(Role.ASSISTANT, "Still a cat."))
    return await store.get_chat("someone", chat.id)


async def test_an_export_carries_every_branch_and_an_import_restores_them(two_stores: tuple[str, str]) -> None:
    first_url, second_url = two_stores
    async with open_store(first_url) as store:
        chat = await a_branched_chat(store)
        exported = b"".join([chunk async for chunk in jsonl_export(store, "someone", one_chat(chat))])
        off_branch = await store.off_branch_messages("someone", chat.id)
    lines = [orjson.loads(text) for text in exported.split(b"\n") if text]
    assert lines[0]["version"] == 2
    assert [found["type"] for found in lines[1:]] == ["chat"] + ["message"] * 2 + ["branch_message"] * 3
    assert [found["content"] for found in lines[2:]] == ["and now?", "Still a cat.", "what is it?", "A cat.", "A dog."]
    assert [found.get("parent_id") for found in lines[4:]] == [None, off_branch[0].message.id, off_branch[0].message.id]
    assert [found["left_at"] for found in lines[4:]] == [2, 1, 2]
    assert lines[4]["item"] == IMAGE_ITEM  # its image as sent
    async with serve(Settings(store=second_url, llm_provider="offline")) as client:
        answer = await import_file(client, exported)
        assert (answer.status_code, answer.json()["imported"]) == (200, 1), answer.text
        assert without_header(await export(client)) == without_header(exported)
        again = await import_file(client, exported)
        assert again.json()["unchanged"] == 1  # the same chat, on every branch
        shown = (await client.get(f"/chats/{chat.id}/messages")).json()["data"]
        assert [m["content"] for m in shown] == ["and now?", "Still a cat."]
        markdown = (await client.get(f"/chats/{chat.id}/export", params={"format": "markdown"})).text
        assert "_The current branch of this chat. Its other branches (3 messages" in markdown
        assert "A dog." not in markdown
        assert (await post(client, chat.id, "one more")).status_code == 201  # it takes turns on its current branch


async def test_an_import_whose_other_branch_holds_a_taken_id_names_its_line(store_url: str) -> None:
    settings = Settings(llm_provider="offline", store=store_url, api_keys=f"alice={ALICE_KEY},bob={BOB_KEY}")
    async with serve(settings) as client:
        assert (await import_file(client, handmade(), **as_owner(BOB_KEY))).status_code == 200
        body = joined(
            header(2), chat("conv_b1", 1), message("conv_b1", 1, "msg_b1"), branch("conv_b1", 1, "msg_hand1", None)
        )
        answer = await import_file(client, body, **as_owner(ALICE_KEY))
        assert (answer.status_code, answer.json()["errors"][0]["line"]) == (409, 4), answer.text
        assert (await client.get("/chats", headers=as_owner(ALICE_KEY))).json()["data"] == []
