// The live page: one store's stock, its sales per hour, the latest dead letters, and how fresh they are.
// It reads the same JSON API as any client. Every refresh asks all its questions with as_of= the commit
// time of one snapshot, so the panels always show one snapshot whole; /v1/events says when a new one
// commits, and the page refreshes itself (no reload).
"use strict";

const STOCK_ROWS = 500;
const DEAD_ROWS = 20;
const HOURS = 168;

const state = { store: null, shown: null, pending: null, pendingForce: false, busy: false, plot: null };
const $ = (id) => document.getElementById(id);

async function api(path, options) {
  const response = await fetch(path, { credentials: "same-origin", ...options });
  let body = null;
  try {
    body = await response.json();
  } catch (_) {
    throw new Error(`${path}: HTTP ${response.status}`);
  }
  if (!response.ok) throw new Error(body && body.error ? body.error : `${path}: HTTP ${response.status}`);
  return body;
}

function query(sql, params, snapshot) {
  const asOf = encodeURIComponent(snapshot.committed_at);
  return api(`/v1/query?as_of=${asOf}`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ sql, params }),
  });
}

function cell(row, text, className) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined ? "" : String(text);
  if (className) td.className = className;
  row.appendChild(td);
  return td;
}

function showError(message) {
  const box = $("error");
  box.textContent = message || "";
  box.hidden = !message;
}

function timeText(iso) {
  return iso ? iso.replace("T", " ").slice(0, 16) : ""; // to the minute, UTC
}

function millis(iso) {
  return Date.parse(iso.replace(/(\.\d{3})\d*Z$/, "$1Z"));
}

function renderFreshness() {
  const snap = state.shown;
  if (!snap) return;
  const age = Math.max(0, (Date.now() - millis(snap.committed_at)) / 1000);
  const ageText = age < 90 ? `${age.toFixed(age < 10 ? 1 : 0)} s` : age < 5400 ? `${Math.round(age / 60)} min` : `${(age / 3600).toFixed(1)} h`;
  $("snapshot-label").textContent = `snapshot ${snap.id} · committed ${ageText} ago`;
  document.body.dataset.snapshot = String(snap.id);
}

function fillStores(rows) {
  const select = $("store");
  const wanted = state.store || new URLSearchParams(location.search).get("store");
  select.replaceChildren();
  for (const row of rows) {
    const option = document.createElement("option");
    option.value = row.store_id;
    option.textContent = row.out_of_stock ? `${row.store_id} (${row.out_of_stock} out of stock)` : row.store_id;
    select.appendChild(option);
  }
  const ids = rows.map((r) => r.store_id);
  state.store = ids.includes(wanted) ? wanted : ids[0] || null;
  if (state.store) select.value = state.store;
  const info = rows.find((r) => r.store_id === state.store);
  return info ? info.items : 0;
}

function renderStock(rows, items) {
  const body = $("stock").tBodies[0];
  body.replaceChildren();
  for (const r of rows) {
    const tr = document.createElement("tr");
    tr.dataset.item = r.item_id;
    if (r.on_hand <= 0) tr.className = "out";
    else if (r.on_hand <= 5) tr.className = "low";
    const name = cell(tr, r.item_id);
    if (r.on_hand <= 0) {
      const tag = document.createElement("span");
      tag.className = "tag";
      tag.textContent = r.on_hand < 0 ? "oversold" : "out of stock";
      name.appendChild(tag);
    }
    cell(tr, r.on_hand, "num on-hand");
    cell(tr, r.shipped, "num");
    cell(tr, r.sold, "num");
    cell(tr, r.events, "num");
    cell(tr, timeText(r.last_event_time));
    body.appendChild(tr);
  }
  const out = rows.filter((r) => r.on_hand <= 0).length;
  const shown = items > rows.length ? `the lowest ${rows.length} of ${items} items` : `${rows.length} items`;
  $("stock-note").textContent = `${shown}; ${out} out of stock (highlighted)`;
  $("store-name").textContent = state.store || "—";
}

function renderSales(rows) {
  rows.reverse();
  const minutes = rows.length ? (millis(rows[0].window_end) - millis(rows[0].window_start)) / 60000 : 60;
  $("sales-title").textContent = minutes === 60 ? "Sales per hour" : `Sales per ${minutes} minutes`;
  const note = $("chart-note");
  const table = $("sales-table");
  if (typeof window.uPlot === "undefined") {
    note.hidden = false;
    note.textContent = "The chart library is not installed (run `make setup`); the sales are shown as a table.";
    table.hidden = false;
    const body = table.tBodies[0];
    body.replaceChildren();
    for (const r of rows) {
      const tr = document.createElement("tr");
      cell(tr, timeText(r.window_start));
      cell(tr, r.units, "num");
      body.appendChild(tr);
    }
    return;
  }
  note.hidden = rows.length > 0;
  note.textContent = rows.length ? "" : "No sales in the view for this store yet.";
  const xs = rows.map((r) => millis(r.window_start) / 1000);
  const ys = rows.map((r) => r.units);
  const chart = $("chart");
  const width = Math.max(280, chart.clientWidth || 480);
  if (state.plot) state.plot.destroy();
  state.plot = new window.uPlot(
    {
      width,
      height: 240,
      scales: { x: { time: true } },
      series: [
        {},
        {
          label: "units sold",
          stroke: "#2a7f62",
          fill: "rgba(42, 127, 98, 0.18)",
          width: 1,
          paths: window.uPlot.paths.bars({ size: [0.85, 30] }),
          points: { show: false },
        },
      ],
      axes: [{}, { label: "units" }],
      legend: { show: true },
    },
    [xs, ys],
    chart,
  );
}

function renderDead(rows) {
  const body = $("dead-letters").tBodies[0];
  body.replaceChildren();
  for (const r of rows) {
    const tr = document.createElement("tr");
    cell(tr, r.source_topic);
    cell(tr, r.partition, "num");
    cell(tr, r.offset, "num");
    cell(tr, r.error, "reason");
    const payload = r.payload || "";
    cell(tr, payload.length > 48 ? `${payload.slice(0, 48)}…` : payload, "payload").title = payload;
    body.appendChild(tr);
  }
  $("dead-note").textContent = rows.length ? `the ${rows.length} with the highest offsets` : "none: every record was valid";
}

async function load(snapshot, force) {
  if (!snapshot) return;
  if (state.busy) {
    if (!state.pending || snapshot.id >= state.pending.id) state.pending = snapshot;
    state.pendingForce = state.pendingForce || force;
    return;
  }
  if (!force && state.shown && snapshot.id <= state.shown.id) return;
  state.busy = true;
  try {
    const stores = await query(
      "SELECT store_id, count(*) AS items, count(*) FILTER (WHERE on_hand <= 0) AS out_of_stock " +
        "FROM inventory GROUP BY store_id ORDER BY store_id",
      [],
      snapshot,
    );
    const items = fillStores(stores.rows);
    const store = state.store;
    const [stock, sales, dead] = await Promise.all([
      query(
        "SELECT item_id, on_hand, shipped, sold, events, last_event_time FROM inventory " +
          `WHERE store_id = $1 ORDER BY on_hand, item_id LIMIT ${STOCK_ROWS}`,
        [store],
        snapshot,
      ),
      query(
        "SELECT window_start, window_end, sum(units) AS units FROM sales_by_window WHERE store_id = $1 " +
          `GROUP BY window_start, window_end ORDER BY window_start DESC LIMIT ${HOURS}`,
        [store],
        snapshot,
      ),
      query(
        'SELECT source_topic, partition, "offset", error, payload FROM dead_letters ' +
          `ORDER BY "offset" DESC, source_topic, partition LIMIT ${DEAD_ROWS}`,
        [],
        snapshot,
      ),
    ]);
    renderStock(stock.rows, items);
    renderSales(sales.rows);
    renderDead(dead.rows);
    state.shown = stock.snapshot;
    renderFreshness();
    showError(null);
  } catch (err) {
    showError(`Could not refresh: ${err.message}`);
  } finally {
    state.busy = false;
    const next = state.pending;
    const nextForce = state.pendingForce;
    state.pending = null;
    state.pendingForce = false;
    if (next) load(next, nextForce);
  }
}

function follow() {
  const dot = $("live-dot");
  const events = new EventSource("/v1/events");
  events.addEventListener("open", () => {
    dot.className = "dot live";
    dot.title = "live: updates as snapshots commit";
  });
  events.addEventListener("error", () => {
    dot.className = "dot down";
    dot.title = "reconnecting…";
  });
  events.addEventListener("snapshot", (event) => load(JSON.parse(event.data).snapshot, false));
}

document.addEventListener("DOMContentLoaded", () => {
  $("store").addEventListener("change", (event) => {
    state.store = event.target.value;
    const url = new URL(location.href);
    url.searchParams.set("store", state.store);
    history.replaceState(null, "", url);
    load(state.shown, true);
  });
  api("/v1/health")
    .then((health) => load(health.snapshot, false))
    .catch((err) => showError(`Could not reach the service: ${err.message}`));
  follow();
  setInterval(renderFreshness, 1000);
});
