"""`chatkeep serve` as a user runs it, and settings read from their documented env names."""

import asyncio
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from chatkeep.config import Settings

CHATKEEP = Path(sys.executable).with_name("chatkeep")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHATKEEP_", "OPENAI_"))}
    return env | extra


def wait_until_serving(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
        try:
            httpx.get(url + "/healthz", timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise AssertionError("the server did not start")


@pytest.mark.parametrize("command", [[str(CHATKEEP)], [sys.executable, "-m", "chatkeep"]], ids=["script", "module"])
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
    assert "LLM offline" in stderr.decode()


def test_serve_flag_overrides_the_environment() -> None:
    port = free_port()
    env = clean_env(OPENAI_API_KEY="sk-x", OPENAI_BASE_URL="http://127.0.0.1:9/v1", CHATKEEP_LLM_MODEL="from-env")
    process = subprocess.Popen(
        [str(CHATKEEP), "serve", "--port", str(port), "--llm-model", "from-flag"], env=env, stderr=subprocess.PIPE
    )
    try:
        wait_until_serving(f"http://127.0.0.1:{port}", process)
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=10)
    assert "LLM openai (from-flag at http://127.0.0.1:9/v1)" in stderr.decode()


def test_serve_refuses_an_invalid_setting_clearly() -> None:
    result = subprocess.run(
        [str(CHATKEEP), "serve", "--context-tokens", "five"], env=clean_env(), capture_output=True, timeout=30
    )
    assert result.returncode == 2
    assert "invalid CHATKEEP_CONTEXT_TOKENS (--context-tokens)" in result.stderr.decode()


def test_every_setting_is_a_serve_flag() -> None:
    result = subprocess.run([str(CHATKEEP), "serve", "--help"], capture_output=True, timeout=30, check=True)
    text = result.stdout.decode()
    for name in Settings.model_fields:
        assert "--" + name.replace("_", "-") in text


def test_settings_come_from_their_documented_env_names(monkeypatch: pytest.MonkeyPatch) -> None:
    values = {
        "OPENAI_API_KEY": "sk-abc",
        "OPENAI_BASE_URL": "http://localhost:11434/v1",
        "CHATKEEP_LLM_MODEL": "llama3.2",
        "CHATKEEP_LLM_TIMEOUT": "12.5",
        "CHATKEEP_LLM_MAX_RETRIES": "4",
        "CHATKEEP_STORE": "memory://",
        "CHATKEEP_SYSTEM_PROMPT": "Be kind.",
        "CHATKEEP_CONTEXT_TOKENS": "4000",
        "CHATKEEP_MAX_MESSAGE_CHARS": "100",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert settings.openai_api_key is not None
    assert settings.openai_api_key.get_secret_value() == "sk-abc"
    assert settings.openai_base_url == "http://localhost:11434/v1"
    assert (settings.llm_model, settings.llm_timeout, settings.llm_max_retries) == ("llama3.2", 12.5, 4)
    assert (settings.system_prompt, settings.context_tokens, settings.max_message_chars) == ("Be kind.", 4000, 100)
    assert settings.provider == "openai"


def test_renamed_settings_still_read_their_former_env_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHATKEEP_CONTEXT_FOLDING", "false")
    monkeypatch.setenv("CHATKEEP_FOLD_AT", "0.5")
    assert (Settings().rolling_summaries, Settings().summarize_at) == (False, 0.5)
    monkeypatch.setenv("CHATKEEP_ROLLING_SUMMARIES", "true")
    monkeypatch.setenv("CHATKEEP_SUMMARIZE_AT", "0.6")
    assert (Settings().rolling_summaries, Settings().summarize_at) == (True, 0.6)


def test_provider_defaults_to_offline_without_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().provider == "offline"
    monkeypatch.setenv("OPENAI_API_KEY", "sk-abc")
    assert Settings().provider == "openai"
    monkeypatch.setenv("CHATKEEP_LLM_PROVIDER", "offline")
    assert Settings().provider == "offline"


async def run_chat(client: httpx.AsyncClient, typed: str, *args: str) -> str:
    process = await asyncio.create_subprocess_exec(
        str(CHATKEEP), "chat", "--url", str(client.base_url), *args,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=clean_env(),
    )  # fmt: skip
    stdout, _ = await asyncio.wait_for(process.communicate(typed.encode()), 30)
    assert process.returncode == 0
    return stdout.decode()


async def test_chat_client_streams_replies_and_runs_its_commands(offline_client: httpx.AsyncClient) -> None:
    output = await run_chat(offline_client, "hello there\n/summary\n/list\n/new\n/quit\nnever sent\n")
    chats = (await offline_client.get("/chats")).json()["data"]
    assert len(chats) == 2  # the first, and the one /new made
    first = chats[1]["id"]
    assert output.startswith(f"new chat {first}")
    messages = (await offline_client.get(f"/chats/{first}/messages")).json()["data"]
    assert [m["content"] for m in messages[:1]] == ["hello there"]
    assert f"assistant> {messages[1]['content']}" in output
    assert "2 messages (1 yours)" in output
    assert "  - hello there" in output
    assert f"* {first}" in output
    assert f"new chat {chats[0]['id']}" in output
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
        str(CHATKEEP), "chat", "--url", f"http://127.0.0.1:{free_port()}",
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, env=clean_env(),
    )  # fmt: skip
    stdout, _ = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 1
    assert b"cannot start a chat" in stdout


def test_serve_refuses_several_workers_on_the_memory_store() -> None:
    command = [str(CHATKEEP), "serve", "--workers", "2"]
    result = subprocess.run(command, env=clean_env(), capture_output=True, timeout=30)
    assert result.returncode == 2
    assert "--workers needs a store the processes can share" in result.stderr.decode()


def test_several_workers_on_sqlite_share_the_chats(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [str(CHATKEEP), "serve", "--port", str(port), "--workers", "2", "--store", f"sqlite:///{tmp_path}/w.db"]
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
