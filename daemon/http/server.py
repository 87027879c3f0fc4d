"""The daemon's HTTP server (Starlette on uvicorn): /metrics, /healthz, /readyz, the API."""
from __future__ import annotations

import contextlib
import logging
import socket
import time
from collections.abc import Iterator

import anyio
import asyncpg
import structlog
import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Send
from starlette.types import Scope as AsgiScope

from daemon.http import dashboard
from daemon.http.api import routes
from daemon.http.auth import Scope
from daemon.http.common import ApiError, _json, error_response, ok
from daemon.http.guard import Guard
from daemon.http.models import Health
from daemon.http.openapi import document
from daemon.http.ports import Served
from metrics import HTTP_SECONDS, READY

log = structlog.get_logger("chunkd.http")


def build_app(node: Served, tokens: dict[str, Scope] | None = None) -> Starlette:
    tokens = tokens or {}
    openapi = _json.encode(document(secured=bool(tokens)))

    async def metrics(_: Request) -> Response:
        # Readiness as a metric: the sidecar's readiness probe deliberately does not look at
        # the database (deploy/README.md), so alerts see it here instead.
        READY.set(0 if await node.readiness_problems() else 1)
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    async def healthz(_: Request) -> Response:
        problems = node.liveness_problems()
        return ok(Health("fail" if problems else "ok", problems), 503 if problems else 200)

    async def readyz(_: Request) -> Response:
        problems = await node.readiness_problems()
        return ok(Health("fail" if problems else "ok", problems), 503 if problems else 200)

    async def openapi_json(_: Request) -> Response:
        return Response(openapi, media_type="application/json")

    async def on_api_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return error_response(exc)

    async def on_http_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(ApiError(exc.status_code, code, str(exc.detail), headers=exc.headers))

    async def on_crash(_: Request, exc: Exception) -> Response:
        if isinstance(exc, (asyncpg.DataError, asyncpg.ProgramLimitExceededError)):
            # The input broke a database rule no limit of ours caught: the client's error.
            return error_response(ApiError(422, "invalid_input", f"the database refused the input: {exc}"))
        log.error("API handler failed", error=repr(exc), exc_info=exc)
        return error_response(ApiError(500, "internal", "internal error; see the daemon log"))

    app = Starlette(
        routes=[
            Route("/metrics", metrics),
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/api/v1/openapi.json", openapi_json),
            *routes(node, tokens),
            *dashboard.routes(),
        ],
        exception_handlers={ApiError: on_api_error, HTTPException: on_http_error, Exception: on_crash},
        middleware=[Middleware(Guard, own_hosts=[*node.http.allowed_hosts,
                                                 *([node.http.addr[0]] if node.http.addr else [])],
                               tokens=tokens)],
    )
    app.add_middleware(RequestMetrics)
    return app


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class RequestMetrics:
    """Pure ASGI middleware: observes chunkd_http_request_duration_seconds per route
    *template* (e.g. /api/v1/instances/{id:int}, never the id itself), method and status, so
    the label set stays bounded whatever clients send. /metrics itself is included."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: AsgiScope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # a handler that dies before answering is counted as a server error

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")  # set by Starlette's router on the shared scope dict
            template = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "")
            HTTP_SECONDS.labels(template, method if method in _METHODS else "other",
                                str(status)).observe(time.perf_counter() - started)


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # the daemon owns SIGTERM/SIGINT and stops us itself


class HttpBindError(RuntimeError):
    pass


def bind(host: str, port: int) -> socket.socket:
    """Bind before serving, so a taken port is a clear start-up error, not a log line."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not the default 0: asyncio sets TCP_NODELAY on an accepted connection only
    # when its socket says proto == IPPROTO_TCP (base_events._set_nodelay), and accepted sockets
    # inherit the listener's proto. Without it, uvicorn's separate header and body writes met
    # Nagle + the client's delayed ACK: ~44 ms per keep-alive request after the first.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # inherited by accepted sockets on Linux
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise HttpBindError(f"cannot listen on CHUNKD_HTTP_ADDR={host}:{port}: {e.strerror or e}") from None
    sock.listen(1024)  # a burst of clients queues in the kernel, not refused at connect
    sock.setblocking(False)
    return sock


async def serve(app: Starlette, sock: socket.socket) -> None:
    # http="auto": httptools (locked) parses requests in C; h11 only where it is not installed.
    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off", http="auto")
    server = _Server(config)
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
    try:
        await server.serve(sockets=[sock])
    finally:
        server.should_exit = True
        with anyio.CancelScope(shield=True):
            sock.close()
