"""Client settings: Kafka's standard names mapped to each client's dialect, properties files, secrets kept out of sight.

A real cluster's security settings usually come as a Kafka client properties
file (what Kafka's own tools take with ``--command-config``), in the Java
client's names: ``security.protocol``, ``sasl.jaas.config``,
``ssl.truststore.location``. Neither Python client takes those as they are:
kafka-python has keyword names of its own (``sasl_plain_username``,
``ssl_cafile``) and librdkafka, under confluent-kafka, has no JAAS and no Java
keystores. :func:`client_config` is the one place that knows both dialects;
:func:`load_client_properties` and :func:`parse_client_setting` read the file
and the command line's ``KEY=VALUE`` settings.

Secrets never show: :class:`ClientSettings` (how the connection, read and
write specs hold settings) prints ``***`` for passwords, JAAS configs, key
passwords and tokens, and no error message here repeats a value that could be
one.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from core.errors import ConfigError

__all__ = [
    "KAFKA_CLIENTS",
    "ClientSettings",
    "client_config",
    "is_secret",
    "load_client_properties",
    "parse_client_setting",
    "redacted",
]

# The Kafka clients a read, a write or the admin helpers can use; the first is the default.
KAFKA_CLIENTS = ("kafka-python", "confluent")
# How long the broker keeps a writer's transaction open before aborting it on its
# own. It bounds how long a worker that died mid-bundle holds back read_committed
# readers of the output; a bundle (and any broker outage it rides through) must
# commit within it. Kafka's own default is 60 s; producer_config may override
# (transaction_timeout_ms / transaction.timeout.ms), up to the broker's
# transaction.max.timeout.ms (15 min by default).
TRANSACTION_TIMEOUT_MS = 120_000
REDACTED = "***"
_SECRET_WORDS = ("password", "secret", "jaas", "token", "credential")
# Secrets whose names carry none of those words: inline private keys and OAuth settings.
_SECRET_NAMES = frozenset({"ssl.key.pem", "ssl.keystore.key", "sasl.oauthbearer.config"})
_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")

# Kafka's standard names whose kafka-python keyword is not the name with "_" for ".".
# librdkafka takes the standard names themselves (sasl.mechanisms is its older spelling).
_KAFKA_PYTHON_NAMES = {
    "sasl.mechanisms": "sasl_mechanism",
    "sasl.username": "sasl_plain_username",
    "sasl.password": "sasl_plain_password",
    "ssl.ca.location": "ssl_cafile",
    "ssl.certificate.location": "ssl_certfile",
    "ssl.key.location": "ssl_keyfile",
    "ssl.key.password": "ssl_password",
    "ssl.crl.location": "ssl_crlfile",
    "ssl.cipher.suites": "ssl_ciphers",
    "ssl.endpoint.identification.algorithm": "ssl_check_hostname",
}
_STANDARD_NAMES = {kp: std for std, kp in _KAFKA_PYTHON_NAMES.items() if std != "sasl.mechanisms"}
_STORE_SUFFIXES = {".pem": "PEM", ".crt": "PEM", ".cer": "PEM", ".p12": "PKCS12", ".pfx": "PKCS12", ".jks": "JKS"}
_JAAS = re.compile(r"\s*([\w.$]+)\s+(?:required|requisite|sufficient|optional)\b(.*?);?\s*$", re.DOTALL)
_JAAS_OPTION = re.compile(r'(\w+)\s*=\s*(?:"([^"]*)"|([^\s";]+))')


def check_client(client: str) -> None:
    if client not in KAFKA_CLIENTS:
        raise ConfigError(f"client must be one of {', '.join(KAFKA_CLIENTS)}; got {client!r}")


def import_confluent() -> Any:
    """The confluent_kafka module, or one clear error saying how to install it."""
    try:
        import confluent_kafka
    except ImportError:
        raise ConfigError("client='confluent' needs confluent-kafka: pip install confluent-kafka") from None
    return confluent_kafka


# -- secrets -----------------------------------------------------------------------


def is_secret(name: str) -> bool:
    """Whether a setting called ``name`` (in any dialect) holds a password, a JAAS config, a key or a token."""
    standard = name.lower().replace("_", ".")
    return standard in _SECRET_NAMES or any(word in standard for word in _SECRET_WORDS)


def redacted(settings: Mapping[str, Any]) -> dict[str, Any]:
    """``settings`` with ``***`` for every secret: for anything printed, logged or shown."""
    return {name: REDACTED if is_secret(name) else value for name, value in settings.items()}


def redact_text(text: str, settings: Mapping[str, Any]) -> str:
    """``text`` (a client's error message) with the secret values of ``settings`` replaced by ``***``."""
    for name, value in settings.items():
        if is_secret(name) and isinstance(value, str) and value:
            text = text.replace(value, REDACTED)
    return text


class ClientSettings(Mapping[str, Any]):
    """Settings of a Kafka client, read-only; ``repr`` and ``str`` show ``***`` for secrets."""

    def __init__(self, settings: Mapping[str, Any] | None = None) -> None:
        self._settings = dict(settings or {})

    def __getitem__(self, name: str) -> Any:
        return self._settings[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._settings)

    def __len__(self) -> int:
        return len(self._settings)

    def __hash__(self) -> int:
        return hash(tuple(sorted(self._settings.items(), key=lambda item: item[0])))

    def __repr__(self) -> str:
        return repr(redacted(self._settings))


# -- properties files and KEY=VALUE settings ------------------------------------------


def load_client_properties(path: str | Path) -> dict[str, str]:
    """The settings in a Kafka client properties file (what Kafka's tools take with ``--command-config``).

    Java's properties format: ``key=value`` or ``key: value`` lines, ``#`` and
    ``!`` comments, blank lines, a trailing ``\\`` continuing a line (as long
    ``sasl.jaas.config`` values often are), and Java's ``\\`` escapes. A later
    line wins over an earlier one with the same key. A missing, unreadable or
    malformed file is a ConfigError naming the file (and line); no value is
    ever repeated in it.
    """
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"client properties file {path} not found; fix the path") from None
    except OSError as exc:
        raise ConfigError(f"cannot read client properties file {path}: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        number = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{path} line {number}: not UTF-8 text; save the properties file as UTF-8") from None
    settings: dict[str, str] = {}
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        number = index + 1
        line = lines[index].lstrip(" \t\f")
        index += 1
        if not line or line[0] in "#!":
            continue
        while _continues(line) and index < len(lines):
            line = line[:-1] + lines[index].lstrip(" \t\f")
            index += 1
        if _continues(line):
            line = line[:-1]  # a continuation at the end of the file continues into nothing
        try:
            key, value = _property(line)
        except ValueError as exc:
            raise ConfigError(f"{path} line {number}: {exc}") from None
        settings[key] = value
    return settings


def _continues(line: str) -> bool:
    """Whether a properties line ends with an odd number of backslashes (the last one escapes the newline)."""
    return (len(line) - len(line.rstrip("\\"))) % 2 == 1


def _property(line: str) -> tuple[str, str]:
    """Key and value of one logical properties line; ValueError (without the line's text) when malformed."""
    end = 0
    while end < len(line) and line[end] not in "=: \t\f":
        end += 2 if line[end] == "\\" else 1
    key = _unescape(line[:end])
    rest = line[end:].lstrip(" \t\f")
    if not rest or rest[0] not in "=:":
        raise ValueError("expected key=value or key: value")
    if not key:
        raise ValueError("a setting without a name; expected key=value")
    return key, _unescape(rest[1:].lstrip(" \t\f"))


_ESCAPES = {"t": "\t", "n": "\n", "r": "\r", "f": "\f"}


def _unescape(text: str) -> str:
    """Java's properties escapes: ``\\t \\n \\r \\f \\uXXXX``; a backslash before anything else is dropped."""
    if "\\" not in text:
        return text
    out = []
    index = 0
    while index < len(text):
        char = text[index]
        if char != "\\" or index + 1 == len(text):
            out.append(char)
            index += 1
            continue
        escaped = text[index + 1]
        if escaped == "u":
            digits = text[index + 2 : index + 6]
            if len(digits) != 4 or not all(c in "0123456789abcdefABCDEF" for c in digits):
                raise ValueError("a malformed \\uXXXX escape")
            out.append(chr(int(digits, 16)))
            index += 6
            continue
        out.append(_ESCAPES.get(escaped, escaped))
        index += 2
    return "".join(out)


def parse_client_setting(text: str) -> tuple[str, str]:
    """``KEY=VALUE`` from the command line as ``(KEY, VALUE)``; the value may itself hold ``=``."""
    key, sep, value = text.partition("=")
    if not sep:
        raise ConfigError("a client setting must be KEY=VALUE (e.g. security.protocol=SASL_SSL); this one has no '='")
    if not key.strip():
        raise ConfigError("a client setting must be KEY=VALUE; this one has no KEY before '='")
    return key.strip(), value.lstrip()


# -- one client's dialect ------------------------------------------------------------


@functools.cache
def kafka_python_keys(role: str = "any") -> frozenset[str]:
    """kafka-python's setting names for a ``consumer``, ``producer`` or ``admin`` client, or ``any`` of them."""
    return frozenset(_kafka_python_defaults(role))


@functools.cache
def _kafka_python_defaults(role: str = "any") -> dict[str, Any]:
    from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer

    classes = {"consumer": [KafkaConsumer], "producer": [KafkaProducer], "admin": [KafkaAdminClient]}
    defaults: dict[str, Any] = {}
    for cls in classes.get(role, [KafkaAdminClient, KafkaProducer, KafkaConsumer]):
        defaults.update(cls.DEFAULT_CONFIG)
    return defaults


def client_config(client: str, settings: Mapping[str, Any]) -> dict[str, Any]:
    """``settings`` in the dialect of ``client`` (``"kafka-python"`` or ``"confluent"``).

    Takes Kafka's standard names (``security.protocol``, ``sasl.mechanism``,
    ``sasl.jaas.config`` with a PlainLoginModule or ScramLoginModule,
    ``sasl.username``/``sasl.password``, ``ssl.truststore.location`` or
    ``ssl.ca.location``, ``ssl.keystore.*`` or ``ssl.certificate.location`` and
    ``ssl.key.location``, ``ssl.key.password``, ``client.id``, ...) and names
    already in the client's own dialect, which pass through. Values are typed
    as the client expects (kafka-python wants numbers and booleans; librdkafka
    takes text). A setting the client cannot use (a JKS store, an unknown name,
    the other client's name) is a one-line ConfigError saying what to use instead.
    """
    check_client(client)
    to_dialect = _to_confluent if client == "confluent" else _to_kafka_python
    out: dict[str, Any] = {}
    given_as: dict[str, str] = {}
    for given, name, value in _standard(settings):
        key, typed = to_dialect(given, name, value)
        if key in out and out[key] != typed:
            raise ConfigError(f"{given_as[key]} and {given} both set {key}, differently; keep one")
        out[key] = typed
        given_as[key] = given
    if client == "confluent":
        _check_librdkafka_names(out)
    return out


def _standard(settings: Mapping[str, Any]) -> list[tuple[str, str, Any]]:
    """``(given name, name both clients know, value)``: the Java-only settings resolved, the rest as given."""
    rest = dict(settings)
    resolved = []
    jaas = rest.pop("sasl.jaas.config", None)
    if jaas is not None:
        user, password = _jaas_credentials(jaas)
        resolved += [("sasl.jaas.config", "sasl.username", user), ("sasl.jaas.config", "sasl.password", password)]
    resolved += _truststore(rest)
    resolved += _keystore(rest)
    return resolved + [(name, name, value) for name, value in rest.items()]


def _jaas_credentials(config: Any) -> tuple[str, str]:
    """Username and password of a PlainLoginModule or ScramLoginModule JAAS line (never shown in errors)."""
    match = _JAAS.match(config) if isinstance(config, str) else None
    if match is None:
        raise ConfigError(
            'sasl.jaas.config is not a JAAS login line; expected <LoginModule> required username="..." password="...";'
        )
    module = match.group(1).rsplit(".", 1)[-1]
    if module not in ("PlainLoginModule", "ScramLoginModule"):
        raise ConfigError(
            f"sasl.jaas.config uses {module}; only PlainLoginModule and ScramLoginModule are understood: "
            "for Kerberos set sasl.kerberos.service.name, for OAUTHBEARER the sasl.oauthbearer.* settings "
            "(client='confluent'), and remove sasl.jaas.config"
        )
    options = {m[1]: m[2] if m[2] is not None else m[3] for m in _JAAS_OPTION.finditer(match[2])}
    missing = [name for name in ("username", "password") if options.get(name) is None]
    if missing:
        raise ConfigError(f'sasl.jaas.config has no {" or ".join(missing)}; give username="..." password="..."')
    return options["username"], options["password"]


def _store_type(prefix: str, location: Any, given: Any) -> str:
    if given is not None:
        kind = str(given).strip().upper()
    else:
        kind = _STORE_SUFFIXES.get(Path(str(location)).suffix.lower(), "")
        if not kind:
            raise ConfigError(f"{prefix}.location {location}: set {prefix}.type (PEM or PKCS12); its name does not say")
    if kind not in ("PEM", "PKCS12", "JKS"):
        raise ConfigError(f"{prefix}.type must be PEM, PKCS12 or JKS; got {given!r}")
    return kind


def _truststore(rest: dict[str, Any]) -> list[tuple[str, str, Any]]:
    """``ssl.truststore.*``: a PEM truststore is librdkafka's ssl.ca.location (kafka-python's ssl_cafile)."""
    location = rest.pop("ssl.truststore.location", None)
    kind = rest.pop("ssl.truststore.type", None)
    password = rest.pop("ssl.truststore.password", None)
    if location is not None and _store_type("ssl.truststore", location, kind) != "PEM":
        raise ConfigError(
            "ssl.truststore.location is a Java truststore, which neither Python client reads; export its CA "
            "certificates to PEM (keytool -exportcert -rfc) and set ssl.ca.location"
        )
    if password is not None:
        raise ConfigError("ssl.truststore.password: the Python clients read PEM CA files, which have none; remove it")
    return [] if location is None else [("ssl.truststore.location", "ssl.ca.location", location)]


def _keystore(rest: dict[str, Any]) -> list[tuple[str, str, Any]]:
    """``ssl.keystore.*``: PKCS12 stays a keystore (librdkafka reads it); PEM is a certificate and key file."""
    location = rest.pop("ssl.keystore.location", None)
    kind = rest.pop("ssl.keystore.type", None)
    password = rest.pop("ssl.keystore.password", None)
    if location is None:
        if password is not None:
            raise ConfigError("ssl.keystore.password is set without ssl.keystore.location; remove it")
        return []
    kind = _store_type("ssl.keystore", location, kind)
    if kind == "JKS":
        raise ConfigError(
            "ssl.keystore.location is a JKS keystore, which neither Python client reads; convert it to PKCS12 "
            "(keytool -importkeystore -deststoretype PKCS12) for client='confluent', or to PEM files for "
            "ssl.certificate.location and ssl.key.location"
        )
    if kind == "PKCS12":
        store = [("ssl.keystore.location", "ssl.keystore.location", location)]
        return store + ([] if password is None else [("ssl.keystore.password", "ssl.keystore.password", password)])
    if password is not None:
        raise ConfigError("ssl.keystore.password: a PEM keystore has no store password; set ssl.key.password instead")
    # One PEM file with the certificate chain and the private key: both clients read it as both.
    return [
        ("ssl.keystore.location", "ssl.certificate.location", location),
        ("ssl.keystore.location", "ssl.key.location", location),
    ]


def _protocol(given: str, value: Any) -> str:
    protocol = str(value).strip().upper()
    if protocol not in _PROTOCOLS:
        raise ConfigError(f"{given} must be one of {', '.join(_PROTOCOLS)}; got {value!r}")
    return protocol


def _to_kafka_python(given: str, name: str, value: Any) -> tuple[str, Any]:
    known = kafka_python_keys()
    if name in known:
        key = name
    elif name in _KAFKA_PYTHON_NAMES:
        key = _KAFKA_PYTHON_NAMES[name]
    elif name.replace(".", "_") in known and "." in name:
        key = name.replace(".", "_")
    elif name in ("ssl.keystore.location", "ssl.keystore.password"):
        raise ConfigError(
            f"{given}: kafka-python reads PEM files, not PKCS12 keystores; extract them (openssl pkcs12 -nodes) "
            "into ssl.certificate.location and ssl.key.location, or use client='confluent'"
        )
    elif name.startswith("sasl.oauthbearer."):
        raise ConfigError(
            f"{given}: kafka-python takes a token provider object (sasl_oauth_token_provider) instead; "
            "use client='confluent' for sasl.oauthbearer.* settings"
        )
    else:
        raise ConfigError(
            f"unknown kafka-python setting {given}; use Kafka's names (security.protocol, sasl.mechanism, "
            "ssl.ca.location, client.id, ...) or kafka-python's (security_protocol, sasl_plain_username, ...)"
        )
    if not isinstance(value, str):
        return key, value
    if name == "ssl.endpoint.identification.algorithm":
        check = value.strip().lower()
        if check not in ("https", "", "none"):
            raise ConfigError(f"{given} must be https, or empty to skip the host name check; got {value!r}")
        return key, check == "https"
    if key == "security_protocol":
        return key, _protocol(given, value)
    if key == "sasl_mechanism":
        return key, value.strip().upper()
    return key, _typed(given, key, value)


def _typed(given: str, key: str, value: str) -> Any:
    """``value`` (text from a file or a command line) as the type of kafka-python's default for ``key``."""
    default = _kafka_python_defaults()[key]
    text = value.strip()
    if isinstance(default, bool):
        if text.lower() in ("true", "false"):
            return text.lower() == "true"
        raise ConfigError(f"{given} must be true or false; got {value!r}")
    if key == "acks" and text.lower() == "all":
        return -1  # kafka-python's spelling of all
    try:
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):  # a count whose default is infinity: a whole number unless it has a point
            return float(text) if "." in text or text.lower().endswith("inf") else int(text)
    except ValueError:
        raise ConfigError(f"{given} must be a number; got {value!r}") from None
    return value


def _to_confluent(given: str, name: str, value: Any) -> tuple[str, Any]:
    if "_" in name and "." not in name and name in kafka_python_keys():
        standard = _STANDARD_NAMES.get(name, name.replace("_", "."))
        raise ConfigError(f"client 'confluent' takes librdkafka's names: {standard} rather than {given}")
    if name in ("sasl.mechanism", "sasl.mechanisms"):
        return "sasl.mechanism", str(value).strip().upper()
    if name == "security.protocol":
        return name, _protocol(given, value)
    if name == "ssl.endpoint.identification.algorithm":
        return name, str(value).strip().lower() or "none"
    return name, value


def confluent_refusal(settings: Mapping[str, Any], *roles: str) -> BaseException | None:
    """Why a quiet, unconnected librdkafka client refuses ``settings``: None if one of ``roles`` takes them.

    librdkafka checks every name and value, and how they combine, when a
    client is made. The client is made without ``security.protocol``, so it
    opens no certificate file and asks for no credentials: those are checked
    where the client really connects.
    """
    config = {name: value for name, value in settings.items() if name != "security.protocol"}
    if not config:
        return None
    ck = import_confluent()
    refused: BaseException | None = None
    for role in roles:
        try:
            if role == "consumer":
                ck.Consumer({"group.id": "beamline-check", **config, "log_level": 0}).close()
            else:
                ck.Producer({**config, "log_level": 0})
            return None
        except (ck.KafkaException, ValueError, TypeError) as exc:
            refused = refused or exc
    return refused


def _check_librdkafka_names(settings: Mapping[str, Any]) -> None:
    """The settings must be ones librdkafka (or confluent-kafka) takes, for a producer or a consumer.

    When they fail together, each is tried alone to name the one at fault.
    """
    refused = confluent_refusal(settings, "producer", "consumer")
    if refused is None:
        return
    culprit = next((name for name in settings if confluent_refusal({name: settings[name]}, "producer", "consumer")), "")
    if culprit:
        refused = confluent_refusal({culprit: settings[culprit]}, "producer", "consumer") or refused
    raise ConfigError(
        f"confluent-kafka refuses {culprit or 'these settings'}: {client_error_text(refused, settings)}; "
        "use librdkafka's names and values (its CONFIGURATION.md)"
    )


def client_error_text(exc: BaseException, settings: Mapping[str, Any]) -> str:
    """A client's error as one line: librdkafka's own text when there is one, secrets of ``settings`` hidden."""
    error: Any = exc.args[0] if exc.args else None
    text = error.str() if callable(getattr(error, "str", None)) else str(exc)
    return redact_text(text, settings)
