"""Every knob of chatkeep, with its environment name and default.

`Settings` is the single source: the CLI derives one `chatkeep serve` flag per field from it,
and `create_app` receives an instance, so nothing reads the environment anywhere else.
"""

import ipaddress
import re
from dataclasses import dataclass
from functools import cached_property
from typing import Annotated, Any, Literal, get_args, get_origin
from urllib.parse import urlsplit, urlunsplit

from pydantic import AliasChoices, Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from chatkeep.api_keys import parse_api_keys
from chatkeep.rate_limit import parse_rate_limit
from chatkeep.store.urls import check_store_url

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant. Answer clearly and concisely."
OPENAI_BASE_URL = "https://api.openai.com/v1"
MAX_HOST_NAME = 253
_HOST_NAME = re.compile(r"[a-z0-9]([a-z0-9.-]*[a-z0-9])?", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Shown:
    """The kind of a setting's value as `chatkeep serve --help` names it (SECONDS, URL...), where
    its type alone does not say it; see `metavar`."""

    metavar: str


Seconds = Annotated[float, Shown("SECONDS")]
Fraction = Annotated[float, Shown("FRACTION")]
Tokens = Annotated[int, Shown("TOKENS")]
Url = Annotated[str, Shown("URL")]


def _env(name: str, *former: str) -> AliasChoices:
    """A setting read from `name` (or, for a renamed one, the names it had before)."""
    return AliasChoices(*(spelling for env in (name, *former) for spelling in (env, env.lower())))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CHATKEEP_", extra="ignore", populate_by_name=True)

    host: Annotated[str, Shown("ADDRESS")] = Field(
        default="127.0.0.1", description="address `serve` listens on: an IP address or a host name"
    )
    port: Annotated[int, Shown("PORT")] = Field(
        default=8000, ge=0, le=65535, description="port `serve` listens on (0: any free one)"
    )
    workers: int = Field(
        default=1, ge=1, le=64, description="server processes `serve` runs (more than 1 needs a SQL store)"
    )
    openai_api_key: Annotated[SecretStr | None, Shown("KEY")] = Field(
        default=None,
        validation_alias=_env("OPENAI_API_KEY"),
        description="API key of the LLM endpoint: OpenAI needs one, local servers mostly none; selects `openai`",
    )
    openai_base_url: Url = Field(
        default=OPENAI_BASE_URL,
        validation_alias=_env("OPENAI_BASE_URL"),
        description="any OpenAI-compatible endpoint (Ollama, vLLM, LM Studio, LiteLLM, OpenRouter...); "
        "any but OpenAI's own selects `openai`, with or without a key",
    )
    llm_provider: Literal["openai", "offline"] | None = Field(
        default=None,
        description="`openai` for any OpenAI-compatible endpoint, `offline` for placeholder replies; when unset, "
        "`openai` if OPENAI_API_KEY is set or OPENAI_BASE_URL names another server than OpenAI's, else `offline`",
    )
    llm_model: Annotated[str, Shown("MODEL")] = Field(
        default="gpt-4o-mini", min_length=1, description="model name sent upstream"
    )
    llm_models: Annotated[str, Shown("MODEL,...")] = Field(
        default="", description="more models clients of /v1 may ask for by name, comma-separated (others get llm_model)"
    )
    llm_timeout: Seconds = Field(
        default=1800.0,
        gt=0,
        description="seconds one LLM call may last in all, retries included: a cap far above any real reply",
    )
    llm_connect_timeout: Seconds = Field(default=10.0, gt=0, description="seconds to connect to the LLM endpoint")
    llm_first_token_timeout: Seconds = Field(
        default=300.0,
        gt=0,
        description="seconds the LLM may take before its reply begins (reasoning models think for minutes)",
    )
    llm_idle_timeout: Seconds = Field(
        default=60.0, gt=0, description="seconds a streamed reply may go silent between chunks before it is cut"
    )
    llm_max_retries: int = Field(default=2, ge=0, le=10, description="retries on connect errors, 429, 5xx")
    llm_max_connections: int = Field(default=1024, ge=1, description="pooled connections to the LLM endpoint")
    store: Url = Field(default="memory://", description="memory://, sqlite:///path.db or postgresql://user@host/db")
    turn_lease: Seconds = Field(
        default=15.0,
        ge=1,
        description="seconds a server's hold on a chat's turn lasts without its heartbeat (SQL stores)",
    )
    redis_url: Annotated[str | None, Shown("URL")] = Field(
        default=None, description="redis://host:port/db to count rate limits in, shared by every deployment"
    )
    api_keys: Annotated[SecretStr | None, Shown("OWNER=KEY,...")] = Field(
        default=None, description="owner=key,owner2=key2; when unset, no auth"
    )
    rate_limit: Annotated[str | None, Shown("TURNS/PERIOD")] = Field(
        default=None, description="turns per owner (message posts, /v1 responses, items appended), e.g. 120/minute"
    )
    system_prompt: Annotated[str, Shown("TEXT")] = Field(
        default=DEFAULT_SYSTEM_PROMPT,
        description="system prompt of native turns on chats that set none (/v1 adds none)",
    )
    context_tokens: Tokens = Field(default=8000, ge=256, description="token budget of the context sent upstream")
    rolling_summaries: bool = Field(
        default=True,
        validation_alias=_env("CHATKEEP_ROLLING_SUMMARIES", "CHATKEEP_CONTEXT_FOLDING"),
        description="summarize a long chat's older messages into a rolling summary sent in their place",
    )
    summarize_at: Fraction = Field(
        default=0.75,
        gt=0,
        lt=1,
        validation_alias=_env("CHATKEEP_SUMMARIZE_AT", "CHATKEEP_FOLD_AT"),
        description="share of the context budget the messages after the rolling summary may take before it is updated",
    )
    summary_tokens: Annotated[int | None, Shown("TOKENS")] = Field(
        default=None, ge=16, description="tokens of a chat's rolling summary; when unset, a quarter of context_tokens"
    )
    max_message_chars: Annotated[int, Shown("CHARS")] = Field(
        default=32000, ge=1, description="longer message content is refused (422)"
    )
    max_attachment_bytes: Annotated[int, Shown("BYTES")] = Field(
        default=20 * 1024 * 1024,
        ge=1,
        description="bytes one image or file sent inline (a data: URL) may decode to; a larger one is refused (413)",
    )
    max_request_attachment_bytes: Annotated[int, Shown("BYTES")] = Field(
        default=50 * 1024 * 1024,
        ge=1,
        description="bytes the images and files sent inline in one request may decode to in all (413 beyond)",
    )
    blob_dir: Annotated[str | None, Shown("DIR")] = Field(
        default=None,
        description="a directory to keep attachments' bytes in, one file per SHA-256 (unset: in the store itself)",
    )
    max_import_bytes: Annotated[int, Shown("BYTES")] = Field(
        default=64 * 1024 * 1024,
        ge=1,
        description="bytes one POST /import body may have (a JSONL export, images inline); a larger one is a 413",
    )
    max_chats: int = Field(default=10_000, ge=1, description="chats one owner may keep; creating one more is a 429")
    max_chat_messages: int = Field(
        default=100_000, ge=2, description="messages and items one chat may hold; adding more is a 429"
    )
    max_waiting_turns: int = Field(default=8, ge=0, description="turns that may queue on one chat before 429")
    max_turns_in_flight: int = Field(default=2048, ge=1, description="turns running or waiting per process before 503")
    owner_share: Fraction = Field(
        default=0.5,
        gt=0,
        le=1,
        description="share of max_turns_in_flight one owner may hold when API keys name several owners (1: no share)",
    )
    llm_breaker_failures: int = Field(
        default=5,
        ge=1,
        description="LLM calls failing in a row (unreachable, 5xx, a reply that never begins) that open the breaker",
    )
    llm_breaker_cooldown: Seconds = Field(
        default=10.0, gt=0, description="seconds the open breaker answers 503 before letting a probe call through"
    )
    readyz_probe_llm: bool = Field(
        default=True,
        description="/readyz asks the LLM endpoint (GET /models, at most every 5 s) and is 503 when it cannot be "
        "reached, answers 5xx or refuses the key; false: /readyz checks the store alone",
    )
    metrics: bool = Field(default=True, description="serve Prometheus metrics at /metrics")
    metrics_dir: Annotated[str | None, Shown("DIR")] = Field(
        default=None, description="where the workers of `serve --workers N` share their metrics (serve sets it)"
    )
    metrics_key: Annotated[SecretStr | None, Shown("KEY")] = Field(
        default=None,
        min_length=16,
        description="a key /metrics then asks for as a Bearer token; when unset, /metrics is open",
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field(
        default="info", description="the least severe level logged"
    )
    log_format: Literal["text", "json"] = Field(default="text", description="text lines, or one JSON object per line")
    access_log: bool = Field(default=True, description="log one line per request")
    max_header_bytes: Annotated[int, Shown("BYTES")] = Field(
        default=16_384,
        ge=1024,
        le=1_048_576,
        description="a request line and headers larger than this are refused (431)",
    )
    header_timeout: Seconds = Field(
        default=10.0, gt=0, description="seconds a client may take to send a request's line and headers"
    )
    body_timeout: Seconds = Field(
        default=30.0, gt=0, description="seconds a request's body may pause between two of its chunks"
    )
    allowed_hosts: Annotated[str | None, Shown("HOST,...")] = Field(
        default=None,
        description="Host header values served, comma-separated, `*` for any (unset: loopback names without API keys,"
        " any with them)",
    )
    shutdown_grace: Seconds = Field(
        default=30.0, ge=0, description="seconds requests and streams in flight get to finish on SIGTERM"
    )

    @field_validator("*", mode="before")
    @classmethod
    def _choices_in_any_case(cls, value: object, info: ValidationInfo) -> object:
        """`INFO` is `info`: a setting with a fixed set of lowercase choices reads any case."""
        if isinstance(value, str) and info.field_name is not None and choices(cls, info.field_name):
            return value.strip().lower()
        return value

    @field_validator("host")
    @classmethod
    def _bindable_host(cls, value: str) -> str:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            if len(value) > MAX_HOST_NAME or not _HOST_NAME.fullmatch(value):
                raise ValueError(f"expected an IP address or a host name such as 127.0.0.1, not {value!r}") from None
        return value

    @field_validator("rate_limit")
    @classmethod
    def _readable_rate_limit(cls, value: str | None) -> str | None:
        if value is not None:
            parse_rate_limit(value)  # its ValueError says what is wrong
        return value

    @field_validator("store")
    @classmethod
    def _readable_store(cls, value: str) -> str:
        check_store_url(value)
        return value

    @field_validator("openai_base_url")
    @classmethod
    def _http_base_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")) or not value.partition("://")[2].strip("/"):
            raise ValueError(f"expected an http:// or https:// URL such as {OPENAI_BASE_URL}, not {value!r}")
        return value

    @field_validator("api_keys")
    @classmethod
    def _readable_api_keys(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            parse_api_keys(value.get_secret_value())
        return value

    @model_validator(mode="after")
    def _choose_provider(self) -> "Settings":
        if self.llm_provider is None:
            self.llm_provider = "openai" if self.openai_api_key or self.own_base_url else "offline"
        if self.llm_provider == "openai" and not self.openai_api_key and not self.own_base_url:
            raise ValueError(
                f"OPENAI_API_KEY is needed for {OPENAI_BASE_URL}; for a server that needs no key, set OPENAI_BASE_URL"
            )
        if self.openai_api_key and urlsplit(self.openai_base_url).username is not None:
            raise ValueError(
                "OPENAI_BASE_URL carries credentials and OPENAI_API_KEY is set: an upstream takes one or the other;"
                f" keep the key and give the URL without it ({without_userinfo(self.openai_base_url)})"
            )
        return self

    @property
    def own_base_url(self) -> bool:
        """Whether OPENAI_BASE_URL names a server other than OpenAI's own (Ollama, vLLM...)."""
        return self.openai_base_url.rstrip("/") != OPENAI_BASE_URL

    @property
    def rolling_summary_tokens(self) -> int:
        return self.summary_tokens if self.summary_tokens is not None else self.context_tokens // 4

    @cached_property
    def models(self) -> tuple[str, ...]:
        """The models clients may ask for by name, the default first."""
        extra = (name.strip() for name in self.llm_models.split(","))
        return tuple(dict.fromkeys([self.llm_model, *(name for name in extra if name)]))

    @property
    def provider(self) -> Literal["openai", "offline"]:
        return self.llm_provider or "offline"


def metavar(settings: type[Settings], name: str) -> str:
    """The kind of a setting's value: its choices (`{text,json}`), what `Shown` names, or its type's (N)."""
    values = choices(settings, name)
    if values:
        return "{" + ",".join(values) + "}"
    field = settings.model_fields[name]
    for shown in field.metadata:
        if isinstance(shown, Shown):
            return shown.metavar
    kinds = [kind for kind in get_args(field.annotation) or (field.annotation,) if kind is not type(None)]
    return {bool: "{true,false}", int: "N", float: "NUMBER", SecretStr: "SECRET"}.get(kinds[0], "TEXT")


def choices(settings: type[Settings], name: str) -> tuple[str, ...]:
    """The values a setting may take when they are a fixed set (`log_level`), else ()."""
    return _literal_values(settings.model_fields[name].annotation)


def _literal_values(annotation: Any) -> tuple[str, ...]:
    if get_origin(annotation) is Literal:
        return tuple(str(value) for value in get_args(annotation))
    return tuple(value for argument in get_args(annotation) for value in _literal_values(argument))


def without_userinfo(url: str) -> str:
    """`url` without the user and password it may carry (either can be a key), fit for logs."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]))
