"""The daemon's HTTP server (Starlette on uvicorn): /metrics, /healthz, /readyz."""
from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import anyio
import msgspec
import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

if TYPE_CHECKING:
    from .node import Node

_json = msgspec.json.Encoder()


def json_response(body: Any, status: int = 200) -> Response:
    return Response(_json.encode(body), status_code=status, media_type="application/json")


def build_app(node: "Node") -> Starlette:
    async def metrics(_: Request) -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    async def healthz(_: Request) -> Response:
        problems = node.liveness_problems()
        return json_response({"status": "fail" if problems else "ok", "problems": problems},
                             503 if problems else 200)

    async def readyz(_: Request) -> Response:
        problems = await node.readiness_problems()
        return json_response({"status": "fail" if problems else "ok", "problems": problems},
                             503 if problems else 200)

    return Starlette(routes=[
        Route("/metrics", metrics),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
    ])


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # the daemon owns SIGTERM/SIGINT and stops us itself


class HttpBindError(RuntimeError):
    pass


def bind(host: str, port: int) -> socket.socket:
    """Bind before serving, so a taken port is a clear start-up error, not a log line."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise HttpBindError(f"cannot listen on CHUNKD_HTTP_ADDR={host}:{port}: {e.strerror or e}") from None
    sock.listen(128)
    sock.setblocking(False)
    return sock


async def serve(app: Starlette, sock: socket.socket) -> None:
    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off")
    server = _Server(config)
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
    try:
        await server.serve(sockets=[sock])
    finally:
        server.should_exit = True
        with anyio.CancelScope(shield=True):
            sock.close()
