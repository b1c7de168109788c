"""What a store URL (`CHATKEEP_STORE`) means, read without opening anything.

Settings check the URL with `check_store_url` when they are read, so a mistyped store is a
one-line configuration error at start, not a failure on the first request; the stores read
their options from here too, so the check and the use cannot disagree.
"""

from urllib.parse import parse_qs, parse_qsl, urlencode, urlsplit, urlunsplit

SQLITE_PREFIX = "sqlite:///"
SYNCHRONOUS_MODES = ("normal", "full")
POSTGRES_SCHEMES = ("postgresql", "postgres")
POOL_SIZE = 20
EXPECTED = "expected memory://, sqlite:///path.db or postgresql://user@host/db"


def check_store_url(url: str) -> None:
    """Raise ValueError, saying what is wrong, unless `url` names a store chatkeep can open."""
    scheme = url.partition("://")[0]
    if scheme == "memory":
        if url != "memory://":
            raise ValueError(f"the memory store takes no path or options: memory://, not {url!r}")
    elif scheme == "sqlite":
        sqlite_location(url)
    elif scheme in POSTGRES_SCHEMES:
        pool_options(url)
    else:
        raise ValueError(f"unsupported store URL {redacted(url)!r}: {EXPECTED}")


def sqlite_location(url: str) -> tuple[str, str]:
    """The file path and synchronous mode of `sqlite:///relative.db` or `sqlite:////abs.db?synchronous=full`."""
    path, _, query = url.removeprefix(SQLITE_PREFIX).partition("?")
    options = parse_qs(query)
    synchronous = options.pop("synchronous", ["normal"])[-1].lower()
    if not url.startswith(SQLITE_PREFIX) or not path or options:
        raise ValueError(f"expected sqlite:///relative.db or sqlite:////absolute.db, got {url!r}")
    if synchronous not in SYNCHRONOUS_MODES:
        raise ValueError(f"synchronous must be one of {SYNCHRONOUS_MODES}, not {synchronous!r}")
    return path, synchronous


def pool_options(url: str) -> tuple[str, int]:
    """The DSN for asyncpg and the pool size, taken out of the URL's `pool_size` parameter.

    Other query parameters go to asyncpg, which sends unknown ones as server settings
    (e.g. `?search_path=tenant`).
    """
    parts = urlsplit(url)
    if not parts.hostname and "host=" not in parts.query:
        raise ValueError(f"expected postgresql://user@host/db, got {redacted(url)!r}")
    query = parse_qsl(parts.query, keep_blank_values=True)
    sizes = [value for name, value in query if name == "pool_size"]
    pool_size = POOL_SIZE
    if sizes:
        if not (sizes[-1].isascii() and sizes[-1].isdigit()) or int(sizes[-1]) < 1:
            raise ValueError(f"pool_size must be a whole number of at least 1, not {sizes[-1]!r}")
        pool_size = int(sizes[-1])
    rest = urlencode([(name, value) for name, value in query if name != "pool_size"])
    return urlunsplit(parts._replace(query=rest)), pool_size


def redacted(url: str) -> str:
    """`url` with any password replaced, fit for logs and error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
