"""`chatkeep serve` and the `chatkeep chat` client as a user runs them, in subprocesses."""

import asyncio
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from chatkeep.config import Settings
from tests.support.app import serve
from tests.support.chats import as_owner
from tests.support.ports import free_port
from tests.support.servers import CHATKEEP, clean_env, run_chat, wait_until_serving

BOB_KEY = "bob-key-0123456789ab"
KEYS = f"alice=alice-key-0123456789, bob={BOB_KEY}"


@pytest.mark.parametrize("command", [[CHATKEEP], [sys.executable, "-m", "chatkeep"]], ids=["script", "module"])
def test_serve_runs_the_api_and_docs_offline_without_a_key(command: list[str]) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [*command, "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=clean_env(),
        stderr=subprocess.PIPE,
    )
    try:
        wait_until_serving(url, process)
        assert httpx.get(url + "/docs").status_code == 200
        chat = httpx.post(url + "/chats").json()
        turn = httpx.post(f"{url}/chats/{chat['id']}/messages", json={"content": "hello"}).json()
        assert turn["assistant_message"]["model"] == "chatkeep-offline"
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=10)
    assert "LLM offline: placeholder replies, no model connected; to connect one, set OPENAI_BASE_URL" in (
        stderr.decode()
    )


def test_serve_flag_overrides_the_environment() -> None:
    port = free_port()
    env = clean_env(OPENAI_API_KEY="sk-x", OPENAI_BASE_URL="http://127.0.0.1:9/v1", CHATKEEP_LLM_MODEL="from-env")
    process = subprocess.Popen(
        [CHATKEEP, "serve", "--port", str(port), "--llm-model", "from-flag"], env=env, stderr=subprocess.PIPE
    )
    try:
        wait_until_serving(f"http://127.0.0.1:{port}", process)
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=10)
    assert "LLM openai (from-flag at http://127.0.0.1:9/v1)" in stderr.decode()


@pytest.mark.parametrize(
    ("env", "options"),
    [
        ({"OPENAI_BASE_URL": "http://127.0.0.1:9/v1"}, []),
        ({}, ["--openai-base-url", "http://127.0.0.1:9/v1"]),
        ({}, ["--llm-url", "http://127.0.0.1:9/v1"]),
    ],
    ids=["env", "flag", "alias"],
)
def test_serve_talks_to_a_local_server_given_only_its_url(env: dict[str, str], options: list[str]) -> None:
    port = free_port()
    process = subprocess.Popen(
        [CHATKEEP, "serve", "--port", str(port), *options], env=clean_env(**env), stderr=subprocess.PIPE
    )
    try:
        wait_until_serving(f"http://127.0.0.1:{port}", process)
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=10)
    assert "LLM openai (gpt-4o-mini at http://127.0.0.1:9/v1)" in stderr.decode()


def test_serve_takes_its_address_from_the_environment_and_a_flag_over_it() -> None:
    port = free_port()
    for env, options in [
        ({"CHATKEEP_HOST": "127.0.0.1", "CHATKEEP_PORT": str(port), "CHATKEEP_WORKERS": "1"}, []),
        ({"CHATKEEP_PORT": "1"}, ["--port", str(port)]),
    ]:
        process = subprocess.Popen([CHATKEEP, "serve", *options], env=clean_env(**env), stderr=subprocess.PIPE)
        try:
            wait_until_serving(f"http://127.0.0.1:{port}", process)
        finally:
            process.terminate()
            process.communicate(timeout=10)


BAD_ADDRESSES = {
    "port not a number": ({"CHATKEEP_PORT": "http"}, "CHATKEEP_PORT (--port)"),
    "port too high": ({"CHATKEEP_PORT": "70000"}, "CHATKEEP_PORT (--port)"),
    "no workers": ({"CHATKEEP_WORKERS": "0"}, "CHATKEEP_WORKERS (--workers)"),
    "workers not a number": ({"CHATKEEP_WORKERS": "two"}, "CHATKEEP_WORKERS (--workers)"),
    "host with a space": ({"CHATKEEP_HOST": "local host"}, "CHATKEEP_HOST (--host)"),
}


@pytest.mark.parametrize(("env", "named"), BAD_ADDRESSES.values(), ids=BAD_ADDRESSES.keys())
def test_serve_refuses_an_address_it_cannot_serve_on(env: dict[str, str], named: str) -> None:
    result = subprocess.run([CHATKEEP, "serve"], env=clean_env(**env), capture_output=True, timeout=30)
    assert result.returncode == 2
    lines = result.stderr.decode().strip().splitlines()
    assert lines == [lines[0]], lines
    assert lines[0].startswith(f"chatkeep: invalid {named}: ")


def test_serve_reads_host_and_workers_from_the_environment_for_its_checks_too() -> None:
    beyond = subprocess.run(
        [CHATKEEP, "serve"], env=clean_env(CHATKEEP_HOST="0.0.0.0"), capture_output=True, timeout=30
    )
    assert (beyond.returncode, b"without CHATKEEP_API_KEYS" in beyond.stderr) == (2, True)
    workers = subprocess.run([CHATKEEP, "serve"], env=clean_env(CHATKEEP_WORKERS="2"), capture_output=True, timeout=30)
    assert (workers.returncode, b"--workers needs a store" in workers.stderr) == (2, True)


def test_serve_refuses_an_invalid_setting_clearly() -> None:
    result = subprocess.run(
        [CHATKEEP, "serve", "--context-tokens", "five"], env=clean_env(), capture_output=True, timeout=30
    )
    assert result.returncode == 2
    assert "invalid CHATKEEP_CONTEXT_TOKENS (--context-tokens)" in result.stderr.decode()


def test_serve_refuses_a_rate_limit_of_no_turns() -> None:
    result = subprocess.run(
        [CHATKEEP, "serve", "--port", "0"],
        env=clean_env(CHATKEEP_RATE_LIMIT="0/minute"),
        capture_output=True,
        timeout=30,
    )
    assert result.returncode == 2
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("chatkeep: invalid CHATKEEP_RATE_LIMIT (--rate-limit): ")


def test_every_setting_is_a_serve_flag_with_its_kind_default_and_env_name() -> None:
    result = subprocess.run(
        [CHATKEEP, "serve", "--help"], capture_output=True, timeout=30, check=True, env=clean_env(COLUMNS="200")
    )
    entries = _help_entries(result.stdout.decode())
    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        assert flag in entries, flag
        metavar, help_text = entries[flag]
        assert metavar not in {"", "VALUE"}, flag
        env = name.upper() if name.startswith("openai_") else f"CHATKEEP_{name.upper()}"
        assert f"env {env})" in help_text, (flag, help_text)
        if field.annotation is SecretStr or field.annotation == SecretStr | None:
            assert "default" not in help_text, (flag, help_text)  # a secret has none to show
        else:
            assert "(default: " in help_text, (flag, help_text)
    assert entries["--rolling-summaries"] == ("{true,false}", entries["--rolling-summaries"][1])
    assert entries["--log-level"][0] == "{critical,error,warning,info,debug}"
    assert entries["--log-format"][0] == "{text,json}"
    assert entries["--llm-timeout"][0] == "SECONDS"
    assert "(default: 1800; env CHATKEEP_LLM_TIMEOUT)" in entries["--llm-timeout"][1]
    assert entries["--port"][0] == "PORT"
    assert "(default: 8000; env CHATKEEP_PORT)" in entries["--port"][1]
    assert entries["--openai-base-url"][0] == "URL"
    assert entries["--workers"][0] == "N"
    assert "(default: true; env CHATKEEP_METRICS)" in entries["--metrics"][1]


def _help_entries(text: str) -> dict[str, tuple[str, str]]:
    """Each flag of a help text, with its metavar (its value's kind) and its help, on one line."""
    entries: dict[str, tuple[str, str]] = {}
    for block in re.split(r"\n(?=  --)", text):
        found = re.match(r"  (--[a-z-]+)(?: (\S+?))?(?:, --[a-z-]+(?: \S+)?)*\s+(.*)", block, re.DOTALL)
        if found:
            flag, metavar, help_text = found.groups()
            entries[flag] = (metavar or "", " ".join(help_text.split()))
    return entries


def test_serve_refuses_to_listen_beyond_loopback_without_keys() -> None:
    result = subprocess.run(
        [CHATKEEP, "serve", "--host", "0.0.0.0", "--port", "1"], env=clean_env(), capture_output=True, timeout=30
    )
    assert result.returncode == 2
    assert "without CHATKEEP_API_KEYS" in result.stderr.decode()


def test_serve_refuses_several_workers_on_the_memory_store() -> None:
    command = [CHATKEEP, "serve", "--workers", "2"]
    result = subprocess.run(command, env=clean_env(), capture_output=True, timeout=30)
    assert result.returncode == 2
    assert "--workers needs a store the processes can share" in result.stderr.decode()


def test_several_workers_on_sqlite_share_the_chats(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [CHATKEEP, "serve", "--port", str(port), "--workers", "2", "--store", f"sqlite:///{tmp_path}/w.db"]
    process = subprocess.Popen(command, env=clean_env(), stderr=subprocess.PIPE)
    try:
        wait_until_serving(url, process)
        with httpx.Client(base_url=url, timeout=30) as client, ThreadPoolExecutor(8) as pool:
            chat_id = client.post("/chats").json()["id"]
            path = f"/chats/{chat_id}/messages"
            posts = pool.map(lambda n: client.post(path, json={"content": f"q{n}"}).status_code, range(8))
            assert list(posts) == [201] * 8
            messages = client.get(path).json()["data"]
    finally:
        process.terminate()
        process.communicate(timeout=20)
    assert [m["seq"] for m in messages] == list(range(1, 17))
    assert [m["role"] for m in messages] == ["user", "assistant"] * 8
    for question, answer in zip(messages[::2], messages[1::2], strict=True):
        assert f"“{question['content']}”" in answer["content"]


async def test_chat_client_streams_replies_and_runs_its_commands(offline_client: httpx.AsyncClient) -> None:
    output = await run_chat(offline_client, "hello there\n/summary\n/list\n/new\n/quit\nnever sent\n")
    chats = (await offline_client.get("/chats")).json()["data"]
    assert len(chats) == 1  # /new makes no chat before its first message
    first = chats[0]["id"]
    assert output.startswith(f"new chat {first}")
    messages = (await offline_client.get(f"/chats/{first}/messages")).json()["data"]
    assert [m["content"] for m in messages[:1]] == ["hello there"]
    assert f"assistant> {messages[1]['content']}" in output
    assert "2 messages (1 yours)" in output
    assert "  - hello there" in output
    assert re.search(rf"^\*  1  \(untitled\)  \(2 messages, .+\)  {first}$", output, re.MULTILINE)
    assert "new chat: it is created when you send its first message" in output
    assert "never sent" not in str(messages)


async def test_chat_client_resumes_a_chat_with_its_latest_messages(offline_client: httpx.AsyncClient) -> None:
    chat_id = (await offline_client.post("/chats")).json()["id"]
    await offline_client.post(f"/chats/{chat_id}/messages", json={"content": "earlier question"})
    output = await run_chat(offline_client, "later question\n", "--chat", chat_id)
    assert output.startswith(f"chat {chat_id} (2 messages)\nuser> earlier question\nassistant> ")
    messages = (await offline_client.get(f"/chats/{chat_id}/messages")).json()["data"]
    assert [m["content"] for m in messages[::2]] == ["earlier question", "later question"]


async def test_chat_client_says_when_the_server_is_not_there() -> None:
    process = await asyncio.create_subprocess_exec(
        CHATKEEP, "chat", "--url", f"http://127.0.0.1:{free_port()}",
        stdin=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, env=clean_env(),
    )  # fmt: skip
    _, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 1
    assert stderr.startswith(b"chatkeep chat: cannot reach chatkeep at http://127.0.0.1:")


async def test_chat_client_sends_its_api_key() -> None:
    async with serve(Settings(llm_provider="offline", api_keys=KEYS)) as client:
        output = await run_chat(client, "hello\n", "--api-key", BOB_KEY)
        assert output.startswith("new chat ")
        chats = (await client.get("/chats", headers=as_owner(BOB_KEY))).json()["data"]
        assert chats[0]["message_count"] == 2
