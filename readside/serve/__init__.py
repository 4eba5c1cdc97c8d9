"""``beamline serve``: the read service over HTTP, a JSON API and a live page.

:func:`create_app` makes the ASGI app (tests drive it in-process);
:func:`run` serves it on uvicorn. The modules, from the inside out:
``index`` (the inventory view in memory), ``snapshots`` (following new
snapshots), ``readers`` (sandboxed DuckDB readers pinned to snapshots),
``answers`` (the JSON envelope, errors, the cursor), ``routes`` (the API),
``page`` and ``openapi`` (the live page, ``/docs``), ``security`` (token, rate
limit, Host check), ``app`` (the layers together) and ``server`` (uvicorn).
"""

from readside.serve.app import ServeApp, create_app
from readside.serve.config import DEFAULT_HOST, DEFAULT_PORT, ServeConfig, check_bind, is_loopback
from readside.serve.server import run

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "ServeApp", "ServeConfig", "check_bind", "create_app", "is_loopback", "run"]
