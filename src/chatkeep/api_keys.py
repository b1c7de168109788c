"""API keys: who is calling. `CHATKEEP_API_KEYS` maps owners to keys (`alice=key1,bob=key2`).

Keys are kept only as SHA-256 digests and looked up by digest, so the comparison neither keeps
the secrets in memory nor leaks them through timing.
"""

import hashlib

from chatkeep.errors import UnauthorizedError

MIN_KEY_CHARS = 16


def parse_api_keys(text: str) -> dict[str, str]:
    """`owner=key,...` as {key: owner}. Raises ValueError on a malformed, short or repeated key."""
    keys: dict[str, str] = {}
    for pair in filter(None, (part.strip() for part in text.split(","))):
        owner, sep, key = (part.strip() for part in pair.partition("="))
        if not sep or not owner or not key:
            raise ValueError("expected owner=key pairs separated by commas")
        if len(key) < MIN_KEY_CHARS:
            raise ValueError(f"the key of {owner!r} is shorter than {MIN_KEY_CHARS} characters")
        if key in keys:
            raise ValueError(f"{owner!r} and {keys[key]!r} share a key")
        keys[key] = owner
    if not keys:
        raise ValueError("no owner=key pairs given")
    return keys


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class ApiKeys:
    def __init__(self, text: str) -> None:
        self._owners = {_digest(key): owner for key, owner in parse_api_keys(text).items()}

    def owner(self, presented: str | None) -> str:
        """The owner of the presented key. Raises UnauthorizedError for a missing or unknown key."""
        if not presented:
            raise UnauthorizedError("send an API key as `Authorization: Bearer <key>`")
        owner = self._owners.get(_digest(presented))
        if owner is None:
            raise UnauthorizedError("the API key is not valid")
        return owner
