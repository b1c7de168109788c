"""The HTTP layer's own limits, which hold without a reverse proxy in front: a request's line and
headers larger than `max_header_bytes` are refused (431), a client gets `header_timeout` to send
them, and a request body may pause for at most `body_timeout` between two of its chunks; past
either deadline the connection is closed.

Why: uvicorn with httptools, as chatkeep runs it, has no limit on a request's head and no read
timeout. Anyone who can connect, with no key, could hold the server's memory (httptools keeps a
header that never ends whole: four connections sending 100 MB of headers grew the server by 400 MB)
and its connections (a request sent a byte at a time stays open for ever: a thousand of them made
/healthz fail).

How: `HttpLimitsProtocol` is uvicorn's `HttpToolsProtocol` (which keeps httptools' speed), with
a count and a deadline. A head is counted in the bytes of the chunks that came since the request
before it ended; only when that count (with the chunk that request ended in) passes the limit is
a complete head measured as parsed (its target, names and values), since those chunks may hold a
body too. Over the limit, the client gets a 431, after the answers to the requests it pipelined
before, and the connection is closed. The deadline is one float per connection that the parser
callbacks move on; one timer per connection goes off at the earliest deadline it was given and,
when the deadline has moved on meanwhile, sets itself for the new one, so a chunk costs no timer
call. No deadline runs while the server has a response to write (a streamed reply may last
minutes), nor while it holds the client up: reading paused (a pipelined request waiting its turn,
a body the app has not read yet) or a `100 Continue` not sent yet. An idle kept-alive connection
is uvicorn's `timeout_keep_alive`; the header deadline, from the end of the last response, closes
it too when shorter.

The settings reach the protocol as class attributes: `limited_to(settings)` makes a class with
them, and under `--workers N` each worker sets its own class's from the settings it reads.
"""

import asyncio
from typing import ClassVar

from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from chatkeep.config import Settings

TOO_LARGE = 431
# A timer may go off up to the loop's clock resolution before its time; one this close to its
# deadline counts as due rather than set again.
EARLY = 0.005
HEADER_LINE = 4  # ": " and CRLF around a header's name and value


def _default(name: str) -> float:
    default = Settings.model_fields[name].default
    assert isinstance(default, int | float)
    return default


class HttpLimitsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits above; `limited_to` sets them."""

    max_header_bytes: ClassVar[int] = int(_default("max_header_bytes"))
    header_timeout: ClassVar[float] = _default("header_timeout")
    body_timeout: ClassVar[float] = _default("body_timeout")

    # What the parser reads: a request's head, or its body. `_head_bytes` counts the bytes of the
    # chunks that came since the last request ended; the chunk it ended in (`_uncounted` bytes)
    # may hold the start of the next head too, so the two bound the head's size from above.
    _reading_head = True
    _head_bytes = 0
    _chunk = 0  # the size of the chunk being read
    _uncounted = 0
    _refused = False
    # The one deadline, on the loop's clock (None: none runs), and the timer set for it or earlier.
    _deadline: float | None = None
    _timer: asyncio.TimerHandle | None = None
    _timer_at = 0.0
    flow: "_Flow"

    @classmethod
    def limit_to(cls, settings: Settings) -> None:
        cls.max_header_bytes = settings.max_header_bytes
        cls.header_timeout = settings.header_timeout
        cls.body_timeout = settings.body_timeout

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.flow = _Flow(transport, self)
        self._expect(self.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_clock()
        super().connection_lost(exc)
        self.flow.protocol = None  # no reference cycle left to the collector (uvicorn drops its parser's too)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        self._chunk = len(data)
        if self._reading_head:
            self._head_bytes += self._chunk
        super().data_received(data)
        if self._refused or (self._reading_head and self._head_bytes > self.max_header_bytes):
            self._refuse()

    def on_headers_complete(self) -> None:
        limit = self.max_header_bytes
        if self._refused or (self._head_bytes + self._uncounted > limit and self._parsed_head() > limit):
            self._refused = True  # data_received answers once the parser is done with the chunk
            return
        self._reading_head = False
        super().on_headers_complete()
        self._expect(self.body_timeout)

    def on_body(self, body: bytes) -> None:
        if self._refused:
            return
        super().on_body(body)
        self._expect(self.body_timeout)

    def on_message_complete(self) -> None:
        if self._refused:
            return
        super().on_message_complete()
        self._reading_head = True
        self._head_bytes = 0
        self._uncounted = self._chunk
        self._start_head_clock()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._refused:
            if self.cycle.response_complete:
                self._refuse()
        elif self._reading_head and not self.transport.is_closing():
            self._start_head_clock()

    def handle_websocket_upgrade(self) -> None:
        self._stop_clock()  # the connection is the WebSocket protocol's from here on
        super().handle_websocket_upgrade()

    def _parsed_head(self) -> int:
        """The size of the head just parsed, for when the bytes counted may hold more than the head."""
        return len(self.url) + sum(len(name) + len(value) + HEADER_LINE for name, value in self.headers)

    def _reading_resumed(self) -> None:
        """The server no longer holds the client up: the clock of what it must send starts again."""
        if self._refused:
            return
        if self._reading_head:
            self._start_head_clock()
        else:
            self._expect(self.body_timeout)

    def _start_head_clock(self) -> None:
        """The next head's deadline, once every request read so far is answered: while a response
        is being written, the client owes nothing."""
        if self.cycle is None or self.cycle.response_complete:
            self._expect(self.header_timeout)
        else:
            self._deadline = None

    def _expect(self, seconds: float) -> None:
        """The client has `seconds` from now to send what it owes (its head, or its body's next chunk)."""
        if self.flow.read_paused:  # held up by the server: `_reading_resumed` starts the clock
            self._deadline = None
            return
        deadline = self._deadline = self.loop.time() + seconds
        if self._timer is None or self._timer_at > deadline:
            self._set_timer(deadline)

    def _set_timer(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = self.loop.call_at(when, self._on_timer)

    def _stop_clock(self) -> None:
        self._deadline = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timer(self) -> None:
        self._timer = None
        deadline = self._deadline
        if deadline is None or self.flow.read_paused or self.transport.is_closing():
            return
        now = self.loop.time()
        if not self._reading_head and self.cycle is not None and self.cycle.waiting_for_100_continue:
            deadline = self._deadline = now + self.body_timeout  # the app has not asked for the body yet
        if deadline > now + EARLY:  # moved on since the timer was set
            self._set_timer(deadline)
            return
        self._deadline = None
        owed, limit = ("head", self.header_timeout) if self._reading_head else ("body", self.body_timeout)
        self.logger.debug("closed a connection whose request %s took longer than %g s", owed, limit)
        self.transport.close()

    def _refuse(self) -> None:
        """431 for a head too large, once the requests before it are answered, and the connection
        closed: what came after the head cannot be read."""
        self._refused = True
        self._stop_clock()
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            self.flow.pause_reading()  # on_response_complete comes back once the last one is answered
            return
        message = f"Request line and headers larger than {self.max_header_bytes} bytes".encode()
        content = [STATUS_LINE[TOO_LARGE]]
        for name, value in self.server_state.default_headers:
            content += [name, b": ", value, b"\r\n"]
        content += [
            b"content-type: text/plain; charset=utf-8\r\n",
            b"content-length: %d\r\n" % len(message),
            b"connection: close\r\n\r\n",
            message,
        ]
        self.transport.write(b"".join(content))
        self.transport.close()


class _Flow(FlowControl):
    """uvicorn's flow control, which tells the protocol when the server lets reading go on."""

    def __init__(self, transport: asyncio.Transport, protocol: HttpLimitsProtocol) -> None:
        super().__init__(transport)
        self.protocol: HttpLimitsProtocol | None = protocol

    def resume_reading(self) -> None:
        if self.read_paused:
            super().resume_reading()
            if self.protocol is not None:
                self.protocol._reading_resumed()


def limited_to(settings: Settings) -> type[HttpLimitsProtocol]:
    """A protocol class with the limits of `settings`, for uvicorn's `http=`."""

    class Limited(HttpLimitsProtocol):
        pass

    Limited.limit_to(settings)
    return Limited
