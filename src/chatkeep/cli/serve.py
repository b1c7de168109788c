"""`chatkeep serve`: the settings checked and the store opened once before uvicorn starts, so that
what cannot serve fails in one line with exit status 2, not in a traceback from a worker.
"""

import argparse
import asyncio
import ipaddress
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn
from fastapi import FastAPI
from pydantic import ValidationError

from chatkeep import __version__
from chatkeep.config import Settings, without_userinfo
from chatkeep.errors import StoreUnavailableError
from chatkeep.logs import configure_logging
from chatkeep.metrics import DIRECTORY_VARIABLE as METRICS_DIR_VARIABLE
from chatkeep.server.app import create_app
from chatkeep.server.http_limits import HttpLimitsProtocol, limited_to
from chatkeep.store import open_store
from chatkeep.store.urls import redacted


def flag_of(setting: str) -> str:
    return "--" + setting.replace("_", "-")


def env_of(setting: str) -> str:
    """The environment variable of a setting."""
    return setting.upper() if setting.startswith("openai_") else f"CHATKEEP_{setting.upper()}"


def _is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _fail(message: str) -> int:
    """A configuration error: one line on stderr, no traceback, exit status 2."""
    print(f"chatkeep: {message}", file=sys.stderr)
    return 2


def _settings(overrides: dict[str, str]) -> Settings | str:
    """The settings, or a line naming the first one that is wrong and what is wrong with it."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        problem = str(error["msg"]).removeprefix("Value error, ")
        if not error["loc"]:
            return f"invalid settings: {problem}"
        name = str(error["loc"][0])
        return f"invalid {env_of(name)} ({flag_of(name)}): {problem}"


def startup_line(settings: Settings) -> str:
    """What the server serves from and talks to, in one line, with no secret in it."""
    store = f"chatkeep {__version__}: store {redacted(settings.store)}"
    if settings.provider == "offline":
        return (
            f"{store}, LLM offline: placeholder replies, no model connected; to connect one, set OPENAI_BASE_URL "
            "to an OpenAI-compatible server (Ollama, vLLM, LM Studio, LiteLLM) or OPENAI_API_KEY for OpenAI"
        )
    return f"{store}, LLM {settings.provider} ({settings.llm_model} at {without_userinfo(settings.openai_base_url)})"


async def _check_store(url: str) -> None:
    """Open the store once, migrations and all, so a store that cannot serve fails here, in one line."""
    async with open_store(url):
        pass


def serve(args: argparse.Namespace) -> int:
    """`chatkeep serve`: check the settings and the store, then run uvicorn (with `--workers N`, N processes)."""
    overrides = {name: value for name in Settings.model_fields if (value := getattr(args, name)) is not None}
    settings = _settings(overrides)
    if isinstance(settings, str):
        return _fail(settings)
    if not settings.api_keys and not _is_loopback(settings.host) and not args.allow_unauthenticated:
        return _fail(
            f"refusing to listen on {settings.host} without CHATKEEP_API_KEYS: anyone who can reach it could "
            "read and write every chat. Set API keys, listen on 127.0.0.1, or pass --allow-unauthenticated."
        )
    if not settings.api_keys and not _is_loopback(settings.host) and settings.allowed_hosts is None:
        return _fail(
            f"listening on {settings.host} without API keys, chatkeep answers only requests for 127.0.0.1, "
            "localhost and [::1] (any other Host could be a web page's, DNS rebinding). Set CHATKEEP_ALLOWED_HOSTS "
            "(--allowed-hosts) to the names clients reach it by, e.g. chat.lan,192.168.1.20, or * for any."
        )
    if settings.workers > 1 and settings.store.startswith("memory:"):
        return _fail(
            "--workers needs a store the processes can share (CHATKEEP_STORE=sqlite:///path.db or "
            "postgresql://...): with the memory store each process would hold its own chats."
        )
    configure_logging(settings.log_level, settings.log_format, access_log=settings.access_log)
    try:
        asyncio.run(_check_store(settings.store))
    except StoreUnavailableError as error:
        return _fail(f"invalid CHATKEEP_STORE (--store): {error.detail}")
    print(startup_line(settings), file=sys.stderr)
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_config": None,  # configure_logging did it, for uvicorn's loggers too
        "log_level": settings.log_level,
        "access_log": False,  # chatkeep writes its own access lines (api/observe.py)
        "timeout_graceful_shutdown": settings.shutdown_grace,
    }
    if settings.workers <= 1:
        uvicorn.run(create_app(settings), http=limited_to(settings), **options)
        return 0
    os.environ.update({env_of(name): str(value) for name, value in overrides.items()})  # each worker reads them
    with _metrics_directory():
        uvicorn.run(
            "chatkeep.cli.serve:worker_app",
            factory=True,
            workers=settings.workers,
            http="chatkeep.cli.serve:WorkerHttp",
            **options,
        )
    return 0


class WorkerHttp(HttpLimitsProtocol):
    """The HTTP protocol of a worker under `--workers N`, with the limits `worker_app` sets."""


def worker_app() -> FastAPI:
    """The app of one worker under `--workers N`: settings and logging from the environment, and
    the HTTP limits, set before uvicorn serves the worker's first connection."""
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format, access_log=settings.access_log)
    WorkerHttp.limit_to(settings)
    return create_app(settings)


@contextmanager
def _metrics_directory() -> Iterator[None]:
    """A fresh directory where the workers' metrics meet, unless CHATKEEP_METRICS_DIR names one already."""
    if os.environ.get(METRICS_DIR_VARIABLE):
        yield
        return
    with tempfile.TemporaryDirectory(prefix="chatkeep-metrics-") as directory:
        os.environ[METRICS_DIR_VARIABLE] = directory
        try:
            yield
        finally:
            del os.environ[METRICS_DIR_VARIABLE]
