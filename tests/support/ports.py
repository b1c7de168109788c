"""Local ports for tests that need one no server holds."""

import socket


def free_port() -> int:
    """A port on 127.0.0.1 that was free a moment ago: nothing listens on it until someone binds it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port
