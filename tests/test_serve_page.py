"""The live page in a real browser: Playwright driving Debian's Chromium against ``beamline serve``'s app.

The app runs on uvicorn in this process (a real socket), over a warehouse the
:class:`Warehouse` writer fills; the test picks a store, checks the stock table
against the view, commits new rows, and watches the page follow without a
reload. Playwright never downloads a browser here: ``make test`` installs
Debian's ``chromium`` (``make test-setup``). ``BEAMLINE_SCREENSHOT=PATH`` also
saves the screenshot there (``make screenshot`` refreshes docs/serve-page.png).
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from readside.query import run_query
from readside.serve import ServeConfig, create_app
from readside.serve.page import vendor_root
from readside.serve.server import bind, url_of
from tests.test_serve import stock
from warehouse.writer import Warehouse

pytestmark = pytest.mark.slow

UTC = dt.timezone.utc
START = dt.datetime(2026, 11, 24, 0, 0, tzinfo=UTC)
HOUR = dt.timedelta(hours=1)
STORES = ("store-001", "store-002", "store-003")
REASONS = (
    "not JSON: Expecting value at line 1 column 1",
    "quantity must be a JSON integer > 0; got 2.5",
    "event_time has no UTC offset: '2026-11-26T10:00:00'",
    "missing field store_id",
    "event_id reused with different content",
)


def chromium_path() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.fail("Chromium is not installed: run `make test-setup` (it installs Debian's chromium with apt-get)")
    return found


def fill(root: Path) -> Warehouse:
    """Three stores of 24 items, two days of hourly sales with a daily rhythm, and a few dead letters."""
    wh = Warehouse(root)
    last = START + 47 * HOUR
    rows = []
    for s, store in enumerate(STORES):
        for i in range(24):
            shipped = 40 + (i * 7 + s * 5) % 60
            sold = min(shipped + (i % 9 == 4), (i * 13 + s * 11) % 90)
            rows.append(stock(store, f"item-{i:03d}", shipped, sold, 3 + i % 5, last))
    wh.commit("inventory", rows)
    sales = []
    for h in range(48):
        hour = START + h * HOUR
        rhythm = [2, 1, 1, 0, 0, 1, 3, 6, 9, 11, 12, 13, 14, 13, 12, 12, 13, 15, 16, 14, 10, 7, 5, 3][hour.hour]
        for s, store in enumerate(STORES):
            for i in range(3):
                units = max(0, rhythm + (h * 3 + i * 5 + s) % 5 - 2)
                if units:
                    sales.append(
                        {
                            "window_start": hour,
                            "window_end": hour + HOUR,
                            "store_id": store,
                            "item_id": f"item-{i:03d}",
                            "units": units,
                            "sales": units,
                        }
                    )
    wh.commit("sales_by_window", sales)
    dead = [
        {
            "source_topic": ("sales", "shipments")[n % 2],
            "partition": n % 4,
            "offset": 100 + 17 * n,
            "error": REASONS[n % len(REASONS)],
            "payload": f'{{"event_id": "e-{n}", "quantity": 2.5'.encode(),
        }
        for n in range(8)
    ]
    wh.commit("dead_letters", dead)
    return wh


class Running:
    """The app on uvicorn in a thread of this process, on a free port."""

    def __init__(self, config: ServeConfig) -> None:
        self.sock = bind("127.0.0.1", 0)
        self.url = url_of(self.sock)
        self.server = uvicorn.Server(uvicorn.Config(create_app(config), lifespan="on", log_config=None))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> Running:
        self.thread.start()
        while not self.server.started:
            self.thread.join(0.02)
            assert self.thread.is_alive(), "uvicorn did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"], headless=True)
        yield launched
        launched.close()


def expect(locator: Any) -> Any:
    # Playwright's assertions poll without evaluating strings, which the page's CSP forbids.
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


def stock_rows(page: Any) -> list[tuple[str, int, bool]]:
    """(item, on hand, highlighted) of each row of the stock table."""
    return [
        (r["item"], int(r["on_hand"]), r["out"])
        for r in page.eval_on_selector_all(
            "#stock tbody tr",
            "rows => rows.map(r => ({item: r.dataset.item, on_hand: r.querySelector('.on-hand').textContent, "
            "out: r.classList.contains('out')}))",
        )
    ]


def test_the_page_follows_new_snapshots_without_a_reload(browser: Any, tmp_path: Path) -> None:
    root = tmp_path / "wh"
    wh = fill(root)
    with Running(ServeConfig(root, rate_limit=0)) as server:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        requested: list[str] = []
        page.on("request", lambda request: requested.append(request.url))
        errors: list[str] = []
        page.on("pageerror", lambda err: errors.append(str(err)))
        page.goto(server.url + "/")
        page.wait_for_selector("body[data-snapshot='3']")
        page.select_option("#store", "store-002")
        expect(page.locator("#store-name")).to_have_text("store-002")
        page.wait_for_selector("#stock tbody tr")
        view = run_query(
            "SELECT item_id, on_hand FROM inventory WHERE store_id = 'store-002' ORDER BY on_hand, item_id", root
        ).to_pylist()
        assert stock_rows(page) == [(r["item_id"], r["on_hand"], r["on_hand"] <= 0) for r in view]
        assert any(out for _, _, out in stock_rows(page)), "the sample has out-of-stock items to highlight"
        has_chart = (vendor_root(ServeConfig(root)) / "uplot" / "dist" / "uPlot.iife.min.js").is_file()
        if has_chart:
            page.wait_for_selector("#chart canvas")
        assert page.locator("#dead-letters tbody tr").count() == 8
        assert "event_id reused" in page.locator("#dead-letters").inner_text()
        assert page.locator("#live-dot.live").count() == 1
        page.evaluate("window.__sameDocument = true")

        # New rows commit: store-002's lowest item is restocked, a new item sells out, a dead letter arrives.
        lowest = view[0]["item_id"]
        wh.commit_many(
            {
                "inventory": [stock("store-002", lowest, 500, 1, 50), stock("store-002", "item-new", 3, 3, 2)],
                "dead_letters": [
                    {
                        "source_topic": "sales",
                        "partition": 0,
                        "offset": 9999,
                        "error": "missing field item_id",
                        "payload": b'{"event_id": "late"}',
                    }
                ],
            }
        )
        page.wait_for_selector("body[data-snapshot='4']", timeout=10_000)
        expect(page.locator("#stock tbody tr").first).not_to_have_attribute("data-item", lowest)
        assert page.evaluate("window.__sameDocument") is True, "the page updated itself, no reload"
        after = run_query(
            "SELECT item_id, on_hand FROM inventory WHERE store_id = 'store-002' ORDER BY on_hand, item_id", root
        ).to_pylist()
        assert stock_rows(page) == [(r["item_id"], r["on_hand"], r["on_hand"] <= 0) for r in after]
        assert ("item-new", 0, True) in stock_rows(page)
        assert page.locator("#dead-letters tbody tr").first.inner_text().split("\t")[2] == "9999"
        assert "snapshot 4" in page.locator("#snapshot-label").inner_text()
        assert not errors, errors
        assert all(url.startswith(server.url) for url in requested), [u for u in requested if server.url not in u]
        page.wait_for_timeout(300)  # let the chart settle for the picture
        shot = tmp_path / "serve-page.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
        target = os.environ.get("BEAMLINE_SCREENSHOT")
        if target:
            shutil.copyfile(shot, target)
        page.close()


def test_the_page_works_without_its_chart_library_and_says_so(browser: Any, tmp_path: Path) -> None:
    root = tmp_path / "wh"
    fill(root)
    config = ServeConfig(root, rate_limit=0, vendor_dir=tmp_path / "no-node-modules")
    with Running(config) as server:
        page = browser.new_page()
        page.goto(server.url + "/?store=store-003")
        page.wait_for_selector("body[data-snapshot='3']")
        assert page.locator("#store").input_value() == "store-003"
        assert "chart library is not installed" in page.locator("#chart-note").inner_text()
        hours = run_query(
            "SELECT count(DISTINCT window_start) AS n FROM sales_by_window WHERE store_id = 'store-003'", root
        ).to_pylist()[0]["n"]
        assert page.locator("#sales-table tbody tr").count() == hours
        assert page.locator("#stock tbody tr").count() == 24
        page.close()
