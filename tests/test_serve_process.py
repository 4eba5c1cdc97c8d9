"""``beamline serve`` as a user runs it: a real process on a real socket, and a real pipeline's warehouse.

Slow tier: each test starts ``beamline serve`` (a Python process that imports
Starlette, uvicorn and DuckDB) or runs the inventory pipeline on the session
broker.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from producers.retail import RetailConfig
from readside.query import run_query
from readside.serve import ServeConfig, create_app
from tests.cli_helpers import PROJECT_ROOT, assert_one_line_error, run_cli
from tests.e2e_helpers import RetailLog
from tests.test_serve import TOKEN, sample_warehouse, stock
from warehouse.writer import Warehouse

pytestmark = pytest.mark.slow


class Served:
    """A running ``beamline serve`` process and the address it printed."""

    def __init__(self, process: subprocess.Popen[str], url: str) -> None:
        self.process = process
        self.url = url

    def get(self, path: str, token: str | None = None, data: bytes | None = None) -> tuple[int, dict[str, Any], Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if data is not None:
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(self.url + path, data=data, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, {k.lower(): v for k, v in response.headers.items()}, json.loads(response.read())
        except urllib.error.HTTPError as err:
            return err.code, {k.lower(): v for k, v in err.headers.items()}, json.loads(err.read())

    def stop(self) -> tuple[int, str, str]:
        self.process.send_signal(signal.SIGTERM)
        out, err = self.process.communicate(timeout=30)
        return self.process.returncode, out, err


def start_serve(*args: str, env: dict[str, str] | None = None) -> Served:
    """``beamline serve ARGS --port 0``, once it printed its address (it prints it once it listens)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "cli", "serve", "--port", "0", *args],
        cwd=PROJECT_ROOT,
        env=env if env is not None else dict(os.environ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    first = process.stdout.readline()
    if not first.startswith("beamline serve: http://"):
        process.kill()
        _, err = process.communicate(timeout=30)
        pytest.fail(f"beamline serve did not start: {first!r} {err[-2000:]}")
    return Served(process, first.split()[2].rstrip("/"))


@pytest.fixture
def warehouse(tmp_path: Path) -> Path:
    return sample_warehouse(tmp_path / "wh")


@pytest.fixture
def served(warehouse: Path) -> Iterator[Served]:
    serve = start_serve("--warehouse", str(warehouse))
    yield serve
    if serve.process.poll() is None:
        serve.process.kill()
        serve.process.communicate(timeout=30)


def test_beamline_serve_answers_follows_commits_and_stops_cleanly(served: Served, warehouse: Path) -> None:
    assert served.url.startswith("http://127.0.0.1:")
    status, headers, body = served.get("/v1/health")
    assert status == 200 and body["snapshot"]["id"] == 4 and headers["beamline-snapshot"] == "4"
    status, _, body = served.get("/v1/inventory/store-1/item-03")
    assert status == 200 and body["row"]["on_hand"] == 4
    target = Warehouse(warehouse).commit("inventory", [stock("store-1", "item-03", 40, 9, 77)]).snapshot_id
    status, _, body = served.get(f"/v1/inventory/store-1/item-03?min_snapshot={target}&wait=5")
    assert status == 200 and body["snapshot"]["id"] == target and body["row"]["on_hand"] == 31
    sql = json.dumps({"sql": "SELECT count(*) AS n FROM inventory"}).encode()
    status, _, body = served.get("/v1/query", data=sql)
    assert status == 200 and body["rows"] == [{"n": 28}]
    with urllib.request.urlopen(served.url + "/", timeout=30) as page:
        assert "Content-Security-Policy" in page.headers and b"/static/page.js" in page.read()
    events = urllib.request.urlopen(served.url + "/v1/events", timeout=30)
    assert events.readline() == f"id: {target}\n".encode()
    stopping = time.monotonic()
    code, out, err = served.stop()  # an open event stream does not hold the stop up
    assert code == 0, err
    assert time.monotonic() - stopping < 2
    assert out.strip().endswith("beamline serve: stopped") and "Traceback" not in err and "ERROR" not in err
    events.close()


def test_binding_beyond_loopback_needs_a_token_and_then_every_route_asks_for_it(warehouse: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "BEAMLINE_TOKEN"}
    refused = run_cli("serve", "--warehouse", str(warehouse), "--host", "0.0.0.0", "--port", "0", env=env)
    assert_one_line_error(refused, "binding 0.0.0.0", "BEAMLINE_TOKEN")
    served = start_serve("--warehouse", str(warehouse), "--host", "0.0.0.0", env={**env, "BEAMLINE_TOKEN": TOKEN})
    try:
        port = served.url.rsplit(":", 1)[1]
        served.url = f"http://127.0.0.1:{port}"
        routes = [
            "/",
            "/docs",
            "/openapi.json",
            "/static/page.js",
            "/v1/health",
            "/v1/views",
            "/v1/views/inventory",
            "/v1/inventory/store-1/item-01",
            "/v1/events",
            "/nowhere",
        ]
        for path in [*routes, "/v1/query"]:
            data = b'{"sql": "SELECT 1"}' if path == "/v1/query" else None
            for token in (None, "wrong-but-long-enough-0123"):
                status, headers, body = served.get(path, token=token, data=data)
                assert status == 401 and "needs its token" in body["error"], path
                assert headers["www-authenticate"].endswith('realm="beamline"'), path
        for path in ("/v1/health", "/v1/views", "/v1/inventory/store-1/item-01"):
            assert served.get(path, token=TOKEN)[0] == 200
        basic = base64.b64encode(f"me:{TOKEN}".encode()).decode()
        request = urllib.request.Request(served.url + "/", headers={"Authorization": f"Basic {basic}"})
        with urllib.request.urlopen(request, timeout=30) as page:
            assert page.status == 200
        assert served.get("/v1/query", token=TOKEN, data=b'{"sql": "SELECT 1 AS x"}')[2]["rows"] == [{"x": 1}]
    finally:
        code, _, err = served.stop()
    assert code == 0 and "Traceback" not in err


def test_a_taken_port_a_missing_warehouse_and_a_bad_option_are_one_line(warehouse: Path, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("serve", "--warehouse", str(warehouse), "--port", str(port))
        assert_one_line_error(result, f"port {port} on 127.0.0.1 is taken")
    assert_one_line_error(run_cli("serve", "--warehouse", str(tmp_path / "nothing")), "does not exist")
    assert_one_line_error(run_cli("serve", "--warehouse", str(warehouse), "--port", "70000"), "--port")
    assert_one_line_error(run_cli("serve", "--warehouse", str(warehouse), "--token", "short"), "at least 16")


def test_the_service_answers_a_real_pipeline_runs_views(
    bootstrap_servers: str, make_topic: Callable[..., str], tmp_path: Path
) -> None:
    log = RetailLog(bootstrap_servers, make_topic, tmp_path / "warehouse")
    log.produce(RetailConfig(events=4000, stores=4, items=30, seed=5, invalid_rate=0.02, duplicate_rate=0.02))
    result = run_cli(*log.run_args("batch"), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    truth = log.truth()
    with TestClient(create_app(ServeConfig(log.warehouse, rate_limit=0)), base_url="http://127.0.0.1") as c:
        for view in ("inventory", "sales_by_window", "dead_letters"):
            rows: list[dict[str, Any]] = []
            url: str | None = f"/v1/views/{view}?limit=97"
            while url:
                page = c.get(url).json()
                rows, url = rows + page["rows"], page["next_url"]
            key = (
                ", ".join(f'"{k}"' for k in c.get("/v1/views").json()["views"][0]["key"])
                if view == "inventory"
                else None
            )
            sql = f"SELECT * FROM {view} ORDER BY " + (
                key
                or (
                    "window_start, window_end, store_id, item_id"
                    if view == "sales_by_window"
                    else 'source_topic, partition, "offset"'
                )
            )
            want = json.loads(run_cli("query", sql, "--warehouse", str(log.warehouse), "--format", "json").stdout)
            assert rows == want, view
        assert len(truth.dead_letters) > 10
        assert c.get("/v1/views").json()["views"][3]["rows"] == len(truth.dead_letters)
        for (store, item), expected in list(truth.inventory.items())[:40]:
            row = c.get(f"/v1/inventory/{store}/{item}").json()["row"]
            assert (row["on_hand"], row["shipped"], row["sold"], row["events"]) == (
                expected["on_hand"],
                expected["shipped"],
                expected["sold"],
                expected["events"],
            )
        assert (
            c.get("/v1/health").json()["index"]["rows"]
            == len(truth.inventory)
            == run_query("SELECT count(*) AS n FROM inventory", log.warehouse).to_pylist()[0]["n"]
        )
