"""Whether the LLM endpoint answers, for /readyz: one cheap `GET {base_url}/models`, its verdict
kept a few seconds so that a load balancer polling readiness does not hammer the upstream.

Any answer proves the endpoint is there, a 404 too (many OpenAI-compatible servers and proxies
list no models), except two that say turns would fail: a 5xx (the upstream is failing) and a 401
or 403 (it refuses the key). What cannot be reached, or does not answer within the timeout, is
down. The probe runs on a small session of its own, opened for the one request, so it neither
takes a connection from the turns' pool nor counts in their circuit breaker, and no turn waits
for it. Probes that arrive together share one request.

Where the endpoint is and what the HTTP client said are logged, never put in the answer: /readyz
needs no API key.
"""

import asyncio
import logging
import time
from collections.abc import Callable
from http import HTTPStatus

import aiohttp

from chatkeep.config import without_userinfo
from chatkeep.errors import LLMUnavailableError

log = logging.getLogger(__name__)

PROBE_PATH = "/models"
KEPT_SECONDS = 5.0
REFUSED_KEY = (HTTPStatus.UNAUTHORIZED, HTTPStatus.FORBIDDEN)


class EndpointProbe:
    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        *,
        timeout: float,
        kept: float = KEPT_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._url = base_url.rstrip("/") + PROBE_PATH
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._timeout = timeout
        self._kept = kept
        self._clock = clock
        self._lock = asyncio.Lock()
        self._verdict: str | LLMUnavailableError | None = None
        self._until = 0.0

    async def check(self) -> str:
        """How the endpoint answered (`answering (HTTP 200 to GET /models)`), from the last few
        seconds' probe or a new one. Raises LLMUnavailableError saying why it is down."""
        async with self._lock:
            if self._verdict is None or self._clock() >= self._until:
                self._verdict = await self._probe()
                self._until = self._clock() + self._kept
            verdict = self._verdict
        if isinstance(verdict, LLMUnavailableError):
            raise LLMUnavailableError(verdict.detail, retry_after=self._kept)
        return verdict

    async def _probe(self) -> str | LLMUnavailableError:
        timeout = aiohttp.ClientTimeout(total=self._timeout)
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.get(self._url, headers=self._headers, allow_redirects=False) as response,
            ):
                status = response.status
        except TimeoutError:
            return self._down(f"no answer within {self._timeout:g}s", None)
        except aiohttp.ClientConnectorDNSError as error:
            return self._down("its host name does not resolve", error)
        except aiohttp.ClientConnectorError as error:
            refused = isinstance(error.os_error, ConnectionRefusedError)
            return self._down("connection refused" if refused else "cannot connect", error)
        except aiohttp.ClientError as error:
            return self._down("the connection failed", error)
        answered = f"HTTP {status} to GET {PROBE_PATH}"
        if status >= HTTPStatus.INTERNAL_SERVER_ERROR:
            return self._failing(f"the LLM endpoint answered {answered}")
        if status in REFUSED_KEY:
            return self._failing(f"the LLM endpoint refused the API key: {answered}")
        return f"answering ({answered})"

    def _down(self, why: str, error: Exception | None) -> LLMUnavailableError:
        cause = "" if error is None else f" ({error})"
        log.warning("readiness: the LLM endpoint %s cannot be reached: %s%s", self._logged_url, why, cause)
        return LLMUnavailableError(f"the LLM endpoint cannot be reached: {why}")

    def _failing(self, detail: str) -> LLMUnavailableError:
        log.warning("readiness: %s (%s)", detail, self._logged_url)
        return LLMUnavailableError(detail)

    @property
    def _logged_url(self) -> str:
        return without_userinfo(self._url)
