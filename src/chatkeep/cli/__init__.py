"""The `chatkeep` command: `chatkeep serve` runs the API server, `chatkeep chat` talks to one.

Every setting of `Settings` becomes a `serve` flag (`llm_model` -> `--llm-model`), so the
environment and the command line can never drift apart; a flag wins over its env variable.
"""

import argparse
import asyncio
import ipaddress
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import uvicorn
from fastapi import FastAPI
from pydantic import ValidationError

from chatkeep import __version__
from chatkeep.app import create_app
from chatkeep.cli import chat as terminal
from chatkeep.config import Settings
from chatkeep.errors import StoreUnavailableError
from chatkeep.logs import configure_logging
from chatkeep.metrics import DIRECTORY_VARIABLE as METRICS_DIR_VARIABLE
from chatkeep.store import open_store
from chatkeep.store.urls import redacted


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "chat":
        return asyncio.run(terminal.run(args.url, args.chat, api_key=args.api_key))
    parser.print_help()
    return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chatkeep", description="Chat sessions in front of any OpenAI-compatible LLM."
    )
    parser.add_argument("--version", action="version", version=f"chatkeep {__version__}")
    commands = parser.add_subparsers(dest="command")
    serve = commands.add_parser("serve", help="run the HTTP API server")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    serve.add_argument("--port", type=int, default=8000, help="port to bind (default: %(default)s)")
    serve.add_argument(
        "--workers", type=int, default=1, choices=range(1, 65), metavar="N", help="server processes (default: 1)"
    )
    serve.add_argument(
        "--no-access-log", dest="access_log", action="store_const", const="false", help="same as --access-log false"
    )
    serve.add_argument(
        "--allow-unauthenticated",
        action="store_true",
        help="listen beyond loopback without API keys (e.g. behind a proxy that authenticates)",
    )
    chat = commands.add_parser("chat", help="chat with a running server from the terminal")
    chat.add_argument("--url", default="http://127.0.0.1:8000", help="the server (default: %(default)s)")
    chat.add_argument("--chat", metavar="ID", help="resume this chat instead of starting one")
    chat.add_argument(
        "--api-key", default=os.environ.get("CHATKEEP_API_KEY"), help="the key to send (env CHATKEEP_API_KEY)"
    )
    settings = serve.add_argument_group("settings", "each overrides the environment variable named after it")
    for name, field in Settings.model_fields.items():
        if name == "access_log":
            serve.set_defaults(access_log=None)  # shares its dest with --no-access-log
        settings.add_argument(_flag(name), dest=name, metavar="VALUE", help=f"{field.description} (env {_env(name)})")
    return parser


def _flag(setting: str) -> str:
    return "--" + setting.replace("_", "-")


def _env(setting: str) -> str:
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
        return f"invalid {_env(name)} ({_flag(name)}): {problem}"


async def _check_store(url: str) -> None:
    """Open the store once, migrations and all, so a store that cannot serve fails here, in one line."""
    async with open_store(url):
        pass


def _serve(args: argparse.Namespace) -> int:
    overrides = {name: value for name in Settings.model_fields if (value := getattr(args, name)) is not None}
    settings = _settings(overrides)
    if isinstance(settings, str):
        return _fail(settings)
    if not settings.api_keys and not _is_loopback(args.host) and not args.allow_unauthenticated:
        return _fail(
            f"refusing to listen on {args.host} without CHATKEEP_API_KEYS: anyone who can reach it could "
            "read and write every chat. Set API keys, listen on 127.0.0.1, or pass --allow-unauthenticated."
        )
    if args.workers > 1 and settings.store.startswith("memory:"):
        return _fail(
            "--workers needs a store the processes can share (CHATKEEP_STORE=sqlite:///path.db or "
            "postgresql://...): with the memory store each process would hold its own chats."
        )
    configure_logging(settings.log_level, settings.log_format, access_log=settings.access_log)
    try:
        asyncio.run(_check_store(settings.store))
    except StoreUnavailableError as error:
        return _fail(f"invalid CHATKEEP_STORE (--store): {error.detail}")
    print(
        f"chatkeep {__version__}: store {redacted(settings.store)}, LLM {settings.provider}"
        + (f" ({settings.llm_model} at {settings.openai_base_url})" if settings.provider == "openai" else ""),
        file=sys.stderr,
    )
    options: dict[str, Any] = {
        "host": args.host,
        "port": args.port,
        "log_config": None,  # configure_logging did it, for uvicorn's loggers too
        "log_level": settings.log_level,
        "access_log": False,  # chatkeep writes its own access lines (api/observe.py)
        "timeout_graceful_shutdown": settings.shutdown_grace,
    }
    if args.workers <= 1:
        uvicorn.run(create_app(settings), **options)
        return 0
    os.environ.update({_env(name): str(value) for name, value in overrides.items()})  # each worker reads them
    with _metrics_directory():
        uvicorn.run("chatkeep.cli:worker_app", factory=True, workers=args.workers, **options)
    return 0


def worker_app() -> FastAPI:
    """The app of one worker under `--workers N`: settings and logging from the environment."""
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format, access_log=settings.access_log)
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
