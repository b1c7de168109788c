"""The `chatkeep` command: `chatkeep serve` runs the API server, `chatkeep chat` talks to one.

Every setting of `Settings` becomes a `serve` flag (`llm_model` -> `--llm-model`), so the
environment and the command line can never drift apart; a flag wins over its env variable.
"""

import argparse
import asyncio
import ipaddress
import logging
import os
import sys
from collections.abc import Sequence

import uvicorn
from pydantic import ValidationError

from chatkeep import __version__, terminal
from chatkeep.app import create_app
from chatkeep.config import Settings


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
    serve.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    serve.add_argument("--no-access-log", dest="access_log", action="store_false", help="do not log each request")
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
        settings.add_argument(
            "--" + name.replace("_", "-"), dest=name, metavar="VALUE", help=f"{field.description} (env {_env(name)})"
        )
    return parser


def _env(setting: str) -> str:
    """The environment variable of a setting."""
    return setting.upper() if setting.startswith("openai_") else f"CHATKEEP_{setting.upper()}"


def _is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _serve(args: argparse.Namespace) -> int:
    overrides = {name: value for name in Settings.model_fields if (value := getattr(args, name)) is not None}
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        for error in exc.errors():
            print(f"chatkeep: invalid setting {'.'.join(map(str, error['loc']))}: {error['msg']}", file=sys.stderr)
        return 2
    if not settings.api_keys and not _is_loopback(args.host) and not args.allow_unauthenticated:
        print(
            f"chatkeep: refusing to listen on {args.host} without CHATKEEP_API_KEYS: anyone who can reach it could "
            "read and write every chat. Set API keys, listen on 127.0.0.1, or pass --allow-unauthenticated.",
            file=sys.stderr,
        )
        return 2
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s:%(name)s: %(message)s")
    print(
        f"chatkeep {__version__}: store {settings.store}, LLM {settings.provider}"
        + (f" ({settings.llm_model} at {settings.openai_base_url})" if settings.provider == "openai" else ""),
        file=sys.stderr,
    )
    options = {"host": args.host, "port": args.port, "log_level": args.log_level, "access_log": args.access_log}
    if args.workers <= 1:
        uvicorn.run(create_app(settings), **options)
        return 0
    if settings.store.startswith("memory:"):
        print(
            "chatkeep: --workers needs a store the processes can share (CHATKEEP_STORE=sqlite:///path.db or "
            "postgresql://...): with the memory store each process would hold its own chats.",
            file=sys.stderr,
        )
        return 2
    os.environ.update({_env(name): str(value) for name, value in overrides.items()})  # each worker reads them
    uvicorn.run("chatkeep.app:create_app", factory=True, workers=args.workers, **options)
    return 0
