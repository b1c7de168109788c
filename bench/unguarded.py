"""`python -m bench.unguarded serve ...`: `chatkeep serve` on uvicorn's own httptools protocol,
without chatkeep's HTTP limits (chatkeep.server.http_limits), so the bench can measure what they cost.
"""

import importlib
import sys
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from chatkeep import cli
from chatkeep.config import Settings


def _unlimited(settings: Settings) -> type[HttpToolsProtocol]:
    return HttpToolsProtocol


if __name__ == "__main__":
    # `chatkeep.cli.serve` the module: the package's `serve` is the function it exports.
    serve_module: Any = importlib.import_module("chatkeep.cli.serve")
    serve_module.limited_to = _unlimited
    sys.exit(cli.main(sys.argv[1:]))
