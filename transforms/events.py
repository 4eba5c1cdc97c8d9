"""Event types, their validation, and the dead letters that invalid records become.

A shipment or sale is one UTF-8 JSON object per Kafka record (see the contract in
DESIGN.md). :func:`parse_event` checks one record and returns either the event or a
:class:`DeadLetter`; it never raises, because one bad record must not stop a
pipeline. :class:`DecodeEvents` wraps it as a PTransform with a tagged dead-letter
output.

Time: ``event_time`` is kept as integer microseconds since the Unix epoch (UTC).
That is exactly the resolution of a Beam timestamp, compares and hashes cheaply, and
has no timezone to get wrong; :func:`micros_to_datetime` turns it into an aware UTC
datetime for rows.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Literal, TypeAlias

import apache_beam as beam
import orjson
from apache_beam.transforms.window import GlobalWindows, TimestampedValue
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import WindowedValue

from core.errors import ConfigError
from transforms.kafka import GLOBAL_WINDOWS, KafkaRecord

__all__ = [
    "DEAD_LETTERS_TAG",
    "EVENTS_TAG",
    "MAX_MICROS",
    "MAX_QUANTITY",
    "NO_TIME",
    "DeadLetter",
    "DecodeEvents",
    "Event",
    "EventFields",
    "EventKind",
    "Sale",
    "Shipment",
    "dead_letter_to_kafka",
    "dead_letter_to_row",
    "decode_fields",
    "duration_micros",
    "event_payload",
    "event_time_of",
    "micros_to_datetime",
    "parse_event",
    "parse_rfc3339",
]

EVENTS_TAG = "events"
DEAD_LETTERS_TAG = "dead_letters"

# Quantities must fit a signed 64-bit column in the warehouse.
MAX_QUANTITY = 2**63 - 1
# Integer literals longer than this are not converted at all: int() on a
# 100k-digit string is slow, and no valid quantity is that long.
_MAX_INT_DIGITS = 20

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_EPOCH_NAIVE = datetime(1970, 1, 1)
# The range of an aware UTC datetime, in epoch micros.
_MIN_MICROS = -62_135_596_800_000_000
MAX_MICROS = 253_402_300_799_999_999
# "No time yet": below every event time, in the same epoch microseconds.
NO_TIME = -(2**63)

EventKind: TypeAlias = Literal["shipment", "sale"]


@dataclass(frozen=True)
class _EventFields:
    """Fields shared by every retail event.

    The provenance fields (``source_topic``, ``partition``, ``offset``, ``payload``)
    say where the event was read; they take no part in equality, so two reads of
    the same event compare equal.
    """

    event_id: str
    store_id: str
    item_id: str
    quantity: int
    event_time: int  # microseconds since the epoch, UTC
    source_topic: str = field(default="", compare=False)
    partition: int = field(default=-1, compare=False)
    offset: int = field(default=-1, compare=False)
    payload: bytes = field(default=b"", compare=False, repr=False)

    @property
    def key(self) -> tuple[str, str]:
        """The (store_id, item_id) key of the views this event updates."""
        return (self.store_id, self.item_id)


@dataclass(frozen=True)
class Shipment(_EventFields):
    """Stock arriving at a store: adds ``quantity`` to on_hand."""

    kind: EventKind = field(default="shipment", init=False, repr=False, compare=False)


@dataclass(frozen=True)
class Sale(_EventFields):
    """Stock leaving a store: subtracts ``quantity`` from on_hand."""

    kind: EventKind = field(default="sale", init=False, repr=False, compare=False)


Event: TypeAlias = Shipment | Sale
# What a valid value holds: event_id, store_id, item_id, quantity, event_time (epoch micros).
EventFields: TypeAlias = tuple[str, str, str, int, int]
_EVENT_TYPES: dict[str, type[Shipment] | type[Sale]] = {"shipment": Shipment, "sale": Sale}


@dataclass(frozen=True)
class DeadLetter:
    """A record that could not be applied, with where it came from and why.

    ``payload`` is the raw record value (``b""`` for a null value; the error says
    so). Dead letters are data: they go to the ``dead-letters`` topic and the
    ``dead_letters`` view.
    """

    source_topic: str
    partition: int
    offset: int
    error: str
    payload: bytes


class _Invalid(ValueError):
    """Internal: a record breaks the contract; the message becomes the error."""


class _HugeInt(str):
    """An integer literal too long to convert; kept as its text, never used."""


def _parse_int(text: str) -> int | _HugeInt:
    return _HugeInt(text) if len(text.lstrip("-")) > _MAX_INT_DIGITS else int(text)


def _reject_constant(name: str) -> Any:
    raise _Invalid(f"not JSON: {name} is not a JSON number")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # RFC 8259 leaves duplicate names undefined; readers disagree on which wins.
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for name, _ in pairs:
            if name in seen:
                raise _Invalid(f"duplicate field {name!r} in JSON object")
            seen.add(name)
    return obj


_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(\.\d+)?(?:([Zz])|([+-])(\d{2}):(\d{2}))",
    re.ASCII,
)


# The usual shape, offset in range, without groups: cheaper to match than _RFC3339.
_RFC3339_USUAL = re.compile(
    r"\d{4}-\d\d-\d\d[Tt]\d\d:\d\d:\d\d(?:\.\d+)?(?:[Zz]|[+-](?:[01]\d|2[0-3]):[0-5]\d)",
    re.ASCII,
)


def parse_rfc3339(text: str) -> int:
    """Parse an RFC 3339 date-time that carries an offset; return UTC epoch micros.

    Stricter than ``datetime.fromisoformat``: the offset is required (a time
    without one is ambiguous), and only the RFC 3339 profile is accepted.
    Fractions finer than a microsecond are truncated. Raises ValueError. Plain
    integer arithmetic on the offset (no timezone objects): this runs once per
    event of a backfill.
    """
    if _RFC3339_USUAL.fullmatch(text):
        # The common case, in C; what it refuses (a leap second, a day that does
        # not exist, a lower-case T or Z) gets the exact parse, which words the error.
        try:
            delta = datetime.fromisoformat(text) - _EPOCH
        except ValueError:
            pass
        else:
            micros = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
            if _MIN_MICROS <= micros <= MAX_MICROS:
                return micros
    return _parse_rfc3339_exact(text)


def _parse_rfc3339_exact(text: str) -> int:
    m = _RFC3339.fullmatch(text)
    if not m:
        raise ValueError(f"event_time {text!r} is not RFC 3339 with an offset (e.g. 2026-11-26T10:00:00Z)")
    year, month, day, hour, minute, second, fraction, zulu, sign, off_h, off_m = m.groups()
    if second == "60":
        raise ValueError(f"event_time {text!r}: leap seconds are not supported")
    if sign and (off_h > "23" or off_m > "59"):  # two ASCII digits each: string order is number order
        raise ValueError(f"event_time {text!r}: offset out of range")
    try:
        local = datetime(int(year), int(month), int(day), int(hour), int(minute), int(second))
    except ValueError as exc:
        raise ValueError(f"event_time {text!r}: {exc}") from None
    delta = local - _EPOCH_NAIVE
    micros = (delta.days * 86_400 + delta.seconds) * 1_000_000
    if fraction:
        micros += int(fraction[1:7].ljust(6, "0"))
    if zulu:
        return micros
    shift = (int(off_h) * 3600 + int(off_m) * 60) * 1_000_000
    micros += -shift if sign == "+" else shift
    if not _MIN_MICROS <= micros <= MAX_MICROS:
        raise ValueError(f"event_time {text!r}: date value out of range in UTC")
    return micros


def duration_micros(delta: timedelta) -> int:
    """A duration in whole microseconds, exactly (no float on the way)."""
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def micros_to_datetime(micros: int) -> datetime:
    """Epoch microseconds to an aware UTC datetime (the type rows carry).

    Only a window's end can lie past the last representable instant (the hour
    after 9999-12-31T23:00Z); it is clamped to that instant rather than failing.
    """
    return _EPOCH + timedelta(microseconds=min(micros, MAX_MICROS))


def _string_field(obj: dict[str, Any], name: str) -> str:
    value = obj.get(name)
    if type(value) is str and value and value.isascii():
        return value  # the usual field: the checks below can only pass
    if name not in obj:
        raise _Invalid(f"missing field {name!r}")
    if not isinstance(value, str) or isinstance(value, _HugeInt):  # _HugeInt is a long JSON integer
        raise _Invalid(f"field {name!r} must be a string, got {_json_type(value)}")
    if not value:
        raise _Invalid(f"field {name!r} must not be empty")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            # "\ud800" escapes decode to lone surrogates, which no sink can store.
            raise _Invalid(f"field {name!r} contains a lone surrogate escape") from None
    return value


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, _HugeInt):
        return "integer"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number with fraction or exponent"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _quantity(obj: dict[str, Any]) -> int:
    value = obj.get("quantity")
    if type(value) is int and 0 < value <= MAX_QUANTITY:
        return value  # the usual quantity: the checks below can only pass
    if "quantity" not in obj:
        raise _Invalid("missing field 'quantity'")
    value = obj["quantity"]
    if isinstance(value, _HugeInt):
        raise _Invalid(f"quantity out of range (at most {MAX_QUANTITY})")
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Invalid(f"quantity must be a JSON integer, got {_json_type(value)}")
    if value <= 0:
        raise _Invalid(f"quantity must be > 0, got {value}")
    if value > MAX_QUANTITY:
        raise _Invalid(f"quantity out of range (at most {MAX_QUANTITY})")
    return value


# Built once: ``json.loads`` with hooks builds a new decoder on every call.
_DECODER = json.JSONDecoder(parse_int=_parse_int, parse_constant=_reject_constant, object_pairs_hook=_unique_keys)


# orjson reads an integer literal past 64 bits as a float; such a float is the
# strict decoder's to word (an integer is "out of range", not "a fraction").
_FLOAT_STEP_ASIDE = float(2**63)
# Member values that hold no strings of their own (floats are checked apart).
_SCALARS = frozenset({str, int, bool, type(None)})
_SCALARS_AND_FLOAT = _SCALARS | {float}


def _flat_object(value: bytes) -> dict[str, Any] | None:
    """The common case, decoded in C: a flat object, proven free of duplicate names.

    Returns None whenever the strict decoder must decide (and word the error).
    orjson refuses what the strict decoder refuses here (invalid UTF-8, a byte
    order mark, NaN and the infinities, control characters) and reads the
    rest alike, but for integers past 64 bits (floats, see above). The
    quotes in ``value`` are two per string written (member names included)
    plus one per escaped quote. When every kept value is a scalar (nothing
    nested), they equal twice the kept names plus the kept string values
    exactly when no member was lost to a repeated name and no quote was
    escaped. All of it is counted in C.
    """
    try:
        obj = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    if type(obj) is not dict:
        return None
    kinds = list(map(type, obj.values()))
    if not _SCALARS.issuperset(kinds):
        if not _SCALARS_AND_FLOAT.issuperset(kinds):
            return None  # nested: the strict decoder checks inside it
        for member in obj.values():
            if type(member) is float and member.is_integer() and abs(member) >= _FLOAT_STEP_ASIDE:
                return None
    return obj if value.count(b'"') == 2 * (len(obj) + kinds.count(str)) else None


def _decode_object(value: bytes | None) -> dict[str, Any]:
    if value is None:
        raise _Invalid("null value (tombstone): expected a JSON object")
    obj = _flat_object(value)
    if obj is not None:
        return obj
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _Invalid(f"invalid UTF-8 at byte {exc.start}") from None
    if text.startswith("\ufeff"):
        raise _Invalid("not JSON: a byte order mark before the value")
    try:
        obj = _DECODER.decode(text)
    except _Invalid:
        raise
    except RecursionError:
        raise _Invalid("not JSON: nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError is a ValueError
        raise _Invalid(f"not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise _Invalid(f"not a JSON object: got {_json_type(obj)}")
    return obj


# Quotes in a usual event: five member names and four string values, none escaped.
_USUAL_QUOTES = 2 * (5 + 4)


def _usual_fields(value: bytes) -> EventFields | None:
    """The fields of a usual valid event, in as few steps as it takes; None for anything else.

    Usual: exactly the five contract members, four non-empty ASCII strings and
    a quantity in range. Then the quote count proves what ``_flat_object``
    proves (no member name repeated, no quote escaped), and every check of
    the full path can only pass. Anything else, valid or not, takes the full
    path, which words the error.
    """
    try:
        obj = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    if type(obj) is not dict or len(obj) != 5:
        return None
    get = obj.get
    event_id, store_id, item_id = get("event_id"), get("store_id"), get("item_id")
    quantity, event_time = get("quantity"), get("event_time")
    if not (
        type(event_id) is str
        and type(store_id) is str
        and type(item_id) is str
        and type(event_time) is str
        and type(quantity) is int
        and 0 < quantity <= MAX_QUANTITY
        and event_id
        and store_id
        and item_id
        and event_id.isascii()
        and store_id.isascii()
        and item_id.isascii()
        and value.count(b'"') == _USUAL_QUOTES
    ):
        return None
    try:
        return event_id, store_id, item_id, quantity, parse_rfc3339(event_time)
    except ValueError:
        return None


def decode_fields(value: bytes | None) -> EventFields | str:
    """``(event_id, store_id, item_id, quantity, event_time micros)`` of a valid value, or why it is invalid.

    The one place the contract is checked. Never raises for bad input: anything
    the value contains is turned into an error string, so a poison record
    cannot stop a pipeline.
    """
    if value is not None:
        usual = _usual_fields(value)
        if usual is not None:
            return usual
    try:
        obj = _decode_object(value)
        event_id = _string_field(obj, "event_id")
        store_id = _string_field(obj, "store_id")
        item_id = _string_field(obj, "item_id")
        quantity = _quantity(obj)
        raw_time = obj.get("event_time")
        if "event_time" not in obj:
            raise _Invalid("missing field 'event_time'")
        if type(raw_time) is not str:  # _HugeInt, a long JSON integer, is a str subclass
            raise _Invalid(f"field 'event_time' must be a string, got {_json_type(raw_time)}")
        try:
            event_time = parse_rfc3339(raw_time)
        except ValueError as exc:
            raise _Invalid(str(exc)) from None
    except _Invalid as exc:
        return str(exc)
    except Exception as exc:  # a bug here must still not stop the pipeline
        return f"unexpected {type(exc).__name__} while decoding: {exc}"
    return event_id, store_id, item_id, quantity, event_time


def event_time_of(value: bytes | None) -> int | None:
    """The event time (epoch micros) of a valid event's record value; None for an invalid one.

    What an event-time read keeps time by (``ReadFromKafka(event_time=event_time_of)``):
    the full contract check, so a record that will be a dead letter never moves a watermark.
    """
    fields = decode_fields(value)
    return None if isinstance(fields, str) else fields[4]


def parse_event(record: KafkaRecord, kind: EventKind, *, keep_payload: bool = True) -> Shipment | Sale | DeadLetter:
    """Validate one record as a ``kind`` event; a broken record becomes a DeadLetter.

    ``keep_payload`` keeps the raw bytes on the event so that a later stage
    (the dedupe horizon) can still dead-letter it with its original payload.
    """
    fields = decode_fields(record.value)
    if isinstance(fields, str):
        return _dead(record, fields)
    event_id, store_id, item_id, quantity, event_time = fields
    return _EVENT_TYPES[kind](
        event_id=event_id,
        store_id=store_id,
        item_id=item_id,
        quantity=quantity,
        event_time=event_time,
        source_topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        payload=(record.value or b"") if keep_payload else b"",
    )


def _dead(record: KafkaRecord, error: str) -> DeadLetter:
    return DeadLetter(record.topic, record.partition, record.offset, error, record.value or b"")


def event_payload(event: Shipment | Sale) -> bytes:
    """The event's raw payload, or a canonical JSON re-encoding if it was not kept."""
    if event.payload:
        return event.payload
    when = micros_to_datetime(event.event_time).isoformat().replace("+00:00", "Z")
    body = {
        "event_id": event.event_id,
        "store_id": event.store_id,
        "item_id": event.item_id,
        "quantity": event.quantity,
        "event_time": when,
    }
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def dead_letter_to_row(dead: DeadLetter) -> dict[str, Any]:
    """A row for the ``dead_letters`` view (payload stays raw bytes)."""
    return {
        "source_topic": dead.source_topic,
        "partition": dead.partition,
        "offset": dead.offset,
        "error": dead.error,
        "payload": dead.payload,
    }


def dead_letter_to_kafka(dead: DeadLetter) -> tuple[bytes, bytes]:
    """A (key, value) pair for the ``dead-letters`` topic.

    The key ``<topic>:<partition>:<offset>`` names the source record, so a replay
    writes the same key again (compaction keeps one). The value is a JSON object
    with the view's fields; ``payload`` is base64 (standard alphabet, padded)
    because the raw bytes need not be UTF-8.
    """
    key = f"{dead.source_topic}:{dead.partition}:{dead.offset}".encode()
    value = {
        "source_topic": dead.source_topic,
        "partition": dead.partition,
        "offset": dead.offset,
        "error": dead.error,
        "payload": base64.b64encode(dead.payload).decode("ascii"),
        "payload_encoding": "base64",
    }
    return key, json.dumps(value, ensure_ascii=False).encode("utf-8")


class _DecodeFn(beam.DoFn):
    """Records -> events stamped at their event time (or their record's stamp), or dead letters.

    ``global_windows``: the input is in the global window, so each event goes
    out as a ready WindowedValue. A TimestampedValue makes the runner assign
    windows per element, and building a GlobalWindow each time was about a
    twentieth of a streaming worker's time.
    """

    def __init__(self, kind: EventKind, keep_payload: bool, global_windows: bool = False, restamp: bool = True) -> None:
        self._kind = kind
        self._keep_payload = keep_payload
        self._global_windows = global_windows
        self._restamp = restamp
        self._dead = beam.metrics.Metrics.counter("beamline", f"{kind}_dead_letters")

    def process(self, record: KafkaRecord):
        result = parse_event(record, self._kind, keep_payload=self._keep_payload)
        if isinstance(result, DeadLetter):
            self._dead.inc()
            yield beam.pvalue.TaggedOutput(DEAD_LETTERS_TAG, result)
        elif not self._restamp:
            yield result  # a plain value keeps its record's timestamp and windows
        elif self._global_windows:
            yield WindowedValue(result, Timestamp(micros=result.event_time), GLOBAL_WINDOWS)
        else:
            yield TimestampedValue(result, Timestamp(micros=result.event_time))


class DecodeEvents(beam.PTransform):
    """KafkaRecords -> events timestamped at their event_time, plus dead letters.

    Returns a tuple-like result: ``events, dead = records | DecodeEvents("sale")``
    (also ``result.events`` / ``result.dead_letters``).

    ``stamped_by_read=True`` keeps each record's own timestamp instead: for
    records an event-time read stamped itself (``ReadFromKafka(event_time=
    event_time_of)``), whose stamps are event times kept within its
    watermark's step.
    """

    def __init__(self, kind: EventKind, *, keep_payload: bool = True, stamped_by_read: bool = False) -> None:
        super().__init__()
        if kind not in _EVENT_TYPES:
            raise ConfigError(f"kind must be 'shipment' or 'sale', not {kind!r}")
        self._kind = kind
        self._keep_payload = keep_payload
        self._restamp = not stamped_by_read

    def expand(self, records: beam.PCollection) -> beam.pvalue.DoOutputsTuple:
        global_windows = isinstance(records.windowing.windowfn, GlobalWindows)
        fn = _DecodeFn(self._kind, self._keep_payload, global_windows, self._restamp)
        return records | beam.ParDo(fn).with_outputs(DEAD_LETTERS_TAG, main=EVENTS_TAG)
