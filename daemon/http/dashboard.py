"""The browser dashboard at /ui: three static files shipped in the package, served with a
Content-Security-Policy that lets the page talk to its own origin only."""
from __future__ import annotations

from importlib.resources import files

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

_ASSETS = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
           "app.css": "text/css; charset=utf-8"}
HEADERS = {
    # No inline script or style, nothing from anywhere but this daemon (it may have no internet).
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                               "img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def routes() -> list[Route]:
    folder = files("daemon.http") / "ui"
    bodies = {name: (folder / name).read_bytes() for name in _ASSETS}

    def asset(name: str):  # type: ignore[no-untyped-def]
        async def serve(_: Request) -> Response:
            return Response(bodies[name], media_type=_ASSETS[name], headers=HEADERS)
        return serve

    async def to_index(_: Request) -> Response:
        return RedirectResponse("/ui/", status_code=308)

    return [Route("/ui", to_index), Route("/ui/", asset("index.html")),
            *(Route(f"/ui/{name}", asset(name)) for name in _ASSETS if name != "index.html")]
