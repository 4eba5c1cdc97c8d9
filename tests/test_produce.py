"""The retail generator (pure) and `beamline produce` against the real broker."""

from __future__ import annotations

import itertools
import json
import time
import uuid
from collections import Counter, defaultdict

from kafka import KafkaAdminClient, KafkaConsumer

from producers.retail import RetailConfig, generate_retail
from tests.cli_helpers import run_cli
from tests.truth import parse_event


def _is_valid_event(value: bytes | None) -> bool:
    return parse_event(value) is not None


def test_same_seed_same_records_and_another_seed_differs():
    config = RetailConfig(events=2_000, seed=11, invalid_rate=0.05, duplicate_rate=0.05)
    first = list(generate_retail(config))
    again = list(generate_retail(config))
    other = list(generate_retail(RetailConfig(events=2_000, seed=12, invalid_rate=0.05, duplicate_rate=0.05)))
    assert first == again
    assert [r.value for r in first] != [r.value for r in other]
    assert len(first) == 2_000


def test_kinds_follow_the_requested_rates_and_are_what_they_claim():
    records = list(generate_retail(RetailConfig(events=20_000, seed=3, invalid_rate=0.05, duplicate_rate=0.1)))
    kinds = Counter(r.kind.split(":")[0] for r in records)
    assert 0.03 < kinds["invalid"] / len(records) < 0.07
    assert 0.07 < kinds["duplicate"] / len(records) < 0.13
    first_seen: dict[tuple[str, str], int] = {}
    for index, record in enumerate(records):
        valid = _is_valid_event(record.value)
        if record.kind.startswith("invalid"):
            assert not valid, record
            continue
        assert valid, record
        event_id = json.loads(record.value)["event_id"]
        if record.kind == "duplicate":
            assert (record.topic, event_id) in first_seen  # re-sends an earlier event
        else:
            assert (record.topic, event_id) not in first_seen  # fresh ids are unique
            first_seen[(record.topic, event_id)] = index
    assert len({r.kind for r in records if r.kind.startswith("invalid")}) >= 8  # many ways to be wrong


def test_stock_arrives_before_it_sells_and_popularity_is_skewed():
    records = list(generate_retail(RetailConfig(events=20_000, seed=5)))
    stock: dict[tuple[str, str], int] = defaultdict(int)
    sales_short = 0
    sold_per_item: Counter[str] = Counter()
    sales = 0
    for record in records:
        event = json.loads(record.value)
        key = (event["store_id"], event["item_id"])
        if record.topic == "shipments":
            stock[key] += event["quantity"]
        else:
            sales += 1
            stock[key] -= event["quantity"]
            sold_per_item[event["item_id"]] += event["quantity"]
            sales_short += stock[key] < 0
    assert sales > 10_000
    assert sales_short / sales < 0.1  # mostly restocked ahead of the sale
    ranked = [n for _, n in sold_per_item.most_common()]
    assert ranked[0] > 5 * ranked[len(ranked) // 2]


def test_some_event_times_arrive_out_of_order():
    records = list(generate_retail(RetailConfig(events=5_000, seed=9)))
    times = [json.loads(r.value)["event_time"] for r in records]
    backwards = sum(1 for a, b in itertools.pairwise(times) if b < a)
    assert 0 < backwards < len(times) * 0.5


def _read_topic(bootstrap: str, topic: str, expected: int) -> list[tuple[bytes | None, bytes | None]]:
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    out: list[tuple[bytes | None, bytes | None]] = []
    deadline = time.monotonic() + 60
    try:
        while len(out) < expected and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                out.extend((r.key, r.value) for r in batch)
    finally:
        consumer.close()
    return out


def test_produce_retail_creates_partitioned_topics_and_sends_exactly_the_generated_records(bootstrap_servers):
    suffix = uuid.uuid4().hex[:8]
    shipments, sales = f"ship-{suffix}", f"sale-{suffix}"
    result = run_cli(
        "produce", "retail", "--events", "3000", "--seed", "7", "--invalid-rate", "0.05",
        "--duplicate-rate", "0.05", "--bootstrap-servers", bootstrap_servers,
        "--shipments-topic", shipments, "--sales-topic", sales,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "3000 events produced" in result.stdout

    expected = list(
        generate_retail(
            RetailConfig(events=3000, seed=7, invalid_rate=0.05, duplicate_rate=0.05,
                         shipments_topic=shipments, sales_topic=sales)
        )
    )  # fmt: skip
    for topic in (shipments, sales):
        wanted = Counter((r.key, r.value) for r in expected if r.topic == topic)
        got = Counter(_read_topic(bootstrap_servers, topic, sum(wanted.values())))
        assert got == wanted
    admin = KafkaAdminClient(bootstrap_servers=bootstrap_servers)
    try:
        described = admin.describe_topics([shipments, sales])
    finally:
        admin.close()
    assert [len(t["partitions"]) for t in described] == [4, 4]


def test_produce_file_sends_one_record_per_line(bootstrap_servers, tmp_path):
    topic = f"lines-{uuid.uuid4().hex[:8]}"
    lines = ["the quick brown fox", '{"json": "line"}', "Ünïcode wörds", ""]
    path = tmp_path / "lines.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = run_cli("produce", "file", str(path), "--topic", topic, "--bootstrap-servers", bootstrap_servers)
    assert result.returncode == 0, result.stderr
    got = Counter(value for _, value in _read_topic(bootstrap_servers, topic, len(lines)))
    assert got == Counter(line.encode("utf-8") for line in lines)
