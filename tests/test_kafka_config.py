"""Client settings for real clusters: properties files, each client's dialect, and secrets kept out of sight.

Pure logic, no broker: given the settings a Kafka client properties file or
the command line holds, when they are mapped for a client, then each comes out
under the client's own name and type, a setting neither client can use is one
clear error, and no password, JAAS config or token is ever printed.
"""

from __future__ import annotations

import logging
import pickle
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from apache_beam.transforms.display import DisplayData

from core.errors import ConfigError
from transforms.kafka import (
    ClientSettings,
    KafkaConnection,
    ReadFromKafka,
    ReadTiming,
    StartAt,
    StopAt,
    WriteToKafka,
    client_config,
    load_client_properties,
    parse_client_setting,
)
from transforms.kafka.confluent import consumer_settings as confluent_consumer_settings
from transforms.kafka.kafka_python import consumer_settings as kafka_python_consumer_settings

SECRET = "s3cr3t-Pa55"
JAAS = f'org.apache.kafka.common.security.plain.PlainLoginModule required username="alice" password="{SECRET}";'
# What a cluster's --command-config file usually says, as load_client_properties returns it.
SASL_SSL = {
    "security.protocol": "SASL_SSL",
    "sasl.mechanism": "PLAIN",
    "sasl.jaas.config": JAAS,
    "ssl.truststore.location": "/etc/kafka/ca.pem",
    "ssl.truststore.type": "PEM",
    "ssl.endpoint.identification.algorithm": "",
    "client.id": "beamline-test",
    "request.timeout.ms": "30000",
}


def _one_line_error(info: pytest.ExceptionInfo[ConfigError], *words: str) -> str:
    message = str(info.value)
    assert "\n" not in message
    assert SECRET not in message
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"
    return message


# -- properties files and KEY=VALUE settings ---------------------------------------------


def test_a_properties_file_reads_as_kafkas_tools_read_it(tmp_path: Path) -> None:
    path = tmp_path / "client.properties"
    path.write_text(
        "# a comment\n"
        "! another comment\n"
        "\n"
        "security.protocol=SASL_SSL\n"
        "sasl.mechanism: SCRAM-SHA-512\n"
        "   client.id   =   spaced out\n"
        "sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required \\\n"
        '    username="bob" \\\n'
        f'    password="{SECRET}";\n'
        "ssl.truststore.location=C:\\\\certs\\\\ca.pem\n"
        "escaped\\=key=tab\\there \\u00e9\n"
        "client.id=the later one wins\n"
        "empty=\n",
        encoding="utf-8",
    )
    assert load_client_properties(path) == {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "client.id": "the later one wins",
        "sasl.jaas.config": "org.apache.kafka.common.security.scram.ScramLoginModule required "
        f'username="bob" password="{SECRET}";',
        "ssl.truststore.location": "C:\\certs\\ca.pem",
        "escaped=key": "tab\there \u00e9",
        "empty": "",
    }


def test_a_missing_unreadable_or_malformed_file_is_one_error_naming_file_and_line(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.properties"
    with pytest.raises(ConfigError) as info:
        load_client_properties(missing)
    _one_line_error(info, str(missing), "not found")
    with pytest.raises(ConfigError) as info:
        load_client_properties(tmp_path)  # a folder: unreadable as a file
    _one_line_error(info, str(tmp_path))
    malformed = tmp_path / "bad.properties"
    malformed.write_text(f"security.protocol=SSL\n# fine\nsasl.password {SECRET}\n")
    with pytest.raises(ConfigError) as info:
        load_client_properties(malformed)
    _one_line_error(info, f"{malformed} line 3", "key=value")
    binary = tmp_path / "binary.properties"
    binary.write_bytes(b"a=1\nb=\xff\n")
    with pytest.raises(ConfigError) as info:
        load_client_properties(binary)
    _one_line_error(info, f"{binary} line 2", "UTF-8")


def test_a_command_line_setting_is_key_equals_value() -> None:
    assert parse_client_setting("sasl.jaas.config=a=b c") == ("sasl.jaas.config", "a=b c")
    assert parse_client_setting(" client.id = me") == ("client.id", "me")
    for text in (f"sasl.password:{SECRET}", f"={SECRET}"):
        with pytest.raises(ConfigError) as info:
            parse_client_setting(text)
        _one_line_error(info, "KEY=VALUE")


# -- each client's dialect -----------------------------------------------------------------


def test_kafka_python_gets_its_keyword_names_and_typed_values() -> None:
    assert client_config("kafka-python", SASL_SSL) == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "PLAIN",
        "sasl_plain_username": "alice",
        "sasl_plain_password": SECRET,
        "ssl_cafile": "/etc/kafka/ca.pem",
        "ssl_check_hostname": False,
        "client_id": "beamline-test",
        "request_timeout_ms": 30000,
    }
    typed = client_config(
        "kafka-python",
        {"ssl.endpoint.identification.algorithm": "https", "enable.idempotence": "false", "retries": "3"},
    )
    assert typed == {"ssl_check_hostname": True, "enable_idempotence": False, "retries": 3}
    assert client_config("kafka-python", {"acks": "all", "linger.ms": "5"}) == {"acks": -1, "linger_ms": 5}
    assert client_config("confluent", {"acks": "all", "linger.ms": "5"}) == {"acks": "all", "linger.ms": "5"}


def test_confluent_gets_librdkafka_names() -> None:
    assert client_config("confluent", SASL_SSL) == {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "PLAIN",
        "sasl.username": "alice",
        "sasl.password": SECRET,
        "ssl.ca.location": "/etc/kafka/ca.pem",
        "ssl.endpoint.identification.algorithm": "none",
        "client.id": "beamline-test",
        "request.timeout.ms": "30000",
    }


@pytest.mark.parametrize("client", ["kafka-python", "confluent"])
def test_a_clients_own_names_pass_through_and_mapping_twice_changes_nothing(client: str) -> None:
    own = (
        {"security_protocol": "SSL", "ssl_cafile": "/ca.pem", "sasl_plain_password": SECRET}
        if client == "kafka-python"
        else {"security.protocol": "SSL", "ssl.ca.location": "/ca.pem", "sasl.password": SECRET}
    )
    assert client_config(client, own) == own
    once = client_config(client, SASL_SSL)
    assert client_config(client, once) == once


def test_scram_and_client_certificates() -> None:
    scram = {
        "sasl.mechanism": "scram-sha-512",
        "sasl.jaas.config": "org.apache.kafka.common.security.scram.ScramLoginModule required "
        f"username=bob password={SECRET};",
    }
    assert client_config("kafka-python", scram) == {
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "bob",
        "sasl_plain_password": SECRET,
    }
    pkcs12 = {"ssl.keystore.location": "/client.p12", "ssl.keystore.password": SECRET}
    assert client_config("confluent", pkcs12) == pkcs12
    pem = {"ssl.keystore.location": "/client.pem", "ssl.key.password": SECRET}
    assert client_config("kafka-python", pem) == {
        "ssl_certfile": "/client.pem",
        "ssl_keyfile": "/client.pem",
        "ssl_password": SECRET,
    }
    assert client_config("confluent", {"ssl.certificate.location": "/c.pem", "ssl.key.location": "/k.pem"}) == {
        "ssl.certificate.location": "/c.pem",
        "ssl.key.location": "/k.pem",
    }


@pytest.mark.parametrize(
    ("client", "settings", "words"),
    [
        ("kafka-python", {"ssl.truststore.location": "/ts.jks", "ssl.truststore.password": SECRET}, ["PEM"]),
        ("confluent", {"ssl.truststore.location": "/ts", "ssl.truststore.type": "JKS"}, ["ssl.ca.location"]),
        ("confluent", {"ssl.truststore.location": "/ca.pem", "ssl.truststore.password": SECRET}, ["remove"]),
        ("kafka-python", {"ssl.keystore.location": "/ks.jks", "ssl.keystore.password": SECRET}, ["PKCS12"]),
        ("kafka-python", {"ssl.keystore.location": "/ks.p12", "ssl.keystore.password": SECRET}, ["ssl.key.location"]),
        ("kafka-python", {"ssl.truststore.location": "/etc/ca-bundle"}, ["ssl.truststore.type"]),
        (
            "kafka-python",
            {"sasl.jaas.config": JAAS.replace("plain.PlainLoginModule", "oauthbearer.OAuthBearer")},
            [
                "OAuthBearer",
                "sasl.oauthbearer",
            ],
        ),
        ("kafka-python", {"sasl.jaas.config": f"password={SECRET}"}, ["JAAS"]),
        ("kafka-python", {"sasl.jaas.config": JAAS.replace(f' password="{SECRET}"', "")}, ["password"]),
        (
            "kafka-python",
            {"sasl.login.callback.handler.class": "x", "sasl.password": SECRET},
            ["sasl.login.callback.handler.class"],
        ),
        ("kafka-python", {"sasl.oauthbearer.client.secret": SECRET}, ["confluent"]),
        (
            "confluent",
            {"sasl.login.callback.handler.class": "x", "sasl.password": SECRET},
            ["sasl.login.callback.handler.class"],
        ),
        ("confluent", {"sasl_plain_password": SECRET}, ["sasl.password"]),
        ("confluent", {"linger.ms": "soon", "sasl.password": SECRET}, ["linger.ms"]),
        ("kafka-python", {"security.protocol": "TLS"}, ["SASL_SSL"]),
        ("kafka-python", {"request.timeout.ms": "a while"}, ["request.timeout.ms", "number"]),
        ("kafka-python", {"ssl.truststore.location": "/a.pem", "ssl.ca.location": "/b.pem"}, ["keep one"]),
        ("kafka", {}, ["kafka-python", "confluent"]),
    ],
)
def test_what_no_client_can_use_is_one_error_saying_what_to_use(
    client: str, settings: dict[str, Any], words: list[str]
) -> None:
    with pytest.raises(ConfigError) as info:
        client_config(client, settings)
    _one_line_error(info, *words)


# -- the connection, and secrets out of sight ---------------------------------------------


def test_a_connection_checks_and_keeps_its_settings_in_the_clients_dialect() -> None:
    connection = KafkaConnection("h:9092", settings={**SASL_SSL, "ssl.cipher.suites": "ECDHE"})
    assert connection.settings["sasl_plain_password"] == SECRET
    assert "ssl_ciphers" in connection.settings_for("consumer")
    assert "ssl_ciphers" not in connection.settings_for("admin")  # kafka-python's admin client has no such setting
    assert KafkaConnection.of("h:9092") == KafkaConnection("h:9092")
    assert KafkaConnection.of(["a:1", "b:2"]).bootstrap_servers == "a:1,b:2"
    assert pickle.loads(pickle.dumps(connection)) == connection
    with pytest.raises(ConfigError) as info:
        KafkaConnection("h:9092", settings={"bootstrap.servers": "other:9092"})
    _one_line_error(info, "bootstrap_servers")
    with pytest.raises(ConfigError) as info:
        KafkaConnection("h:9092", client="confluent", settings={"enable.auto.commit": "true"})
    _one_line_error(info, "enable.auto.commit", "managed by Beamline")
    with pytest.raises(ConfigError) as info:
        KafkaConnection("")
    _one_line_error(info, "bootstrap_servers")


def test_each_consumer_takes_the_connections_settings_under_its_own() -> None:
    kafka_python = KafkaConnection("a:1,b:2", settings=SASL_SSL)
    settings = kafka_python_consumer_settings(kafka_python, {"max_poll_records": 5}, 10.0)
    assert settings["bootstrap_servers"] == ["a:1", "b:2"]
    assert settings["sasl_plain_password"] == SECRET and settings["max_poll_records"] == 5
    confluent = KafkaConnection("a:1", client="confluent", settings=SASL_SSL)
    assert confluent_consumer_settings(confluent, {}, 10.0)["sasl.password"] == SECRET


def _no_secret(text: str) -> None:
    assert SECRET not in text and "***" in text, text


def test_secrets_never_show_in_reprs_logs_or_display_data(caplog: pytest.LogCaptureFixture) -> None:
    for client in ("kafka-python", "confluent"):
        connection = KafkaConnection("h:9092", client=client, settings=SASL_SSL)
        _no_secret(repr(connection))
        _no_secret(str(connection))
        _no_secret(repr(connection.settings))
        group = {"group.id" if client == "confluent" else "group_id": "g", "sasl.password": SECRET}
        read = ReadFromKafka(connection, "t", stop="end", consumer_config=group, validate=False)
        write = WriteToKafka(connection, "t", producer_config={"sasl.password": SECRET}, validate=False)
        for transform in (read, write):
            _no_secret(repr(transform._spec))
            _no_secret(repr(pickle.loads(pickle.dumps(transform._spec))))
            shown = " ".join(str(item.value) for item in DisplayData.create_from(transform).items)
            _no_secret(shown)
        with caplog.at_level(logging.INFO):
            logging.getLogger("transforms.kafka").info("reading with %r and %s", read._spec, connection)
        _no_secret(caplog.text)
    assert repr(ClientSettings({"ssl_context": None, "sasl_oauth_token_provider": object()})).count("***") == 1


# -- what a read is told -------------------------------------------------------------------


def test_read_specs_check_themselves() -> None:
    assert StartAt("committed", fallback="latest").resolved() == "committed"
    assert StopAt({("t", 1): 5, ("t", 0): 3}).resolved() == ((("t", 0), 3), (("t", 1), 5))
    assert ReadTiming(timeout_s=2).timeout_s == 2.0
    for make, words in (
        (lambda: StartAt("beginning"), ["start must be", "committed"]),
        (lambda: StartAt(fallback="committed"), ["fallback"]),
        (lambda: StopAt(datetime(2024, 1, 1)), ["time zone"]),
        (lambda: StopAt({("t", 0): -1}), ["non-negative"]),
        (lambda: ReadTiming(timeout_s=0), ["timeout_s", "positive"]),
        (lambda: ReadTiming(allowed_skew_s=-1), ["allowed_skew_s"]),
        (lambda: ReadFromKafka("h:9092", "t", start={("other", 0): 1}, validate=False), ["not read"]),
        (lambda: ReadFromKafka("h:9092", "t", start="committed", validate=False), ["group_id"]),
    ):
        with pytest.raises(ConfigError) as info:
            make()
        _one_line_error(info, *words)


@pytest.mark.parametrize("servers", ["", "  ", "host:notaport", ":9092", "host:0", "host:70000", "a:9092,b:x"])
def test_a_bootstrap_address_that_is_not_host_port_is_one_line_at_once(servers: str) -> None:
    with pytest.raises(ConfigError, match=r"bootstrap server|bootstrap_servers is empty") as info:
        KafkaConnection(servers)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("servers", ["localhost", "127.0.0.1:9092", "a:9092,b:9093", "[::1]:9092"])
def test_addresses_kafka_takes_are_taken(servers: str) -> None:
    assert KafkaConnection(servers).bootstrap_servers == servers
