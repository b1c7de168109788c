"""Settings read from their documented env names, and refused at start when they make no sense."""

import re

import pytest
from pydantic import ValidationError

from chatkeep.config import Settings
from chatkeep.llm.offline import HOW_TO_CONNECT
from chatkeep.rate_limit import parse_rate_limit

ALICE_KEY = "alice-key-0123456789"


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


def test_provider_defaults_to_offline_without_a_key_or_a_url(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().provider == "offline"
    monkeypatch.setenv("OPENAI_BASE_URL", "https://api.openai.com/v1/")  # the default, spelt with a slash
    assert Settings().provider == "offline"
    monkeypatch.setenv("OPENAI_API_KEY", "sk-abc")
    assert Settings().provider == "openai"
    monkeypatch.setenv("CHATKEEP_LLM_PROVIDER", "offline")
    assert Settings().provider == "offline"


def test_a_base_url_of_its_own_selects_the_openai_compatible_provider_without_a_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:11434/v1")  # Ollama, which needs no key
    assert (Settings().provider, Settings().openai_api_key) == ("openai", None)
    assert Settings(openai_base_url="http://127.0.0.1:8000/v1").provider == "openai"  # as --openai-base-url
    monkeypatch.setenv("CHATKEEP_LLM_PROVIDER", "offline")
    assert Settings().provider == "offline"


def test_openai_itself_still_needs_a_key() -> None:
    with pytest.raises(ValidationError, match="OPENAI_API_KEY is needed"):
        Settings(llm_provider="openai")


def test_the_offline_reply_tells_settings_that_connect_a_model(monkeypatch: pytest.MonkeyPatch) -> None:
    local = re.search(r"OPENAI_BASE_URL=(\S+)", HOW_TO_CONNECT)
    assert local is not None, HOW_TO_CONNECT
    monkeypatch.setenv("OPENAI_BASE_URL", local.group(1).rstrip(".,;)"))
    assert Settings().provider == "openai"
    monkeypatch.delenv("OPENAI_BASE_URL")
    assert "OPENAI_API_KEY" in HOW_TO_CONNECT
    monkeypatch.setenv("OPENAI_API_KEY", "sk-abc")
    assert Settings().provider == "openai"


@pytest.mark.parametrize(
    "keys", ["alice", "alice=", "=key-0123456789abcdef", "alice=short", f"a={ALICE_KEY},b={ALICE_KEY}", ","]
)
def test_malformed_api_keys_are_refused_at_start(keys: str) -> None:
    with pytest.raises(ValidationError):
        Settings(api_keys=keys)


def test_an_unreadable_rate_limit_is_refused_at_start() -> None:
    with pytest.raises(ValidationError, match="120/minute"):
        Settings(rate_limit="lots")


@pytest.mark.parametrize(
    ("rate", "why"),
    [
        ("0/minute", "at least 1 turn"),
        ("0 per 2 hours", "at least 1 turn"),
        ("-1/minute", "120/minute"),
        ("10/0 minutes", "a window of at least 1 minute"),
        ("1/minute;5/hour", "one rate"),
        ("3000000000/second", "at most 2147483647"),
        ("10/fortnight", "120/minute"),
    ],
)
def test_an_impossible_rate_limit_is_refused_at_start(rate: str, why: str) -> None:
    with pytest.raises(ValidationError, match=why):
        Settings(rate_limit=rate)


@pytest.mark.parametrize(
    ("rate", "turns", "seconds"),
    [("120/minute", 120, 60), ("1 per second", 1, 1), ("1000 per 2 hours", 1000, 7200), ("5/Hour", 5, 3600)],
)
def test_a_rate_limit_reads_as_turns_per_window(rate: str, turns: int, seconds: int) -> None:
    item = parse_rate_limit(Settings(rate_limit=rate).rate_limit or "")
    assert (item.amount, item.get_expiry()) == (turns, seconds)


@pytest.mark.parametrize(
    ("name", "value", "read"),
    [
        ("CHATKEEP_LOG_LEVEL", "INFO", "info"),
        ("CHATKEEP_LOG_LEVEL", " Warning ", "warning"),
        ("CHATKEEP_LOG_FORMAT", "JSON", "json"),
        ("CHATKEEP_LLM_PROVIDER", "Offline", "offline"),
    ],
)
def test_choices_are_read_whatever_their_case(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, read: str
) -> None:
    monkeypatch.setenv(name, value)
    setting = name.removeprefix("CHATKEEP_").lower()
    assert getattr(Settings(), setting) == read
    assert getattr(Settings(**{setting: value}), setting) == read  # type: ignore[arg-type]  # as a flag gives it


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "0.0.0.0", "::", "localhost", "chat-1.internal.example"])
def test_a_host_is_an_ip_address_or_a_host_name(host: str) -> None:
    assert Settings(host=host).host == host


@pytest.mark.parametrize("host", ["", "local host", "http://127.0.0.1", "-x", "a" * 254])
def test_a_host_that_cannot_be_listened_on_is_refused(host: str) -> None:
    with pytest.raises(ValidationError, match="an IP address or a host name"):
        Settings(host=host)
