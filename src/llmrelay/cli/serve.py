"""``llmrelay serve``."""

from __future__ import annotations

import argparse
import gc

from llmrelay import logs
from llmrelay.cli.common import add_common
from llmrelay.corking import corked
from llmrelay.settings import Settings


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = sub.add_parser("serve", help="run the HTTP server")
    add_common(serve)
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default 8080)")
    serve.add_argument(
        "--relaxed-json",
        action="store_true",
        default=None,
        help="accept JSON5 bodies (trailing commas, comments)",
    )
    serve.add_argument("--log-level", help="debug, info, warning, error")
    serve.add_argument(
        "--redis-url", help="Redis URL: rate limits and reservations shared by several processes"
    )


def run(settings: Settings) -> int:
    import uvicorn
    from uvicorn.config import HTTP_PROTOCOLS
    from uvicorn.importer import import_from_string

    from llmrelay.app import build_app

    logs.configure(settings.log_level)
    # A request allocates a few thousand short-lived objects; collecting the young generation
    # every 700 allocations (the default) cost about 10% of the relay's throughput.
    gc.set_threshold(20_000, 20, 20)
    config = uvicorn.Config(
        build_app(settings),
        host=settings.host,
        port=settings.port,
        loop=settings.event_loop,
        http=corked(import_from_string(HTTP_PROTOCOLS[settings.http_parser])),
        log_level=settings.log_level.lower(),
        access_log=False,  # llmrelay writes its own JSON access line (api/observe.py)
        timeout_graceful_shutdown=5,
        log_config=None,  # uvicorn's loggers propagate to the JSON handler
    )
    uvicorn.Server(config).run()
    return 0
