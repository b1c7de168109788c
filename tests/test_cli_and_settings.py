"""`chatkeep serve` as a user runs it, and settings read from their documented env names."""

import os
import socket
import subprocess
import sys
import time
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
    assert "invalid setting context_tokens" in result.stderr.decode()


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


def test_provider_defaults_to_offline_without_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().provider == "offline"
    monkeypatch.setenv("OPENAI_API_KEY", "sk-abc")
    assert Settings().provider == "openai"
    monkeypatch.setenv("CHATKEEP_LLM_PROVIDER", "offline")
    assert Settings().provider == "offline"
