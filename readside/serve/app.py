"""The ASGI app of ``beamline serve``: routes, error answers, and the layers around them.

From the outside in: :class:`~readside.serve.security.Guard` (one-line 500s,
Host check, rate limit, body size, security headers), CORS when
``--cors-origin`` names origins (off otherwise), :class:`TokenCheck`, the point
lookup's fast path (:class:`LookupFastPath`), then a Starlette app whose every
error, Starlette's own 404 and 405 included, is ``{"error": "one line"}``. The
app's lifespan starts the snapshot watcher (if ``beamline serve`` has not
already, to fail before binding) and stops it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import anyio.to_thread
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from core.errors import BeamlineError
from readside.serve.answers import SNAPSHOT_HEADER, HTTPError, error_answer, status_of
from readside.serve.config import ServeConfig
from readside.serve.page import Pages
from readside.serve.routes import Routes, Service, lookup_ids
from readside.serve.security import Guard, TokenCheck

__all__ = ["ServeApp", "create_app"]


class ServeApp:
    """The whole service as one ASGI app; ``service`` is its state (the watcher, the readers)."""

    def __init__(self, app: ASGIApp, service: Service) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


_LOOKUP = "/v1/inventory/"


class LookupFastPath:
    """``GET /v1/inventory/{store_id}/{item_id}`` with no parameters, answered without the router.

    The point lookup is the service's hot path: this answers it from the
    published index in a few µs of Python, about half of what routing through
    Starlette costs; its answers are byte for byte those of the route
    (``Routes.lookup_now`` makes both). Anything else goes on to the app.
    """

    def __init__(self, app: ASGIApp, routes: Routes) -> None:
        self.app = app
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET" and not scope["query_string"]:
            path: str = scope["path"]
            if path.startswith(_LOOKUP):
                ids = lookup_ids(scope.get("raw_path") or path.encode("utf-8"))
                if ids is not None:
                    store, item = ids
                    status, body, sid = self.routes.lookup_now(store, item)
                    headers = [
                        (b"content-type", b"application/json"),
                        (b"content-length", b"%d" % len(body)),
                        (b"beamline-snapshot", b"%d" % sid),
                    ]
                    await send({"type": "http.response.start", "status": status, "headers": headers})
                    await send({"type": "http.response.body", "body": body})
                    return
        await self.app(scope, receive, send)


def create_app(config: ServeConfig, service: Service | None = None) -> ServeApp:
    """The service's ASGI app for ``config``; pass a started ``service`` to reuse its index."""
    service = service or Service(config)
    routes = Routes(service)
    pages = Pages(config)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        service.signal.bind(asyncio.get_running_loop())
        service.slots = asyncio.Semaphore(config.query_slots)
        service.read_slots = asyncio.Semaphore(config.query_slots)
        await anyio.to_thread.run_sync(service.start)
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(service.stop)

    def http_error(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPError)
        return error_answer(exc.status, service.public(exc.message), exc.headers)

    def beamline_error(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, BeamlineError)
        return error_answer(status_of(exc), service.public(str(exc)))

    def starlette_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 404:
            message = f"no route {request.url.path[:80]!r}; the API is described at /docs"
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path[:80]!r}; see /docs"
        else:
            message = str(exc.detail)
        return error_answer(exc.status_code, message, {k: v for k, v in (exc.headers or {}).items()})

    inner = Starlette(
        routes=[
            Route("/", pages.index, methods=["GET"]),
            Route("/docs", pages.docs, methods=["GET"]),
            Route("/openapi.json", pages.openapi, methods=["GET"]),
            Route("/static/vendor/{name}", pages.vendor_file, methods=["GET"]),
            Route("/static/{name}", pages.static, methods=["GET"]),
            Route("/v1/health", routes.health, methods=["GET"]),
            Route("/v1/views", routes.views, methods=["GET"]),
            Route("/v1/views/{view}", routes.view_rows, methods=["GET"]),
            # Store and item are split from the raw path (an id may hold an encoded "/"): see lookup_ids.
            Route("/v1/inventory/{ids:path}", routes.inventory, methods=["GET"]),
            Route("/v1/query", routes.query, methods=["POST"]),
            Route("/v1/events", routes.events, methods=["GET"]),
        ],
        exception_handlers={HTTPError: http_error, BeamlineError: beamline_error, HTTPException: starlette_error},
        lifespan=lifespan,
    )
    layered: ASGIApp = TokenCheck(LookupFastPath(inner, routes), config.token)
    if config.cors_origins:
        layered = CORSMiddleware(
            layered,
            allow_origins=list(config.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
            expose_headers=[SNAPSHOT_HEADER],
            max_age=600,
        )
    return ServeApp(Guard(layered, config), service)
