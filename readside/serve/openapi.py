"""The API's OpenAPI 3.1 description (``/openapi.json``) and its page (``/docs``).

Written out here rather than derived from the handlers, so it says what the
API promises, including every error status; ``tests/test_serve_fuzz.py`` holds
the service to it with schemathesis. ``/docs`` shows it with Swagger UI when
``make setup`` vendored ``swagger-ui-dist`` into ``.cache/js``, and as a plain
page written here otherwise; nothing is fetched from another site either way.
"""

from __future__ import annotations

import html
from typing import Any

from core.views import USER_VIEWS
from readside.serve.config import ServeConfig

__all__ = ["docs_page", "openapi_schema"]

_JSON = "application/json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {_JSON: {"schema": _ref("Error")}}}


def _ok(schema: str, description: str = "the answer, with the snapshot it came from") -> dict[str, Any]:
    return {"description": description, "content": {_JSON: {"schema": _ref(schema)}}}


_COMMON_ERRORS = {
    "401": _error("the service has a token and the request did not carry it"),
    "421": _error("the Host header does not name this service (a service without a token)"),
    "429": _error("too many requests from this client; retry after Retry-After seconds"),
    "500": _error("the warehouse is damaged, or a bug (the server log has the details)"),
}
_READ_ERRORS = {
    "400": _error("a parameter is wrong (the line says which)"),
    "410": _error("the snapshot asked for (as_of, a cursor) has expired"),
    "503": _error("min_snapshot is not visible within wait, or every query slot is busy"),
    **_COMMON_ERRORS,
}


def _query_param(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


def _read_params(config: ServeConfig) -> list[dict[str, Any]]:
    return [
        _query_param(
            "as_of",
            {"type": "string", "format": "date-time"},
            "answer from the views as they were at this time (RFC 3339), as `beamline query --as-of`",
        ),
        _query_param(
            "min_snapshot",
            {"type": "integer", "minimum": 0},
            "answer only once snapshot N (or a newer one) is visible: read-your-writes",
        ),
        _query_param(
            "wait",
            {"type": "number", "minimum": 0},
            f"seconds to wait for min_snapshot (default 0, at most {config.max_wait_s:g}); else 503",
        ),
    ]


def _schemas() -> dict[str, Any]:
    snapshot = {
        "type": "object",
        "required": ["id", "committed_at", "age_s"],
        "properties": {
            "id": {"type": "integer", "description": "snapshot id"},
            "committed_at": {"type": "string", "format": "date-time", "description": "its commit time (UTC)"},
            "age_s": {"type": "number", "description": "seconds since it committed"},
        },
    }
    column = {
        "type": "object",
        "required": ["name", "type"],
        "properties": {"name": {"type": "string"}, "type": {"type": "string"}},
    }
    inventory_row = {
        "type": "object",
        "required": ["store_id", "item_id", "on_hand", "shipped", "sold", "events", "last_event_time"],
        "properties": {
            "store_id": {"type": "string"},
            "item_id": {"type": "string"},
            "on_hand": {"type": ["integer", "null"]},
            "shipped": {"type": ["integer", "null"]},
            "sold": {"type": ["integer", "null"]},
            "events": {"type": "integer"},
            "last_event_time": {"type": ["string", "null"]},
        },
    }
    rows = {"type": "array", "items": {"type": "object"}}
    view = {
        "type": "object",
        "required": ["name", "columns", "key", "rows", "files", "source_offsets", "lag_s"],
        "properties": {
            "name": {"type": "string"},
            "columns": {"type": "array", "items": _ref("Column")},
            "key": {"type": "array", "items": {"type": "string"}},
            "rows": {"type": "integer"},
            "files": {"type": "integer"},
            "source_offsets": {
                "type": ["object", "null"],
                "description": "per topic, per partition: the next offset the view's streaming resume point "
                "covers (null if no streaming run wrote the view)",
                "additionalProperties": {"type": "object", "additionalProperties": {"type": "integer"}},
            },
            "lag_s": {"type": "null", "description": "not served: `beamline status` asks the broker for the lag"},
        },
    }
    return {
        "Snapshot": snapshot,
        "Column": column,
        "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
        "Health": {
            "type": "object",
            "required": ["snapshot", "status", "warehouse_error", "index", "uptime_s"],
            "properties": {
                "snapshot": _ref("Snapshot"),
                "status": {"enum": ["ok", "degraded"]},
                "warehouse_error": {"type": ["string", "null"]},
                "index": {"type": "object"},
                "uptime_s": {"type": "number"},
            },
        },
        "Views": {
            "type": "object",
            "required": ["snapshot", "views"],
            "properties": {"snapshot": _ref("Snapshot"), "views": {"type": "array", "items": view}},
        },
        "InventoryRow": inventory_row,
        "Lookup": {
            "type": "object",
            "required": ["snapshot", "row"],
            "properties": {"snapshot": _ref("Snapshot"), "row": _ref("InventoryRow")},
        },
        "Page": {
            "type": "object",
            "required": ["snapshot", "view", "columns", "next", "next_url", "rows"],
            "properties": {
                "snapshot": _ref("Snapshot"),
                "view": {"type": "string"},
                "columns": {"type": "array", "items": _ref("Column")},
                "next": {"type": ["string", "null"], "description": "after= for the next page; null on the last"},
                "next_url": {"type": ["string", "null"]},
                "rows": rows,
            },
        },
        "QueryRequest": {
            "type": "object",
            "required": ["sql"],
            "additionalProperties": False,
            "properties": {
                "sql": {"type": "string", "description": "one SELECT over the views"},
                "params": {
                    "type": "array",
                    "items": {"type": ["string", "number", "boolean", "null"]},
                    "description": "bound to $1, $2, ...",
                },
            },
        },
        "QueryAnswer": {
            "type": "object",
            "required": ["snapshot", "columns", "rows", "rows_left_out", "truncated"],
            "properties": {
                "snapshot": _ref("Snapshot"),
                "columns": {"type": "array", "items": _ref("Column")},
                "rows": rows,
                "rows_left_out": {"type": "integer"},
                "truncated": {"type": "boolean"},
            },
        },
    }


def openapi_schema(config: ServeConfig) -> dict[str, Any]:
    """The OpenAPI document of the service as configured (page sizes, caps)."""
    reads = _read_params(config)
    columns = sorted({c for spec in USER_VIEWS.values() for c in spec.column_names})
    page_params = [
        {
            "name": "view",
            "in": "path",
            "required": True,
            "schema": {"type": "string", "pattern": f"^({'|'.join(USER_VIEWS)})(@[a-z0-9][a-z0-9_-]{{0,31}})?$"},
            "description": f"the view ({', '.join(USER_VIEWS)}), or one of its versions by name (inventory@v2)",
        },
        _query_param(
            "limit",
            {"type": "integer", "minimum": 1, "maximum": config.max_rows},
            f"rows per page (default {config.page_size}, at most {config.max_rows})",
        ),
        _query_param("after", {"type": "string"}, "the `next` token of the page before (keyset pagination)"),
        *reads,
        *(
            _query_param(c, {"type": "string"}, "keep rows whose column equals this value (repeat: any of them)")
            for c in columns
        ),
    ]
    no_params: list[dict[str, Any]] = []
    security: list[dict[str, list[str]]] = [{"bearer": []}] if config.token else []
    paths = {
        "/v1/health": {
            "get": {
                "summary": "the service is up: the snapshot it answers from, the index",
                "parameters": no_params,
                "responses": {"200": _ok("Health"), "400": _error("a parameter was given"), **_COMMON_ERRORS},
            }
        },
        "/v1/views": {
            "get": {
                "summary": "each view's columns, key, rows and files",
                "parameters": reads,
                "responses": {"200": _ok("Views"), **_READ_ERRORS},
            }
        },
        "/v1/views/{view}": {
            "get": {
                "summary": "a page of a view's rows in key order, filtered by column values",
                "description": "Every page of one walk reads the snapshot of its first page, so rows that commit "
                "meanwhile neither repeat nor go missing; `next` is null on the last page. Unknown columns are 400.",
                "parameters": page_params,
                "responses": {"200": _ok("Page"), "404": _error("no such view"), **_READ_ERRORS},
            }
        },
        "/v1/inventory/{store_id}/{item_id}": {
            "get": {
                "summary": "the inventory row of one store and item, from memory",
                "description": "Percent-encode a `/` inside an id as `%2F`.",
                "parameters": [
                    {"name": "store_id", "in": "path", "required": True, "schema": {"type": "string"}},
                    {"name": "item_id", "in": "path", "required": True, "schema": {"type": "string"}},
                    *reads,
                ],
                "responses": {"200": _ok("Lookup"), "404": _error("no row for that store and item"), **_READ_ERRORS},
            }
        },
        "/v1/query": {
            "post": {
                "summary": "one read-only SELECT in the sandbox of `beamline query`",
                "description": f"At most {config.max_rows} rows come back (`rows_left_out` counts the rest); the "
                f"query is stopped after {config.limits.timeout or 0:g} s and may use {config.limits.memory_limit}.",
                "parameters": reads,
                "requestBody": {"required": True, "content": {_JSON: {"schema": _ref("QueryRequest")}}},
                "responses": {
                    "200": _ok("QueryAnswer"),
                    "403": _error("refused: the SQL would write or reach outside the views"),
                    "408": _error("the query ran past its time limit and was stopped"),
                    "413": _error("the body is too large"),
                    "415": _error("the body was not sent as Content-Type: application/json"),
                    **_READ_ERRORS,
                },
            }
        },
        "/v1/events": {
            "get": {
                "summary": "server-sent events: one `snapshot` event now and at every new snapshot",
                "parameters": no_params,
                "responses": {
                    "200": {"description": "an endless event stream", "content": {"text/event-stream": {}}},
                    "400": _error("a parameter was given"),
                    "503": _error("too many streams are open"),
                    **_COMMON_ERRORS,
                },
            }
        },
    }
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "Beamline read service",
            "version": "1",
            "description": "Read-only JSON over the warehouse's views. Every answer names the snapshot it came "
            'from; every error is {"error": "one line"}. The live page is at /.',
        },
        "paths": paths,
        "components": {"schemas": _schemas()},
    }
    if security:
        document["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        document["security"] = security
    return document


def docs_page(schema: dict[str, Any], swagger: bool) -> str:
    """``/docs``: Swagger UI over ``/openapi.json`` if vendored, else the endpoints written out as HTML."""
    if swagger:
        return (
            '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Beamline API</title>'
            '<link rel="icon" href="data:,"><link rel="stylesheet" href="/static/vendor/swagger-ui.css"></head>'
            '<body><div id="swagger-ui"></div>'
            '<script src="/static/vendor/swagger-ui.js"></script><script src="/static/docs.js"></script></body></html>'
        )
    parts = [
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Beamline API</title>',
        '<link rel="icon" href="data:,"><link rel="stylesheet" href="/static/page.css"></head><body class="docs">',
        f"<h1>{html.escape(schema['info']['title'])}</h1><p>{html.escape(schema['info']['description'])}</p>",
        '<p>The machine-readable description is <a href="/openapi.json">/openapi.json</a>. '
        "(Swagger UI is not installed: <code>make setup</code> vendors it.)</p>",
    ]
    for path, methods in schema["paths"].items():
        for method, op in methods.items():
            parts.append(
                f"<h2><code>{method.upper()} {html.escape(path)}</code></h2><p>{html.escape(op['summary'])}</p>"
            )
            if op.get("description"):
                parts.append(f"<p>{html.escape(op['description'])}</p>")
            params = op.get("parameters", [])
            if params:
                parts.append("<table><tr><th>parameter</th><th>in</th><th>what</th></tr>")
                for p in params:
                    parts.append(
                        f"<tr><td><code>{html.escape(p['name'])}</code></td><td>{p['in']}</td>"
                        f"<td>{html.escape(p.get('description', ''))}</td></tr>"
                    )
                parts.append("</table>")
            statuses = ", ".join(f"{code} {html.escape(r['description'])}" for code, r in op["responses"].items())
            parts.append(f"<p><small>{statuses}</small></p>")
    parts.append("</body></html>")
    return "".join(parts)
