"""The live page (``GET /``), its static files, ``/docs`` and ``/openapi.json``.

The page is plain HTML, CSS and JavaScript from ``readside/serve/static/``; it
reads the same JSON API as any client and follows ``/v1/events``. Its chart
library (uPlot) and the API docs' viewer (Swagger UI) come from npm: ``make
setup`` installs them into ``.cache/js/node_modules`` and the service serves
them from there, under ``/static/vendor/``. Without them the page says so and
shows the hourly sales as a table; ``/docs`` shows the API as plain HTML.
A Content-Security-Policy keeps the browser from fetching anything from
another site.
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, Response

from core.settings import cache_dir
from readside.serve.answers import HTTPError, JSONAnswer, dumps
from readside.serve.config import ServeConfig
from readside.serve.openapi import docs_page, openapi_schema

__all__ = ["Pages", "vendor_root"]

STATIC_DIR = Path(__file__).resolve().parent / "static"
_STATIC_FILES = {"page.js": "text/javascript", "page.css": "text/css", "docs.js": "text/javascript"}
# Served name -> (npm package, file in it, media type).
VENDOR_FILES = {
    "uplot.js": ("uplot", "dist/uPlot.iife.min.js", "text/javascript"),
    "uplot.css": ("uplot", "dist/uPlot.min.css", "text/css"),
    "swagger-ui.js": ("swagger-ui-dist", "swagger-ui-bundle.js", "text/javascript"),
    "swagger-ui.css": ("swagger-ui-dist", "swagger-ui.css", "text/css"),
}
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)


def vendor_root(config: ServeConfig) -> Path:
    """The ``node_modules`` folder ``make setup`` fills with ``npm install --prefix .cache/js``."""
    return config.vendor_dir if config.vendor_dir is not None else cache_dir() / "js" / "node_modules"


class Pages:
    """Handlers of the page, its files and the API description."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.vendor = vendor_root(config)
        self.schema = openapi_schema(config)

    def _vendor_file(self, name: str) -> Path | None:
        package, rel, _ = VENDOR_FILES[name]
        path = self.vendor / package / rel
        return path if path.is_file() else None

    def has_chart(self) -> bool:
        return self._vendor_file("uplot.js") is not None and self._vendor_file("uplot.css") is not None

    async def index(self, request: Request) -> Response:
        page = (STATIC_DIR / "index.html").read_text()
        vendor = ""
        if self.has_chart():
            vendor = (
                '<link rel="stylesheet" href="/static/vendor/uplot.css">\n'
                '  <script src="/static/vendor/uplot.js"></script>'
            )
        page = page.replace("<!-- vendor -->", vendor)
        return HTMLResponse(page, headers={"Content-Security-Policy": CSP})

    async def static(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in _STATIC_FILES:
            raise HTTPError(404, f"no static file {name[:80]!r}")
        return FileResponse(STATIC_DIR / name, media_type=f"{_STATIC_FILES[name]}; charset=utf-8")

    async def vendor_file(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in VENDOR_FILES:
            raise HTTPError(404, f"no vendored file {name[:80]!r}")
        path = self._vendor_file(name)
        if path is None:
            package = VENDOR_FILES[name][0]
            raise HTTPError(404, f"{package} is not installed in {self.vendor.name}/; run `make setup`")
        return FileResponse(path, media_type=f"{VENDOR_FILES[name][2]}; charset=utf-8")

    async def openapi(self, request: Request) -> Response:
        return JSONAnswer(dumps(self.schema))

    async def docs(self, request: Request) -> Response:
        swagger = self._vendor_file("swagger-ui.js") is not None and self._vendor_file("swagger-ui.css") is not None
        return HTMLResponse(docs_page(self.schema, swagger), headers={"Content-Security-Policy": CSP})
