"""``beamline serve`` in-process: every endpoint of the read service against a real warehouse.

The app is driven with Starlette's TestClient (its lifespan starts the real
snapshot watcher) over warehouses written by :class:`warehouse.writer.Warehouse`;
answers are compared with what ``beamline query`` gives for the same snapshot.
The tests that start ``beamline serve`` as a process, or run a pipeline on the
broker, are in ``tests/test_serve_process.py``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import io
import json
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from cli.read import add_commands as add_read_commands
from core.errors import ConfigError
from readside.query import run_query
from readside.serve import ServeConfig, check_bind, create_app
from readside.serve.answers import encode_cursor
from readside.serve.security import Guard
from warehouse.reader import QueryLimits
from warehouse.writer import Warehouse

UTC = dt.timezone.utc
WHEN = dt.datetime(2026, 11, 26, 10, 0, tzinfo=UTC)
HOUR = dt.timedelta(hours=1)
TOKEN = "s3cret-token-for-tests-0123456789"
BASE = "http://127.0.0.1"


def stock(store: str, item: str, shipped: int, sold: int, events: int, when: dt.datetime = WHEN) -> dict[str, Any]:
    return {
        "store_id": store,
        "item_id": item,
        "on_hand": shipped - sold,
        "shipped": shipped,
        "sold": sold,
        "events": events,
        "last_event_time": when,
    }


def sample_warehouse(root: Path) -> Path:
    """A small warehouse with every view: two stores, hourly sales, dead letters, word counts."""
    wh = Warehouse(root)
    wh.commit(
        "inventory",
        [stock("store-1", f"item-{i:02d}", 10 + i, 3 * i % 17, 2 + i) for i in range(20)]
        + [stock("store-2", f"item-{i:02d}", 5, 5 + (i == 3), 2) for i in range(8)],
    )
    wh.commit(
        "sales_by_window",
        [
            {
                "window_start": WHEN + h * HOUR,
                "window_end": WHEN + (h + 1) * HOUR,
                "store_id": s,
                "item_id": "item-01",
                "units": 3 + h,
                "sales": 1 + h,
            }
            for h in range(6)
            for s in ("store-1", "store-2")
        ],
    )
    wh.commit(
        "dead_letters",
        [
            {
                "source_topic": "sales",
                "partition": p,
                "offset": o,
                "error": f"not JSON (record {o})",
                "payload": b"{broken" + bytes([o]),
            }
            for p in range(2)
            for o in range(5)
        ],
    )
    wh.commit("word_counts", [{"word": "kafka", "count": 3}, {"word": "beam", "count": 2}])
    wh.close()
    return root


@pytest.fixture
def warehouse(tmp_path: Path) -> Path:
    return sample_warehouse(tmp_path / "wh")


def serve(warehouse: Path, **options: Any) -> TestClient:
    """A TestClient of the app over ``warehouse``; use it in a ``with`` block (its lifespan runs the watcher).

    The rate limit is off unless a test sets it: these tests ask faster than one client may.
    """
    options.setdefault("rate_limit", 0)
    return TestClient(create_app(ServeConfig(warehouse, **options)), base_url=BASE)


@pytest.fixture
def client(warehouse: Path) -> Iterator[TestClient]:
    with serve(warehouse) as c:
        yield c


def beamline(*argv: str) -> str:
    """``beamline query|lookup ...`` through its real parser and handler; returns stdout."""
    parser = argparse.ArgumentParser(prog="beamline")
    add_read_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    out = io.StringIO()
    with redirect_stdout(out):
        assert args.func(args) == 0
    return out.getvalue()


def one_line_error(response: Any, status: int, *needles: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert list(body) == ["error"], body
    line = body["error"]
    assert "\n" not in line and "Traceback" not in response.text and line
    for needle in needles:
        assert needle in line, line
    return str(line)


def snapshot_of(response: Any) -> int:
    sid = response.json()["snapshot"]["id"]
    assert response.headers["beamline-snapshot"] == str(sid)
    return int(sid)


# -- health, views, lookups --------------------------------------------------------------------
def test_health_names_the_snapshot_and_the_index(client: TestClient, warehouse: Path) -> None:
    r = client.get("/v1/health")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok" and body["warehouse_error"] is None
    assert snapshot_of(r) == Warehouse(warehouse).current().snapshot_id == 4
    assert body["index"]["rows"] == 28 and body["index"]["full_builds"] == 1
    assert body["snapshot"]["committed_at"].endswith("Z") and body["snapshot"]["age_s"] >= 0
    assert str(warehouse) not in r.text  # the warehouse's path is not the clients' business


def test_views_lists_columns_key_rows_and_files(client: TestClient, warehouse: Path) -> None:
    r = client.get("/v1/views")
    assert r.status_code == 200 and snapshot_of(r) == 4
    views = {v["name"]: v for v in r.json()["views"]}
    assert list(views) == ["inventory", "sales_by_window", "word_counts", "dead_letters"]
    for name, view in views.items():
        assert view["rows"] == run_query(f"SELECT count(*) AS n FROM {name}", warehouse).to_pylist()[0]["n"]
        assert view["source_offsets"] is None and view["lag_s"] is None  # no streaming run wrote these
    assert views["inventory"]["key"] == ["store_id", "item_id"] and views["inventory"]["files"] == 1
    assert [c["name"] for c in views["dead_letters"]["columns"]] == [
        "source_topic",
        "partition",
        "offset",
        "error",
        "payload",
    ]


def test_a_lookup_answers_from_memory_as_beamline_lookup_does(client: TestClient, warehouse: Path) -> None:
    r = client.get("/v1/inventory/store-1/item-04")
    assert r.status_code == 200 and snapshot_of(r) == 4
    cli = json.loads(
        beamline(
            "lookup",
            "inventory",
            "--store",
            "store-1",
            "--item",
            "item-04",
            "--warehouse",
            str(warehouse),
            "--format",
            "json",
        )
    )
    assert [r.json()["row"]] == cli
    assert r.json()["row"]["on_hand"] == 14 - 12 and r.json()["row"]["last_event_time"] == "2026-11-26T10:00:00+00:00"
    missing = client.get("/v1/inventory/store-1/no-such-item")
    one_line_error(missing, 404, "no inventory row", "'no-such-item'", "snapshot 4")
    assert missing.headers["beamline-snapshot"] == "4"
    one_line_error(client.get("/v1/inventory/store-1/item-04?asof=x"), 400, "unknown parameter 'asof'")


# -- pages of a view ------------------------------------------------------------------------------
def test_a_view_page_filters_by_columns_in_key_order(client: TestClient, warehouse: Path) -> None:
    r = client.get("/v1/views/inventory?store_id=store-2&limit=5")
    body = r.json()
    assert r.status_code == 200 and body["view"] == "inventory" and body["next"] is not None
    assert [row["item_id"] for row in body["rows"]] == [f"item-{i:02d}" for i in range(5)]
    rest = client.get(body["next_url"]).json()
    assert [row["item_id"] for row in rest["rows"]] == ["item-05", "item-06", "item-07"] and rest["next"] is None
    assert all(row["store_id"] == "store-2" for row in body["rows"] + rest["rows"])
    # Repeated: any of the values; numbers and times are typed; rows are `beamline query --format json`'s.
    both = client.get("/v1/views/inventory?item_id=item-03&item_id=item-05&on_hand=0").json()["rows"]
    assert [(x["store_id"], x["item_id"]) for x in both] == [("store-1", "item-05"), ("store-2", "item-05")]
    hours = client.get("/v1/views/sales_by_window?window_start=2026-11-26T12:00:00Z&store_id=store-1").json()["rows"]
    sql = "SELECT * FROM sales_by_window WHERE window_start = '2026-11-26 12:00:00+00' AND store_id = 'store-1'"
    assert hours == json.loads(beamline("query", sql, "--warehouse", str(warehouse), "--format", "json"))
    dead = client.get("/v1/views/dead_letters?partition=1&offset=3").json()["rows"]
    assert dead == [
        {"source_topic": "sales", "partition": 1, "offset": 3, "error": "not JSON (record 3)", "payload": "{broken\x03"}
    ]
    assert client.get("/v1/views/word_counts").json()["rows"] == [
        {"word": "beam", "count": 2},
        {"word": "kafka", "count": 3},
    ]


def test_a_view_page_refuses_what_it_cannot_answer_in_one_line(client: TestClient) -> None:
    one_line_error(client.get("/v1/views/stock"), 404, "no view 'stock'", "inventory, sales_by_window")
    one_line_error(client.get("/v1/views/inventory?colour=red"), 400, "unknown column 'colour'", "store_id, item_id")
    one_line_error(client.get("/v1/views/inventory?on_hand=lots"), 400, "on_hand= must be a whole number")
    one_line_error(client.get("/v1/views/inventory?limit=0"), 400, "limit= must be 1 to 1,000")
    one_line_error(client.get("/v1/views/inventory?limit=1001"), 400, "limit= must be 1 to 1,000")
    one_line_error(client.get("/v1/views/inventory?limit=1&limit=2"), 400, "limit= was given 2 times")
    one_line_error(client.get("/v1/views/inventory?after=garbage"), 400, "not a valid cursor of view inventory")
    cursor = client.get("/v1/views/dead_letters?limit=1").json()["next"]
    one_line_error(client.get(f"/v1/views/inventory?after={cursor}"), 400, "not a valid cursor of view inventory")
    one_line_error(client.get("/v1/views/sales_by_window?window_end=tuesday"), 400, "window_end=", "RFC 3339")
    one_line_error(client.get("/v1/views/inventory?as_of=soon"), 400, "as_of='soon' is not a time")


@pytest.mark.slow  # 100k rows and a writer beside them: the unit tier keeps the small paging tests
def test_pagination_walks_100k_rows_while_commits_land(tmp_path: Path) -> None:
    """Every page of a walk reads the walk's first snapshot: no row missed or repeated however many commits land."""
    root = tmp_path / "wh"
    wh = Warehouse(root)
    wh.commit("inventory", [stock(f"s{k // 1000:03d}", f"i{k % 1000:03d}", 10, 1, 1) for k in range(100_000)])
    stop = threading.Event()
    commits: list[int] = []

    def writer() -> None:  # updates keys across the whole range, and adds keys before and after the cursor
        other = Warehouse(root)
        n = 0
        while not stop.is_set():
            n += 1
            rows = [
                stock(f"s{(n * 7 + j) % 100:03d}", f"i{(n * 13 + j) % 1000:03d}", 20 + n, 1, 1 + n) for j in range(50)
            ]
            rows += [stock(f"s{n % 100:03d}", f"new-{n:05d}", 1, 0, 1), stock("a-first", f"x{n:05d}", 1, 0, 1)]
            snap = other.commit("inventory", rows).snapshot_id
            assert snap is not None
            commits.append(snap)
            time.sleep(0.05)
        other.close()

    thread = threading.Thread(target=writer, daemon=True)
    with serve(root, max_rows=5000) as c:  # 20 pages: enough for commits to land between them
        thread.start()
        while len(commits) < 3:
            time.sleep(0.01)
        first = c.get("/v1/views/inventory?limit=5000")
        walk_snapshot = first.json()["snapshot"]
        seen = [(r["store_id"], r["item_id"], r["events"]) for r in first.json()["rows"]]
        url, pages = first.json()["next_url"], 1
        while url:
            page = c.get(url)
            assert page.status_code == 200, page.text
            assert page.json()["snapshot"]["id"] == walk_snapshot["id"]
            seen += [(r["store_id"], r["item_id"], r["events"]) for r in page.json()["rows"]]
            url, pages = page.json()["next_url"], pages + 1
        stop.set()
        thread.join()
    expected = run_query(
        "SELECT store_id, item_id, events FROM inventory ORDER BY store_id, item_id",
        root,
        as_of=walk_snapshot["committed_at"],
    ).to_pylist()
    assert len(seen) == len(set(seen)) and len(seen) >= 100_000
    assert seen == [(r["store_id"], r["item_id"], r["events"]) for r in expected]
    assert max(commits) > walk_snapshot["id"] + 3, "commits landed during the walk"
    assert pages == -(-len(seen) // 5000)


# -- SQL ------------------------------------------------------------------------------------------
def test_query_runs_one_select_in_the_sandbox(client: TestClient) -> None:
    sql = "SELECT item_id, on_hand FROM inventory WHERE store_id = $1 ORDER BY on_hand, item_id LIMIT 3"
    r = client.post("/v1/query", json={"sql": sql, "params": ["store-2"]})
    assert r.status_code == 200 and snapshot_of(r) == 4
    body = r.json()
    assert body["rows"] == [
        {"item_id": "item-03", "on_hand": -1},
        {"item_id": "item-00", "on_hand": 0},
        {"item_id": "item-01", "on_hand": 0},
    ]
    assert body["columns"] == [{"name": "item_id", "type": "string"}, {"name": "on_hand", "type": "int64"}]
    assert body["rows_left_out"] == 0 and body["truncated"] is False
    one_line_error(client.post("/v1/query", json={"sql": "DROP VIEW inventory"}), 403, "refused")
    one_line_error(client.post("/v1/query", json={"sql": "SELECT * FROM read_parquet('/etc/passwd')"}), 403, "refused")
    one_line_error(client.post("/v1/query", json={"sql": "SELECT current_setting('memory_limit')"}), 403, "refused")
    one_line_error(client.post("/v1/query", json={"sql": "SELEKT 1"}), 400, "syntax error")
    one_line_error(client.post("/v1/query", json={"sql": "SELECT * FROM nope"}), 400, "no view named 'nope'")
    one_line_error(
        client.post("/v1/query", content=b"{not json", headers={"Content-Type": "application/json"}),
        400,
        "the body must be JSON",
    )
    one_line_error(client.post("/v1/query", json={"sql": "SELECT 1", "limit": 3}), 400, "unknown field 'limit'")
    one_line_error(client.post("/v1/query", json={"sql": "SELECT $1", "params": [{"a": 1}]}), 400, '"params"')
    one_line_error(client.post("/v1/query", json={"sql": "SELECT 1"}, params={"as_of": "x"}), 400, "as_of=")
    one_line_error(client.post("/v1/query", content=b" " * 70_000), 413, "at most 65,536 bytes")
    one_line_error(client.get("/v1/query"), 405, "GET is not allowed")


def test_query_answers_at_most_max_rows_and_says_how_many_it_left_out(warehouse: Path) -> None:
    with serve(warehouse, max_rows=5, page_size=5) as c:
        body = c.post("/v1/query", json={"sql": "SELECT * FROM range(12)"}).json()
        assert len(body["rows"]) == 5 and body["rows_left_out"] == 7 and body["truncated"] is True


def test_a_query_past_its_time_limit_is_stopped_with_one_line(warehouse: Path) -> None:
    limits = QueryLimits(memory_limit="512MB", threads=1, timeout=0.3)
    with serve(warehouse, limits=limits) as c:
        started = time.monotonic()
        r = c.post(
            "/v1/query", json={"sql": "SELECT count(*) FROM range(100000) a, range(100000) b WHERE a.range < b.range"}
        )
        one_line_error(r, 408, "stopped after 0.3 s")
        assert time.monotonic() - started < 5
        assert c.post("/v1/query", json={"sql": "SELECT 1 AS one"}).json()["rows"] == [{"one": 1}]  # still serving


# -- time travel and read-your-writes -------------------------------------------------------------
def test_as_of_answers_as_beamline_query_as_of(client: TestClient, warehouse: Path) -> None:
    before = client.get("/v1/health").json()["snapshot"]["committed_at"]
    time.sleep(0.01)
    wh = Warehouse(warehouse)
    wh.commit("inventory", [stock("store-1", "item-04", 99, 12, 50), stock("store-3", "item-00", 1, 0, 1)])
    newest = wh.commit("inventory", [stock("store-1", "item-04", 120, 12, 60)]).snapshot_id
    assert client.get(f"/v1/inventory/store-1/item-04?min_snapshot={newest}&wait=5").json()["row"]["shipped"] == 120
    middle = wh.current().committed_at - dt.timedelta(microseconds=1)
    for as_of in (before, middle.isoformat(), "2999-01-01T00:00:00Z"):
        sql = "SELECT * FROM inventory ORDER BY store_id, item_id"
        cli = json.loads(beamline("query", sql, "--warehouse", str(warehouse), "--format", "json", "--as-of", as_of))
        rows: list[dict[str, Any]] = []
        url: str | None = f"/v1/views/inventory?limit=7&as_of={as_of.replace('+', '%2B')}"
        while url:
            page = client.get(url).json()
            rows, url = rows + page["rows"], page["next_url"]
        assert rows == cli
        q = client.post("/v1/query", params={"as_of": as_of}, json={"sql": sql}).json()
        assert q["rows"] == cli
        lookup = client.get("/v1/inventory/store-1/item-04", params={"as_of": as_of})
        want = json.loads(
            beamline(
                "lookup",
                "inventory",
                "--store",
                "store-1",
                "--item",
                "item-04",
                "--warehouse",
                str(warehouse),
                "--format",
                "json",
                "--as-of",
                as_of,
            )
        )
        assert [lookup.json()["row"]] == want
    assert client.get("/v1/inventory/store-1/item-04", params={"as_of": before}).json()["snapshot"]["id"] == 4
    old = client.get("/v1/inventory/store-3/item-00", params={"as_of": before})
    one_line_error(old, 404, "snapshot 4")
    one_line_error(client.get("/v1/views", params={"as_of": "2001-01-01T00:00:00Z"}), 400, "did not exist yet")


def test_min_snapshot_answers_within_a_second_of_the_commit(client: TestClient, warehouse: Path) -> None:
    wh = Warehouse(warehouse)
    target = wh.current().snapshot_id + 1
    answered: dict[str, Any] = {}

    def ask() -> None:
        answered["response"] = client.get(f"/v1/inventory/store-9/item-01?min_snapshot={target}&wait=10")
        answered["at"] = time.monotonic()

    asker = threading.Thread(target=ask)
    asker.start()
    time.sleep(0.5)
    assert "response" not in answered  # still waiting for the snapshot
    result = wh.commit("inventory", [stock("store-9", "item-01", 7, 2, 3)])
    committed = time.monotonic()
    asker.join(10)
    assert result.snapshot_id == target
    response = answered["response"]
    assert response.status_code == 200 and snapshot_of(response) == target
    assert response.json()["row"]["on_hand"] == 5
    assert answered["at"] - committed < 1.0


def test_min_snapshot_not_visible_within_wait_is_503(warehouse: Path) -> None:
    with serve(warehouse, max_wait_s=0.3) as c:
        started = time.monotonic()
        r = c.get("/v1/views?min_snapshot=99&wait=100")  # wait is capped at max_wait_s
        one_line_error(r, 503, "snapshot 99 is not visible after 0.3 s", "the newest is 4")
        assert r.headers["retry-after"] == "1" and time.monotonic() - started < 3
        assert c.get("/v1/views?min_snapshot=4").status_code == 200
        one_line_error(c.get("/v1/views?min_snapshot=-1"), 400, "min_snapshot=")
        one_line_error(c.get("/v1/views?min_snapshot=5&wait=soon"), 400, "wait= must be a number")


# -- the index follows the warehouse ---------------------------------------------------------------
def test_the_index_follows_commits_and_compactions_without_rebuilding(tmp_path: Path) -> None:
    root = tmp_path / "wh"
    wh = Warehouse(root, max_files_per_view=4)
    wh.commit("inventory", [stock("s", f"i{k:03d}", 5, 0, 1) for k in range(300)])
    with serve(root, poll_interval_s=0.01) as c:
        for n in range(1, 30):
            wh.commit(
                "inventory",
                [stock("s", f"i{(n * 11 + j) % 300:03d}", 5 + n, n % 4, 1 + n) for j in range(5)]
                + [stock("s", f"new-{n:02d}", n, 0, 1), stock("s", "i000", 0, 0, 1)],
            )
        newest = wh.current().snapshot_id
        health = c.get(f"/v1/health?min_snapshot={newest}&wait=5")
        assert health.status_code == 400  # health takes no parameters
        assert c.get(f"/v1/views?min_snapshot={newest}&wait=5").status_code == 200
        index = c.get("/v1/health").json()["index"]
        assert index["full_builds"] == 1 and index["compactions_skipped"] >= 3 and index["incremental_updates"] >= 20
        view = run_query("SELECT * FROM inventory", root)
        assert index["rows"] == view.num_rows == 329
        want = json.loads(
            beamline("query", "SELECT * FROM inventory ORDER BY item_id", "--warehouse", str(root), "--format", "json")
        )
        got = [c.get(f"/v1/inventory/s/{row['item_id']}").json()["row"] for row in want]
        assert got == want


# -- events ----------------------------------------------------------------------------------------
def test_events_announce_each_new_snapshot(client: TestClient, warehouse: Path) -> None:
    with client.stream("GET", "/v1/events") as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        lines = stream.iter_lines()
        first = [next(lines) for _ in range(3)]
        assert first[0] == "id: 4" and first[1] == "event: snapshot"
        assert json.loads(first[2].removeprefix("data: "))["snapshot"]["id"] == 4
        Warehouse(warehouse).commit("inventory", [stock("store-1", "item-00", 50, 0, 99)])
        following = [line for line in (next(lines) for _ in range(4)) if line]
        assert following[0] == "id: 5" and json.loads(following[2].removeprefix("data: "))["snapshot"]["id"] == 5


# -- security --------------------------------------------------------------------------------------
ROUTES = [
    ("GET", "/"),
    ("GET", "/docs"),
    ("GET", "/openapi.json"),
    ("GET", "/static/page.js"),
    ("GET", "/v1/health"),
    ("GET", "/v1/views"),
    ("GET", "/v1/views/inventory"),
    ("GET", "/v1/inventory/store-1/item-01"),
    ("GET", "/v1/inventory/store-1/item-01?as_of=2999-01-01T00:00:00Z"),
    ("POST", "/v1/query"),
    ("GET", "/v1/events"),
    ("GET", "/no/such/route"),
]


def test_a_token_guards_every_route_when_bound_beyond_loopback(warehouse: Path) -> None:
    with pytest.raises(ConfigError, match=r"binding 0\.0\.0\.0 would let other machines read"):
        check_bind(ServeConfig(warehouse, host="0.0.0.0"))
    with pytest.raises(ConfigError, match="at least 16 characters"):
        ServeConfig(warehouse, host="0.0.0.0", token="short")
    config = ServeConfig(warehouse, host="0.0.0.0", token=TOKEN)
    check_bind(config)
    with TestClient(create_app(config), base_url="http://203.0.113.7:8000") as c:
        documented = set(c.get("/openapi.json", headers={"Authorization": f"Bearer {TOKEN}"}).json()["paths"])
        assert {p.split("?")[0] for _, p in ROUTES} >= {"/v1/health", "/v1/views", "/v1/query", "/v1/events"}
        assert len(documented) == 6
        for method, path in ROUTES:
            for header in (None, "Bearer wrong-token-0123456789", f"Basic {TOKEN}", f"Token {TOKEN}"):
                r = c.request(method, path, headers={"Authorization": header} if header else {})
                one_line_error(r, 401, "needs its token")
                assert r.headers.get_list("www-authenticate") == ['Bearer realm="beamline"', 'Basic realm="beamline"']
            if path == "/v1/events":
                continue
            body = {"json": {"sql": "SELECT 1"}} if method == "POST" else {}
            ok = c.request(method, path, headers={"Authorization": f"Bearer {TOKEN}"}, **body)
            assert ok.status_code != 401, (path, ok.text)
        import base64

        basic = base64.b64encode(f"anyone:{TOKEN}".encode()).decode()
        assert c.get("/v1/health", headers={"Authorization": f"Basic {basic}"}).status_code == 200


def test_without_a_token_the_host_header_must_name_this_machine(client: TestClient) -> None:
    assert client.get("/v1/health", headers={"Host": "localhost:8000"}).status_code == 200
    assert client.get("/v1/health", headers={"Host": "[::1]:8000"}).status_code == 200
    one_line_error(client.get("/v1/health", headers={"Host": "evil.example:8000"}), 421, "not this service's address")


def test_a_client_past_its_rate_is_429_with_retry_after(warehouse: Path) -> None:
    with serve(warehouse, rate_limit=5) as c:
        answers = [c.get("/v1/inventory/store-1/item-01") for _ in range(10)]
        assert [a.status_code for a in answers] == [200] * 10  # the burst: twice the rate
        for _ in range(50):  # the bucket refills at 5 a second: it runs dry again within a few requests
            limited = c.get("/v1/inventory/store-1/item-01")
            if limited.status_code == 429:
                break
        one_line_error(limited, 429, "too many requests", "5 a second per client")
        assert int(limited.headers["retry-after"]) >= 1


def test_cors_is_off_unless_an_origin_is_given(warehouse: Path) -> None:
    origin = {"Origin": "https://dash.example"}
    with serve(warehouse) as c:
        assert "access-control-allow-origin" not in c.get("/v1/health", headers=origin).headers
    with serve(warehouse, cors_origins=("https://dash.example",), token=TOKEN) as c:
        r = c.get("/v1/health", headers={**origin, "Authorization": f"Bearer {TOKEN}"})
        assert r.headers["access-control-allow-origin"] == "https://dash.example"
        preflight = c.options(
            "/v1/query",
            headers={
                **origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization",
            },
        )
        assert preflight.status_code == 200 and "POST" in preflight.headers["access-control-allow-methods"]
        other = c.get("/v1/health", headers={"Origin": "https://evil.example", "Authorization": f"Bearer {TOKEN}"})
        assert "access-control-allow-origin" not in other.headers
    with pytest.raises(ConfigError, match="--cors-origin"):
        ServeConfig(warehouse, cors_origins=("*",))


def test_an_unexpected_error_is_a_one_line_500_and_a_logged_traceback(
    warehouse: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("a bug\nwith a second line")

    with caplog.at_level(logging.ERROR, logger="beamline.serve"):
        r = TestClient(Guard(broken, ServeConfig(warehouse)), base_url=BASE).get("/v1/health")
    one_line_error(r, 500, "internal error (RuntimeError)", "server log")
    assert "a bug" not in r.text
    assert any(rec.exc_info and "a bug" in str(rec.exc_info[1]) for rec in caplog.records)


def test_no_route_writes_to_the_warehouse(client: TestClient, warehouse: Path) -> None:
    def tree() -> dict[str, str]:
        return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(warehouse.rglob("*")) if p.is_file()}

    before = tree()
    for method in ("PUT", "DELETE", "PATCH", "POST"):
        for path in ("/v1/views/inventory", "/v1/inventory/store-1/item-01", "/v1/health"):
            one_line_error(client.request(method, path), 405, "is not allowed")
    client.post("/v1/query", json={"sql": "COPY inventory TO 'x.csv'"})
    client.post("/v1/query", json={"sql": "ATTACH 'other.db'"})
    for method, path in ROUTES:
        if path != "/v1/events":
            client.request(method, path, **({"json": {"sql": "SELECT 1"}} if method == "POST" else {}))
    assert tree() == before


def test_every_answer_says_nosniff_and_no_store(client: TestClient) -> None:
    for method, path in ROUTES:
        if path == "/v1/events":
            continue
        r = client.request(method, path, **({"json": {"sql": "SELECT 1"}} if method == "POST" else {}))
        assert r.headers["x-content-type-options"] == "nosniff" and r.headers["cache-control"] == "no-store", path


# -- the page and the docs ------------------------------------------------------------------------
def test_the_page_and_docs_fetch_nothing_from_another_site(warehouse: Path, tmp_path: Path) -> None:
    with serve(warehouse, vendor_dir=tmp_path / "no-node-modules") as c:
        page = c.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "default-src 'self'" in page.headers["content-security-policy"]
        assert "uplot" not in page.text and "/static/page.js" in page.text
        assert "://" not in page.text and "://" not in c.get("/static/page.js").text
        one_line_error(c.get("/static/vendor/uplot.js"), 404, "uplot is not installed", "make setup")
        one_line_error(c.get("/static/../../etc/passwd"), 404)
        docs = c.get("/docs")
        assert "GET /v1/inventory/{store_id}/{item_id}" in docs.text and "Swagger UI is not installed" in docs.text
    vendor = tmp_path / "node_modules"
    for package, rel in (
        ("uplot", "dist/uPlot.iife.min.js"),
        ("uplot", "dist/uPlot.min.css"),
        ("swagger-ui-dist", "swagger-ui-bundle.js"),
        ("swagger-ui-dist", "swagger-ui.css"),
    ):
        (vendor / package / rel).parent.mkdir(parents=True, exist_ok=True)
        (vendor / package / rel).write_text("/* vendored */")
    with serve(warehouse, vendor_dir=vendor) as c:
        assert '<script src="/static/vendor/uplot.js"></script>' in c.get("/").text
        assert c.get("/static/vendor/uplot.js").text == "/* vendored */"
        assert "/static/vendor/swagger-ui.js" in c.get("/docs").text


def test_openapi_describes_every_api_route(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    assert schema["openapi"].startswith("3.1")
    assert set(schema["paths"]) == {
        "/v1/health",
        "/v1/views",
        "/v1/views/{view}",
        "/v1/inventory/{store_id}/{item_id}",
        "/v1/query",
        "/v1/events",
    }
    reads = {p["name"] for p in schema["paths"]["/v1/views/{view}"]["get"]["parameters"]}
    assert {"as_of", "min_snapshot", "wait", "limit", "after", "store_id", "offset"} <= reads


# -- review findings ------------------------------------------------------------------------------
LONG_SQL = "SELECT sum(hash(range)) FROM range(100000000000)"


def test_query_wants_json_and_long_queries_neither_starve_paging_nor_keep_their_slot(warehouse: Path) -> None:
    limits = QueryLimits(memory_limit="512MB", threads=1, timeout=1.5)
    with serve(warehouse, limits=limits, query_slots=1) as c:
        body = b'{"sql": "SELECT 1 AS one"}'
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        one_line_error(c.post("/v1/query", content=body, headers=form), 415, "Content-Type: application/json")
        one_line_error(c.post("/v1/query", content=body), 415, "Content-Type: application/json")
        one_line_error(c.post("/v1/query", content=body, headers={"Content-Type": "text/plain"}), 415)
        utf8 = {"Content-Type": "application/json; charset=utf-8"}
        assert c.post("/v1/query", content=body, headers=utf8).json()["rows"] == [{"one": 1}]

        answers: list[Any] = []

        def long_query() -> None:
            answers.append(c.post("/v1/query", json={"sql": LONG_SQL}))

        started = time.monotonic()
        askers = [threading.Thread(target=long_query) for _ in range(2)]
        for asker in askers:
            asker.start()
        time.sleep(0.3)
        before = time.monotonic()
        page = c.get("/v1/views/inventory?limit=5")
        assert page.status_code == 200 and len(page.json()["rows"]) == 5
        assert time.monotonic() - before < 1.0  # paging has slots of its own
        for asker in askers:
            asker.join(30)
        # One slot: the second query ran once the first one's limit fired (no 503), and both were stopped.
        assert [a.status_code for a in answers] == [408, 408]
        for a in answers:
            one_line_error(a, 408, "stopped after 1.5 s", "--query-timeout", "operator")
        assert time.monotonic() - started < 15


def test_an_id_holding_a_slash_is_looked_up_percent_encoded(client: TestClient, warehouse: Path) -> None:
    sid = Warehouse(warehouse).commit("inventory", [stock("s/lash", "a/b%c d", 9, 4, 2)]).snapshot_id
    url = "/v1/inventory/s%2Flash/a%2Fb%25c%20d"
    slow = client.get(f"{url}?min_snapshot={sid}&wait=5")  # through the router
    assert slow.status_code == 200 and slow.json()["row"]["store_id"] == "s/lash", slow.text
    fast = client.get(url)  # the fast path
    assert fast.status_code == 200 and fast.json()["row"] == slow.json()["row"]
    assert fast.json()["row"]["item_id"] == "a/b%c d"
    one_line_error(client.get("/v1/inventory/s/lash/a"), 404, "no route")
    one_line_error(client.get("/v1/inventory/s/lash/a?as_of=2999-01-01T00:00:00Z"), 404, "no route")
    one_line_error(client.get("/v1/inventory/%2F/nope"), 404, "no inventory row for store '/' item 'nope'")
    one_line_error(client.get("/v1/inventory//item-01"), 404, "no route")


def test_as_of_and_min_snapshot_together_are_refused(client: TestClient) -> None:
    for path in ("/v1/views", "/v1/views/inventory", "/v1/inventory/store-1/item-01"):
        r = client.get(path, params={"as_of": "2999-01-01T00:00:00Z", "min_snapshot": "4"})
        one_line_error(r, 400, "as_of= and min_snapshot= contradict")
    r = client.post(
        "/v1/query", params={"as_of": "2999-01-01T00:00:00Z", "min_snapshot": "4"}, json={"sql": "SELECT 1"}
    )
    one_line_error(r, 400, "contradict")


def test_an_integer_param_past_64_bits_is_refused(client: TestClient) -> None:
    for huge in ("123456789012345678901234567890", str(2**63), str(-(2**63) - 1), "18446744073709551616"):
        body = b'{"sql": "SELECT $1 AS x", "params": [' + huge.encode() + b"]}"
        r = client.post("/v1/query", content=body, headers={"Content-Type": "application/json"})
        one_line_error(r, 400, "outside 64 bits")
    ok = client.post("/v1/query", json={"sql": "SELECT $1 AS x, $2 AS y", "params": [2**63 - 1, 1.5]})
    assert ok.status_code == 200, ok.text
    assert ok.json()["rows"] == [{"x": 2**63 - 1, "y": 1.5}]


def test_cursor_errors_say_what_is_wrong(tmp_path: Path) -> None:
    root = tmp_path / "wh"
    wh = Warehouse(root)
    for n in range(3):
        wh.commit("word_counts", [{"word": f"w{n}-{i}", "count": i} for i in range(5)])
    with serve(root) as c:
        first = c.get("/v1/views/word_counts?limit=2").json()
        cursor, sid = first["next"], first["snapshot"]["id"]
        assert c.get(f"/v1/views/word_counts?limit=2&after={cursor}").status_code == 200
        from core.views import VIEWS
        from warehouse.format import load_snapshot

        spec, snap = VIEWS["word_counts"], load_snapshot(root)

        class Edited:
            def __init__(self, snapshot_id: int, committed_at_us: int) -> None:
                self.snapshot_id, self.committed_at_us = snapshot_id, committed_at_us

        for edited in (
            Edited(-1, snap.committed_at_us),
            Edited(snap.snapshot_id, -1),
            Edited(sid - 1, snap.committed_at_us),
        ):
            bad = encode_cursor(spec, edited, ["w0-1"])  # type: ignore[arg-type]
            one_line_error(c.get(f"/v1/views/word_counts?after={bad}"), 400, "not a valid cursor of view word_counts")
        wh.commit("word_counts", [{"word": "later", "count": 1}])
        time.sleep(0.01)
        wh.expire_snapshots(dt.timedelta(0))
        r = c.get(f"/v1/views/word_counts?limit=2&after={cursor}")
        one_line_error(r, 410, f"this page's snapshot {sid} has expired", "start the walk again without after=")
    wh.close()


def test_a_cors_origin_is_scheme_host_and_port_only(warehouse: Path) -> None:
    for origin in ("https://a.com/", "https://a.com/path", "file://", "https://a.com?x", "null", "https://A.com"):
        with pytest.raises(ConfigError, match="--cors-origin must be one origin") as caught:
            ServeConfig(warehouse, cors_origins=(origin,))
        assert "\n" not in str(caught.value)
    for origin in ("https://a.com", "http://localhost:8080", "http://[::1]:3000"):
        assert ServeConfig(warehouse, cors_origins=(origin,)).cors_origins == (origin,)


def test_views_show_the_offsets_a_streaming_resume_point_covers(tmp_path: Path) -> None:
    from transforms.checkpoint import Progress
    from warehouse.resume import begin_run

    root = tmp_path / "wh"
    run = begin_run(root, "inventory", {("sales", 0): 0, ("sales", 1): 7, ("shipments", 0): 3}, shards=1)
    moved = Progress(0)
    moved.claim(0, 41)
    writer = Warehouse(root)
    writer.commit("_resume_offsets", [moved.row("inventory", ("sales", 0), 0, 1, run, 1)])
    writer.close()
    with serve(root) as client:
        views = {v["name"]: v for v in client.get("/v1/views").json()["views"]}
    covered = {"sales": {"0": 42, "1": 7}, "shipments": {"0": 3}}
    assert views["inventory"]["source_offsets"] == covered
    assert views["dead_letters"]["source_offsets"] == covered
    assert views["word_counts"]["source_offsets"] is None
