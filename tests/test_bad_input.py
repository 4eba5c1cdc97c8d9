"""Bad input, generated with hypothesis: every record is applied or a dead letter with a reason.

Two tiers:

* pure: for any generated record value, :func:`transforms.events.parse_event`
  returns the event the contract describes or a :class:`DeadLetter` with a reason,
  and never raises. The contract is checked independently, with the recompute in
  :mod:`tests.truth` (written from DESIGN.md, no Beamline code);
* end to end (slow): a few hundred generated records, valid and broken, through
  ``beamline run inventory --mode batch``; every produced record is accounted for
  (applied, duplicate or dead letter) and the views equal the recompute.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from kafka import KafkaProducer

from readside.query import run_query
from tests.cli_helpers import run_cli
from tests.e2e_helpers import RetailLog, describe_diff, expected_views, views
from tests.test_events import decoded_without_shortcut
from tests.truth import parse_event as contract_event
from tests.truth import read_topic, recompute_retail
from transforms.events import DeadLetter, Sale, Shipment, decode_fields, parse_event
from transforms.kafka import KafkaRecord

FIELDS = ("event_id", "store_id", "item_id", "quantity", "event_time")
STRING_FIELDS = ("event_id", "store_id", "item_id")
INT64_MAX = 2**63 - 1
MIB = 1 << 20
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

# -- generated record values -------------------------------------------------------

# Field text: any Unicode hypothesis draws (it leaves out lone surrogates).
_text = st.text(min_size=1, max_size=12)
_offsets = st.one_of(
    st.sampled_from(["Z", "z", "+00:00", "-00:00", "+05:30", "-23:59", "+23:59"]),
    st.builds(
        lambda sign, h, m: f"{sign}{h:02d}:{m:02d}", st.sampled_from("+-"), st.integers(0, 23), st.integers(0, 59)
    ),
)
_fractions = st.sampled_from(["", ".5", ".123456", ".123456789", ".000001"])


def _rfc3339(moment: datetime, fraction: str, offset: str, sep: str = "T") -> str:
    # Zero-padded by hand: strftime does not pad years before 1000.
    return (
        f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}{sep}"
        f"{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}{fraction}{offset}"
    )


def _times(latest: datetime) -> st.SearchStrategy[str]:
    """Well-formed RFC 3339 times with an offset, up to ``latest`` (local time)."""
    return st.builds(_rfc3339, st.datetimes(max_value=latest), _fractions, _offsets)


_BAD_TIMES = st.one_of(
    st.builds(_rfc3339, st.datetimes(), _fractions, st.just("")),  # no offset
    st.builds(_rfc3339, st.datetimes(), _fractions, _offsets, st.sampled_from([" ", "_", ""])),
    st.sampled_from(
        [
            "2026-11-26",
            "10:00:00Z",
            "2026-11-26T10:00Z",
            "2026-11-26T10:00:00+0100",
            "2026-11-26T10:00:00+24:00",
            "2016-12-31T23:59:60Z",  # leap second
            "2026-02-30T10:00:00Z",
            "0000-01-01T00:00:00Z",
            "0001-01-01T00:00:00+00:01",  # before year 1 once in UTC
            "9999-12-31T23:59:59-00:01",  # after year 9999 once in UTC
            "+12026-11-26T10:00:00Z",
            "\uff12026-11-26T10:00:00Z",  # full-width digit 2
            "1764151200",
            "",
        ]
    ),
)

_json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=8)
)
_json_values = st.recursive(
    _json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=5), inner, max_size=4)),
    max_leaves=12,
)
_BAD_QUANTITIES = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(max_value=0),
    st.integers(min_value=INT64_MAX + 1),
    st.integers(1, 100).map(float),  # 3.0 is a number with a fraction, not an integer
    st.integers(1, 100).map(str),
    st.booleans(),
    st.none(),
    st.lists(st.integers(1, 5), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


def _objects(latest: datetime, max_quantity: int) -> st.SearchStrategy[dict]:
    return st.fixed_dictionaries(
        {
            "event_id": _text,
            "store_id": _text,
            "item_id": _text,
            "quantity": st.integers(1, max_quantity),
            "event_time": _times(latest),
        },
        optional={"note": _json_values, "event_type": st.sampled_from(["shipment", "sale", "refund"])},
    )


def _dumps(obj: object, ascii_only: bool) -> bytes:
    return json.dumps(obj, ensure_ascii=ascii_only).encode("utf-8")


def _replace_field(obj: dict, name: str, value: object) -> dict:
    return {**obj, name: value}


def _drop_field(obj: dict, name: str) -> dict:
    return {key: value for key, value in obj.items() if key != name}


def _raw_field(obj: dict, name: str, raw: str) -> bytes:
    """``obj`` as JSON with field ``name`` set to raw JSON text (NaN, 10**5000, [[[...]]])."""
    body = json.dumps(_drop_field(obj, name))
    return (body[:-1] + (", " if len(body) > 2 else "") + f'"{name}": {raw}}}').encode()


def _corrupt_utf8(payload: bytes, at: int, junk: bytes) -> bytes:
    cut = at % (len(payload) + 1)
    return payload[:cut] + junk + payload[cut:]


def payloads(
    latest: datetime = datetime.max, max_quantity: int = INT64_MAX, big: bool = True
) -> st.SearchStrategy[bytes | None]:
    """Record values: valid events and every kind of broken one the contract names.

    ``latest`` and ``max_quantity`` bound the *valid* events (the xfail test
    below says why the end-to-end run needs the second); ``big`` adds ~1 MiB values.
    """
    objects = _objects(latest, max_quantity)
    ascii_only = st.booleans()
    raw_values = st.one_of(
        st.sampled_from(["NaN", "Infinity", "-Infinity", "1e400", "-0", "1.0", "0x10", "01", "1_000"]),
        st.integers(20, 5000).map(lambda n: "9" * n),  # huge integer literals
        st.sampled_from([10, 1000, 50_000]).map(lambda depth: "[" * depth + "]" * depth),  # deep nesting
        st.sampled_from([10, 1000, 50_000]).map(lambda depth: '{"a":' * depth + "1" + "}" * depth),
        st.sampled_from(['"\\ud800"', '"a\\udfff"', '"\\u0000"', '"\\ud83d\\ude00"']),  # escapes, lone surrogates
    )
    strategies: list[st.SearchStrategy[bytes | None]] = [
        st.builds(_dumps, objects, ascii_only),  # valid (unless the time shifts out of range)
        st.builds(_dumps, objects, ascii_only),
        st.none(),  # null value (tombstone)
        st.binary(max_size=64),  # not JSON, or not UTF-8
        st.text(max_size=64).map(str.encode),
        st.builds(_dumps, _json_values.filter(lambda v: not isinstance(v, dict)), ascii_only),  # not an object
        st.builds(
            lambda obj, name, value, a: _dumps(_replace_field(obj, name, value), a),
            objects,
            st.just("quantity"),
            _BAD_QUANTITIES,
            ascii_only,
        ),
        st.builds(
            lambda obj, name, value, a: _dumps(_replace_field(obj, name, value), a),
            objects,
            st.sampled_from(FIELDS),
            st.one_of(_json_values, st.just("")),  # wrong types, empty strings
            ascii_only,
        ),
        st.builds(lambda obj, name, a: _dumps(_drop_field(obj, name), a), objects, st.sampled_from(FIELDS), ascii_only),
        st.builds(lambda obj, t, a: _dumps(_replace_field(obj, "event_time", t), a), objects, _BAD_TIMES, ascii_only),
        st.builds(_raw_field, objects, st.sampled_from([*FIELDS, "extra"]), raw_values),
        st.builds(  # a name twice: RFC 8259 leaves the winner undefined
            lambda obj, name: _raw_field(obj, "extra", "1")[:-1] + f', "{name}": {json.dumps(obj[name])}}}'.encode(),
            objects,
            st.sampled_from(FIELDS),
        ),
        st.builds(
            _corrupt_utf8,
            st.builds(_dumps, objects, st.just(False)),
            st.integers(0, 200),
            st.sampled_from([b"\xff", b"\xc3\x28", b"\xe2\x82", b"\xed\xa0\x80", b"\xc0\xaf", b"\xf4\x90\x80\x80"]),
        ),
    ]
    if big:
        strategies.append(
            st.builds(  # ~1 MiB: a valid event with a large ignored field, or broken at the end
                lambda obj, broken: _dumps({**obj, "pad": "x" * MIB}, True)[: MIB if broken else None],
                objects,
                st.booleans(),
            )
        )
    return st.one_of(strategies)


# -- the contract, checked without Beamline code ------------------------------------


def _micros(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(microseconds=1)


def _record(value: bytes | None, offset: int = 7) -> KafkaRecord:
    return KafkaRecord("events-topic", 3, offset, 1_764_151_200_000, None, value)


def check_against_contract(value: bytes | None, kind: str) -> Shipment | Sale | DeadLetter:
    record = _record(value)
    result = parse_event(record, kind)  # must not raise, whatever the value
    expected = contract_event(value)
    if expected is None:
        assert isinstance(result, DeadLetter), f"accepted a record the contract rejects: {value!r:.300}"
        assert result.error.strip(), "a dead letter without a reason"
        assert (result.source_topic, result.partition, result.offset) == ("events-topic", 3, 7)
        assert result.payload == (value or b"")
        return result
    assert not isinstance(result, DeadLetter), f"rejected a valid record ({result.error}): {value!r:.300}"
    assert type(result) is (Sale if kind == "sale" else Shipment)
    got = (result.event_id, result.store_id, result.item_id, result.quantity, result.event_time)
    want = (expected["event_id"], expected["store_id"], expected["item_id"], expected["quantity"])
    assert got == (*want, _micros(expected["_time"]))
    assert type(result.quantity) is int and 0 < result.quantity <= INT64_MAX
    assert all(isinstance(text, str) and text for text in got[:3])
    assert (result.source_topic, result.partition, result.offset, result.payload) == ("events-topic", 3, 7, value)
    return result


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(value=payloads(), kind=st.sampled_from(["shipment", "sale"]))
def test_every_record_is_an_event_or_a_dead_letter_with_a_reason(value: bytes | None, kind: str):
    check_against_contract(value, kind)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(value=payloads())
def test_usual_event_shortcut_agrees_with_the_full_check(value: bytes | None):
    # Same fields, or the same error: the shortcut may only ever step aside.
    assert decode_fields(value) == decoded_without_shortcut(value)


def _raw(quantity: str = "1", time: str = "2026-11-26T10:00:00Z", event_id: str = '"e"', tail: str = "") -> bytes:
    """A record value written by hand, field text as given (so it may be invalid JSON)."""
    body = f'{{"event_id":{event_id},"store_id":"s","item_id":"i","quantity":{quantity},"event_time":"{time}"{tail}}}'
    return body.encode()


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        (_raw(), True),
        (_raw(quantity="true"), False),
        (_raw(quantity="2.0"), False),
        (_raw(quantity='"2"'), False),
        (_raw(quantity=str(INT64_MAX)), True),
        (_raw(quantity=str(INT64_MAX + 1)), False),  # views store 64-bit integers
        (_raw(time="2026-11-26T10:00:00"), False),  # no offset
        (_raw(time="2026-11-26 10:00:00Z"), False),  # RFC 3339's grammar has "T"
        (_raw(time="2026-11-26t10:00:00.123456789z"), True),
        (_raw(time="9999-12-31T23:59:59-01:00"), False),  # after 9999 in UTC
        (_raw(time="0001-01-01T00:00:00Z"), True),
        (_raw(event_id='""'), False),
        (_raw(event_id='"\\ud800"'), False),  # a lone surrogate: no UTF-8 for it
        (_raw(tail=',"x":NaN'), False),  # not JSON
        (_raw(tail=',"quantity":2'), False),  # a name twice
        (_raw(tail=',"x":' + "9" * 5000), True),  # huge, but in an ignored field
        (_raw(event_id="9" * 25), False),  # a (long) number is not a string
        (b"[" * 100_000 + b"]" * 100_000, False),
        (None, False),
        (b"\xff", False),
    ],
)
def test_edge_cases_where_a_reading_of_the_contract_could_differ(value: bytes | None, valid: bool):
    """The cases the product and the recompute once disagreed on, pinned both ways."""
    assert (contract_event(value) is not None) is valid
    result = check_against_contract(value, "sale")
    assert isinstance(result, DeadLetter) is not valid


# -- valid events at the edges: they must not stop a pipeline ----------------------------


def _run_batch_inventory(warehouse: Path, shipments: list[bytes], sales: list[bytes]) -> None:
    """The inventory pipeline's transforms and sinks in batch mode, on records given in memory."""
    import apache_beam as beam
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    from transforms.backfill import BackfillRetail
    from transforms.events import dead_letter_to_row
    from transforms.sinks import WriteToWarehouse

    def records(topic: str, values: list[bytes]) -> list[KafkaRecord]:
        return [KafkaRecord(topic, 0, offset, 0, None, value) for offset, value in enumerate(values)]

    with beam.Pipeline(runner=FnApiRunner()) as pipeline:
        ships = pipeline | "Ships" >> beam.Create(records("ships", shipments))
        sold = pipeline | "Sales" >> beam.Create(records("sales", sales))
        views = (ships, sold) | BackfillRetail()
        _ = views.inventory | "WriteInventory" >> WriteToWarehouse(str(warehouse), "inventory")
        _ = views.windows | "WriteWindows" >> WriteToWarehouse(str(warehouse), "sales_by_window")
        _ = (
            views.dead_letters
            | beam.Map(dead_letter_to_row)
            | "WriteDeadLetters" >> WriteToWarehouse(str(warehouse), "dead_letters")
        )


def _event(event_id: str, quantity: int, event_time: str) -> bytes:
    body = {"event_id": event_id, "store_id": "s", "item_id": "i", "quantity": quantity, "event_time": event_time}
    return json.dumps(body).encode()


def test_a_valid_sale_in_the_last_hour_of_year_9999_does_not_stop_the_pipeline(tmp_path: Path):
    _run_batch_inventory(tmp_path, [], [_event("late", 1, "9999-12-31T23:30:00Z")])
    (row,) = run_query("SELECT * FROM sales_by_window", tmp_path).to_pylist()
    # The window's end (year 10000) cannot be represented: it ends at the last instant that can.
    assert row["window_start"] == datetime(9999, 12, 31, 23, tzinfo=timezone.utc)
    assert row["window_end"] == datetime.max.replace(tzinfo=timezone.utc)
    assert row["units"] == 1


def test_totals_past_int64_do_not_stop_the_pipeline(tmp_path: Path):
    shipments = [_event("a", INT64_MAX, "2026-11-26T10:00:00Z"), _event("b", 1, "2026-11-26T10:00:00Z")]
    sales = [_event("c", INT64_MAX, "2026-11-26T10:00:00Z"), _event("d", 2, "2026-11-26T10:30:00Z")]
    _run_batch_inventory(tmp_path, shipments, sales)
    (row,) = run_query("SELECT * FROM inventory", tmp_path).to_pylist()
    assert (row["shipped"], row["sold"], row["on_hand"], row["events"]) == (INT64_MAX, INT64_MAX, 0, 2)
    (window,) = run_query("SELECT * FROM sales_by_window", tmp_path).to_pylist()
    assert window["units"] == INT64_MAX
    dead = run_query('SELECT source_topic, "offset", error, payload FROM dead_letters ORDER BY 1', tmp_path).to_pylist()
    assert [(d["source_topic"], d["offset"], d["payload"]) for d in dead] == [
        ("sales", 1, sales[1]),
        ("ships", 1, shipments[1]),
    ]
    assert all(d["error"].startswith("quantity would overflow") for d in dead)
    truth = recompute_retail(
        [("ships", 0, n, v) for n, v in enumerate(shipments)], [("sales", 0, n, v) for n, v in enumerate(sales)]
    )
    assert truth.refused == {("ships", 0, 1): "overflow", ("sales", 0, 1): "overflow"}


def test_an_event_id_reused_for_another_item_is_another_event_in_a_backfill(tmp_path: Path):
    first = _event("e1", 5, "2026-11-26T10:00:00Z")
    again = first.replace(b'"item_id": "i"', b'"item_id": "j"')  # same event_id, same topic, other item
    _run_batch_inventory(tmp_path, [first, again], [])
    shipped = {
        (r["store_id"], r["item_id"]): r["shipped"] for r in run_query("SELECT * FROM inventory", tmp_path).to_pylist()
    }
    expected = recompute_retail([("t", 0, 0, first), ("t", 0, 1, again)], [])
    assert shipped == {key: row["shipped"] for key, row in expected.inventory.items()} == {("s", "i"): 5, ("s", "j"): 5}


# -- end to end -----------------------------------------------------------------------

E2E_RECORDS = 300
# Valid events stay clear of totals near int64, so that this test checks accounting of bad records.
E2E_MAX_QUANTITY = 1_000_000


def _generated_values(count: int) -> list[bytes | None]:
    """``count`` values drawn by hypothesis (derandomized: the same list every run)."""
    drawn: list[bytes | None] = []

    @settings(max_examples=count, phases=[Phase.generate], database=None, derandomize=True, deadline=None)
    @given(payloads(datetime.max, E2E_MAX_QUANTITY, big=False))
    def collect(value: bytes | None) -> None:
        drawn.append(value)

    collect()
    return drawn


@pytest.mark.slow
def test_bad_input_end_to_end_every_record_is_accounted_for(
    bootstrap_servers: str, make_topic: Callable[..., str], tmp_path: Path
):
    log = RetailLog(bootstrap_servers, make_topic, tmp_path / "warehouse")
    values = _generated_values(E2E_RECORDS)
    # Null keys, and keys no pipeline relies on (kafka-python will not send a null key with a null value).
    sends = [
        (log.sales if index % 2 else log.shipments, None if index % 3 and value is not None else b"k", value)
        for index, value in enumerate(values)
    ]
    # How many drawn values are valid shifts with hypothesis's draws (which also
    # take constants from the project's own source): these valid events do not.
    sends += [
        (log.sales if index % 2 else log.shipments, b"s:i", _event(f"sure-{index}", 1 + index, "2026-11-26T10:00:00Z"))
        for index in range(24)
    ]
    valid = _event("big-valid", 5, "2026-11-26T10:00:00Z")
    sends += [
        (log.shipments, None, valid[:-1] + b', "pad": "' + b"x" * MIB + b'"}'),  # 1 MiB, valid
        (log.sales, b"k", b"{" + b"x" * MIB),  # 1 MiB, not JSON
        (log.sales, b"s:i", None),  # a null value (tombstone)
        (log.sales, b"s:i", valid),
        (log.sales, b"s:i", valid),  # a duplicate
    ]
    producer = KafkaProducer(bootstrap_servers=bootstrap_servers, max_request_size=4 * MIB, linger_ms=20)
    try:
        for index, (topic, key, value) in enumerate(sends):
            producer.send(topic, key=key, value=value, partition=index % 4)
        producer.flush(timeout=60)
    finally:
        producer.close()

    result = run_cli(*log.run_args("batch"), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]

    shipments, sales = read_topic(bootstrap_servers, log.shipments), read_topic(bootstrap_servers, log.sales)
    truth = log.truth()
    produced = {(topic, partition, offset) for topic, partition, offset, _ in shipments + sales}
    assert len(produced) == len(sends)
    # The log holds what this test is about: plenty of both, a tombstone, a duplicate.
    assert truth.applied > 20 and len(truth.dead_letters) > 100 and truth.duplicates >= 1
    assert any(value is None for _, _, _, value in shipments + sales)
    got = views(log.warehouse)
    assert truth.applied + truth.duplicates + len(got["dead"]) == len(produced)
    assert got["dead"] <= produced
    for name, want in expected_views(truth).items():
        assert got[name] == want, f"view {name}: {describe_diff(got[name], want)}"
    assert sum(row[3] for row in got["inventory"].values()) == truth.applied
    # The dead-letters topic names the same records, each with a reason.
    letters = [json.loads(value) for _, _, _, value in read_topic(bootstrap_servers, log.dead_letters)]
    assert {(d["source_topic"], d["partition"], d["offset"]) for d in letters} == truth.dead_letters
    assert all(d["error"].strip() for d in letters)
