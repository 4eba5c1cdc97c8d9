"""Decoding and validation of shipments and sales (no broker: records built here)."""

from __future__ import annotations

import base64
import json
from datetime import datetime, timezone
from unittest import mock

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

from core.errors import ConfigError
from transforms.events import (
    DeadLetter,
    DecodeEvents,
    Sale,
    Shipment,
    dead_letter_to_kafka,
    dead_letter_to_row,
    decode_fields,
    event_payload,
    micros_to_datetime,
    parse_event,
    parse_rfc3339,
)
from transforms.kafka import KafkaRecord

GOOD = {
    "event_id": "e-1",
    "store_id": "store-1",
    "item_id": "item-9",
    "quantity": 3,
    "event_time": "2026-11-26T10:00:00Z",
}
# 2026-11-26T10:00:00Z by hand: 56 years incl. 14 leap days to 2026-01-01 (20_454 days)
# plus 329 days to 26 November, plus 10 h; also `date -u -d 2026-11-26T10:00:00Z +%s`.
T_2026_11_26_10 = (20_783 * 86_400 + 10 * 3_600) * 1_000_000


def record(value: bytes | None, offset: int = 7, topic: str = "sales") -> KafkaRecord:
    return KafkaRecord(topic=topic, partition=2, offset=offset, timestamp=0, key=None, value=value)


def encode(obj: object) -> bytes:
    return json.dumps(obj).encode()


def with_(**changes: object) -> bytes:
    body = dict(GOOD)
    for name, value in changes.items():
        if value is _DROP:
            del body[name]
        else:
            body[name] = value
    return encode(body)


_DROP = object()


def error_of(value: bytes | None) -> str:
    result = parse_event(record(value), "sale")
    assert isinstance(result, DeadLetter), f"expected a dead letter, got {result!r}"
    assert (result.source_topic, result.partition, result.offset) == ("sales", 2, 7)
    assert result.payload == (value or b"")
    return result.error


def test_good_sale_is_decoded_with_utc_micros_and_provenance() -> None:
    value = encode(GOOD)
    sale = parse_event(record(value), "sale")
    assert sale == Sale("e-1", "store-1", "item-9", 3, T_2026_11_26_10)
    assert isinstance(sale, Sale)
    assert (sale.source_topic, sale.partition, sale.offset, sale.payload) == ("sales", 2, 7, value)
    assert micros_to_datetime(sale.event_time) == datetime(2026, 11, 26, 10, tzinfo=timezone.utc)


def test_shipment_kind_gives_a_shipment() -> None:
    result = parse_event(record(encode(GOOD), topic="shipments"), "shipment")
    assert isinstance(result, Shipment)
    assert result.kind == "shipment"


def test_extra_fields_are_ignored_even_odd_ones() -> None:
    value = with_(note="hi", nested={"a": [1, 2.5, None]}, big=10**40, flag=True)
    assert parse_event(record(value), "sale") == Sale("e-1", "store-1", "item-9", 3, T_2026_11_26_10)


def test_offsets_are_converted_to_utc() -> None:
    plus = parse_event(record(with_(event_time="2026-11-26T11:30:00+01:30")), "sale")
    minus = parse_event(record(with_(event_time="2026-11-26T05:00:00.5-05:00")), "sale")
    assert isinstance(plus, Sale) and isinstance(minus, Sale)
    assert plus.event_time == T_2026_11_26_10
    assert minus.event_time == T_2026_11_26_10 + 500_000


def test_fraction_is_truncated_to_microseconds() -> None:
    assert parse_rfc3339("1970-01-01T00:00:00.123456789Z") == 123_456
    assert parse_rfc3339("1970-01-01t00:00:01z") == 1_000_000


def test_keep_payload_false_re_encodes_a_canonical_payload() -> None:
    sale = parse_event(record(with_(extra=1)), "sale", keep_payload=False)
    assert isinstance(sale, Sale) and sale.payload == b""
    assert json.loads(event_payload(sale)) == GOOD


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        (None, "null value"),
        (b"\xff\xfe{}", "invalid UTF-8 at byte 0"),
        (b'{"event_id": "\xc3"}', "invalid UTF-8 at byte 14"),
        (b"", "not JSON"),
        (b"{not json", "not JSON"),
        (b"[1, 2]", "not a JSON object: got array"),
        (b'"text"', "not a JSON object: got string"),
        (b"null", "not a JSON object: got null"),
        (b"42", "not a JSON object: got integer"),
        (b'{"quantity": NaN}', "NaN is not a JSON number"),
        (b'{"quantity": Infinity}', "Infinity is not a JSON number"),
        (b'{"quantity": -Infinity}', "-Infinity is not a JSON number"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'{"a": ' * 50_000 + b"1" + b"}" * 50_000, "nested too deeply"),
        (b'{"event_id": "a", "event_id": "b"}', "duplicate field 'event_id'"),
        # Repeated names a count of the text could miss: a repeat whose lost value
        # had a colon or a nested member, colons in names and values, escapes.
        (b'{"note": "a:b", "note": 1, "x": "c"}', "duplicate field 'note'"),
        (b'{"note": {"a": 1}, "note": 2}', "duplicate field 'note'"),
        (b'{"n:": 1, "n:": 2}', "duplicate field 'n:'"),
        (b'{"note": "\\u003a", "note": 1}', "duplicate field 'note'"),
        (b'{"a" : 1 , "a" :2}', "duplicate field 'a'"),
    ],
)
def test_undecodable_values_become_dead_letters(value: bytes | None, fragment: str) -> None:
    assert fragment in error_of(value)


@pytest.mark.parametrize("name", ["event_id", "store_id", "item_id"])
def test_string_fields_must_be_present_non_empty_strings(name: str) -> None:
    assert f"missing field {name!r}" in error_of(with_(**{name: _DROP}))
    assert f"field {name!r} must not be empty" in error_of(with_(**{name: ""}))
    assert f"field {name!r} must be a string, got integer" in error_of(with_(**{name: 5}))
    assert f"field {name!r} must be a string, got null" in error_of(with_(**{name: None}))


def test_colons_in_names_and_values_are_not_taken_for_repeated_names() -> None:
    value = encode({**GOOD, "a:b": "c:d:e", "note": "x"})
    assert isinstance(parse_event(record(value), "sale"), Sale)


def decoded_without_shortcut(value: bytes | None) -> object:
    """decode_fields with both orjson shortcuts switched off: the strict decoder reads every value."""
    with (
        mock.patch("transforms.events._usual_fields", return_value=None),
        mock.patch("transforms.events._flat_object", return_value=None),
    ):
        return decode_fields(value)


_USUAL = b'"store_id":"s","item_id":"i","quantity":1,"event_time":"2026-11-26T10:00:00Z"'


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        # Repeated names next to escapes (an escaped quote is one more quote in the
        # text; an escaped colon one more colon after decoding), and a lost integer.
        (b'{"event_id":"a\\u003ab","store_id":"x",' + _USUAL + b"}", "duplicate field 'store_id'"),
        (b'{"event_id":"a\\"b","event_id":"c",' + _USUAL + b"}", "duplicate field 'event_id'"),
        (b'{"event_id":"\\u0022","quantity":2,' + _USUAL + b"}", "duplicate field 'quantity'"),
        (b'{"event_id":"a:b","event_id":"c",' + _USUAL + b"}", "duplicate field 'event_id'"),
        (b'{"event_id":"e",' + _USUAL.replace(b":1,", b":18446744073709551616,") + b"}", "quantity out of range"),
        (b'{"event_id":"e",' + _USUAL.replace(b":1,", b":9223372036854775808,") + b"}", "quantity out of range"),
        (b'\xef\xbb\xbf{"event_id":"e",' + _USUAL + b"}", "byte order mark"),
        (b'{"event_id":"e",' + _USUAL.replace(b"Z", b"+00:60") + b"}", "offset out of range"),
        (b'{"event_id":"e",' + _USUAL.replace(b"10:00:00", b"23:59:60") + b"}", "leap seconds"),
        (b'{"event_id":"e",' + _USUAL.replace(b"11-26", b"02-30") + b"}", "day is out of range"),
    ],
)
def test_usual_looking_events_that_break_a_rule_are_refused(value: bytes, fragment: str) -> None:
    assert fragment in error_of(value)


@pytest.mark.parametrize(
    "value",
    [
        b'{"event_id":"e",' + _USUAL + b"}",
        b'{"event_id":"a:b",' + _USUAL + b"}",
        b'{"event_id":"e\\u00e9",' + _USUAL + b"}",
        b'{"event_id":"a\\"b",' + _USUAL + b"}",
        b'{"event_id":"\\u0022",' + _USUAL + b', "n": 1.5, "t": true}',
        '{"event_id":"\u00e9\u4e2d",'.encode() + _USUAL + b"}",
        b'{"event_id":"e",' + _USUAL.replace(b"Z", b".1234567-05:30").replace(b"T", b"t") + b"}",
        b' {"event_id":"e",' + _USUAL + b', "note": null}\n',
        b'{"event_id":"e",' + _USUAL.replace(b":1,", b":9223372036854775807,") + b"}",
    ],
)
def test_usual_event_shortcut_returns_what_the_full_check_returns(value: bytes) -> None:
    fields = decode_fields(value)
    assert not isinstance(fields, str), fields
    assert fields == decoded_without_shortcut(value)


def test_lone_surrogate_escape_is_refused() -> None:
    value = encode(GOOD).replace(b'"e-1"', b'"e-\\ud800"')
    assert "lone surrogate" in error_of(value)


@pytest.mark.parametrize(
    ("quantity", "fragment"),
    [
        (_DROP, "missing field 'quantity'"),
        (0, "quantity must be > 0, got 0"),
        (-4, "quantity must be > 0, got -4"),
        (2.5, "must be a JSON integer, got number"),
        (2.0, "must be a JSON integer, got number"),
        ("2", "must be a JSON integer, got string"),
        (True, "must be a JSON integer, got boolean"),
        (None, "must be a JSON integer, got null"),
        ([2], "must be a JSON integer, got array"),
        (2**63, "quantity out of range"),
        (10**25, "quantity out of range"),
    ],
)
def test_quantity_must_be_a_positive_json_integer(quantity: object, fragment: str) -> None:
    assert fragment in error_of(with_(quantity=quantity))


def test_quantity_with_exponent_or_many_digits_is_refused() -> None:
    assert "must be a JSON integer" in error_of(encode(GOOD).replace(b'"quantity": 3', b'"quantity": 3e0'))
    huge = encode(GOOD).replace(b'"quantity": 3', b'"quantity": ' + b"9" * 100_000)
    assert "quantity out of range" in error_of(huge)


def test_largest_quantity_is_accepted() -> None:
    result = parse_event(record(with_(quantity=2**63 - 1)), "sale")
    assert isinstance(result, Sale) and result.quantity == 2**63 - 1


@pytest.mark.parametrize(
    "when",
    [
        "2026-11-26T10:00:00",  # no offset
        "2026-11-26 10:00:00Z",  # space instead of T
        "2026-11-26",  # date only
        "2026-11-26T10:00Z",  # no seconds
        "2026-11-26T10:00:00+0100",  # offset without colon
        "2026-W48-4T10:00:00Z",  # ISO week date
        "2026-02-30T10:00:00Z",  # no such day
        "2026-11-26T24:00:00Z",  # hour 24
        "2026-11-26T10:00:60Z",  # leap second
        "2026-11-26T10:00:00+24:00",  # offset out of range
        "0001-01-01T00:00:00+01:00",  # before year 1 in UTC
        "\uff12\uff10\uff12\uff16-11-26T10:00:00Z",  # full-width digits
        "",
    ],
)
def test_event_time_must_be_rfc3339_with_offset(when: str) -> None:
    assert "event_time" in error_of(with_(event_time=when))


def test_event_time_must_be_a_string() -> None:
    assert "field 'event_time' must be a string, got integer" in error_of(with_(event_time=1764151200))
    assert "missing field 'event_time'" in error_of(with_(event_time=_DROP))


def test_dead_letter_row_and_kafka_pair() -> None:
    dead = DeadLetter("sales", 3, 41, "not JSON: oops", b"\xff\x00raw")
    assert dead_letter_to_row(dead) == {
        "source_topic": "sales",
        "partition": 3,
        "offset": 41,
        "error": "not JSON: oops",
        "payload": b"\xff\x00raw",
    }
    key, value = dead_letter_to_kafka(dead)
    assert key == b"sales:3:41"
    body = json.loads(value)
    assert base64.b64decode(body["payload"], validate=True) == b"\xff\x00raw"
    assert (body["source_topic"], body["partition"], body["offset"], body["error"]) == (
        "sales",
        3,
        41,
        "not JSON: oops",
    )


def test_decoded_events_of_windowed_records_go_to_their_event_time_windows() -> None:
    # Global-window input takes a shortcut (ready WindowedValues); any other
    # windowing still assigns each event to the windows of its event time.
    early = record(with_(event_id="e-1", event_time="2026-11-26T10:59:59Z"), offset=1)
    late = record(with_(event_id="e-2", event_time="2026-11-26T11:00:00Z"), offset=2)

    def window_start(event, w=beam.DoFn.WindowParam):
        yield (event.event_id, w.start.micros)

    with BeamTestPipeline(runner="FnApiRunner") as p:
        records = p | beam.Create([early, late]) | beam.WindowInto(beam.window.FixedWindows(3600))
        events, _ = records | DecodeEvents("sale")
        assert_that(
            events | beam.ParDo(window_start),
            equal_to([("e-1", T_2026_11_26_10), ("e-2", T_2026_11_26_10 + 3_600_000_000)]),
        )


def test_decode_events_pipeline_splits_events_and_dead_letters() -> None:
    good = record(encode(GOOD), offset=1)
    also_good = record(with_(event_id="e-2", event_time="2026-11-26T10:00:01Z"), offset=2)
    bad = record(b"\xff", offset=3)
    tombstone = record(None, offset=4)

    def timestamped(event, ts=beam.DoFn.TimestampParam):
        yield (event.event_id, ts.micros)

    with BeamTestPipeline(runner="FnApiRunner") as p:
        events, dead = p | beam.Create([good, also_good, bad, tombstone]) | DecodeEvents("sale")
        assert_that(
            events | beam.ParDo(timestamped),
            equal_to([("e-1", T_2026_11_26_10), ("e-2", T_2026_11_26_10 + 1_000_000)]),
            label="EventsAtEventTime",
        )
        assert_that(
            dead | beam.Map(lambda d: (d.offset, d.error.split(" at ")[0].split(" (")[0], d.payload)),
            equal_to([(3, "invalid UTF-8", b"\xff"), (4, "null value", b"")]),
            label="DeadLetters",
        )


def test_decode_events_rejects_unknown_kind() -> None:
    with pytest.raises(ConfigError, match="kind"):
        DecodeEvents("refund")  # type: ignore[arg-type]
