"""The `chatkeep` command: `chatkeep serve` runs the API server (serve.py), `chatkeep chat` talks to one (chat.py).

Every setting of `Settings` becomes a `serve` flag (`llm_model` -> `--llm-model`), so the
environment and the command line can never drift apart; a flag wins over its env variable. Its
help shows the kind of its value (`SECONDS`, `{text,json}`), its default and its env variable.
"""

import argparse
import asyncio
import os
from collections.abc import Sequence
from typing import get_args

from pydantic import SecretStr
from pydantic.fields import FieldInfo

from chatkeep import __version__
from chatkeep.cli import chat
from chatkeep.cli.serve import env_of, flag_of, serve
from chatkeep.config import Settings, metavar

ALIASES = {"openai_base_url": ("--llm-url",)}  # more flags of a setting, besides the one named after it


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "serve":
        return serve(args)
    if args.command == "chat":
        return asyncio.run(chat.run(args.url, args.chat, api_key=args.api_key))
    parser.print_help()
    return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chatkeep", description="Chat sessions in front of any OpenAI-compatible LLM."
    )
    parser.add_argument("--version", action="version", version=f"chatkeep {__version__}")
    commands = parser.add_subparsers(dest="command")
    serving = commands.add_parser("serve", help="run the HTTP API server")
    serving.add_argument(
        "--no-access-log", dest="access_log", action="store_const", const="false", help="same as --access-log false"
    )
    serving.add_argument(
        "--allow-unauthenticated",
        action="store_true",
        help="listen beyond loopback without API keys (e.g. behind a proxy that authenticates)",
    )
    chatting = commands.add_parser("chat", help="chat with a running server from the terminal")
    chatting.add_argument("--url", default="http://127.0.0.1:8000", help="the server (default: %(default)s)")
    chatting.add_argument("--chat", metavar="ID", help="resume this chat instead of starting one")
    chatting.add_argument(
        "--api-key", default=os.environ.get("CHATKEEP_API_KEY"), help="the key to send (env CHATKEEP_API_KEY)"
    )
    settings = serving.add_argument_group("settings", "each overrides the environment variable named after it")
    for name, field in Settings.model_fields.items():
        if name == "access_log":
            serving.set_defaults(access_log=None)  # shares its dest with --no-access-log
        settings.add_argument(
            flag_of(name), *ALIASES.get(name, ()), dest=name, metavar=metavar(Settings, name), help=_help(name, field)
        )
    return parser


def _help(name: str, field: FieldInfo) -> str:
    """A setting's description, its default (a secret's is not shown) and its environment variable."""
    secret = SecretStr in (field.annotation, *get_args(field.annotation))
    default = "secret" if secret else f"default: {_shown(field.default)}"
    return f"{field.description} ({default}; env {env_of(name)})".replace("%", "%%")


def _shown(default: object) -> str:
    """A default as it is written in the environment: `true`, `1800`, `""`, or `unset`."""
    if default is None:
        return "unset"
    if isinstance(default, bool):
        return str(default).lower()
    if isinstance(default, float) and default.is_integer():
        return str(int(default))
    if isinstance(default, str) and (default == "" or " " in default):
        return f'"{default}"'
    return str(default)
