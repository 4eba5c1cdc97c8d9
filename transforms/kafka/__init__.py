"""Kafka I/O for Beam in Python, without a Java expansion service: ReadFromKafka, WriteToKafka, topic helpers.

Beam's own Kafka connector for Python is a Java cross-language transform; this
package runs on any portable runner with a Python Kafka client. Two clients
can do the I/O, named by the :class:`KafkaConnection`: ``"kafka-python"`` (the
default, always installed) and ``"confluent"`` (confluent-kafka, built on
librdkafka; faster, installed separately). Both sit behind one small client
interface, so one DoFn drives either.

Modules, lowest first (a module imports only those above it):

- ``records``: :class:`KafkaRecord`, :class:`KafkaBatch` and the record-batch decoder;
- ``progress``, ``worker_gc``: progress totals and the reader's GC setting;
- ``config``: client settings in Kafka's names and each client's, properties files, secrets;
- ``connection``: :class:`KafkaConnection`;
- ``kafka_python``, ``confluent``, ``clients``: the two clients and the interface over them;
- ``admin``: :func:`wait_for_kafka`, :func:`ensure_topics`, :func:`count_records`,
  :func:`partition_offsets`, :func:`commit_group_offsets`;
- ``spec``, ``watermarks``, ``partitions``, ``read``: :class:`ReadFromKafka`, its splittable DoFn, its
  watermarks and what it is told;
- ``write``: :class:`WriteToKafka`, and :class:`KafkaSender` for plain code;
- ``fetch``: :class:`FetchRecords`, records looked up by offset.
"""

from transforms.kafka.admin import (
    commit_group_offsets,
    count_records,
    ensure_topics,
    first_record_times,
    partition_offsets,
    wait_for_kafka,
)
from transforms.kafka.config import (
    KAFKA_CLIENTS,
    ClientSettings,
    client_config,
    load_client_properties,
    parse_client_setting,
    redacted,
)
from transforms.kafka.connection import KafkaConnection
from transforms.kafka.fetch import FetchRecords
from transforms.kafka.progress import LOCAL_PROGRESS, PROGRESS_DIR_ENV
from transforms.kafka.read import GLOBAL_WINDOWS, METRICS_NAMESPACE, ReadFromKafka
from transforms.kafka.records import KafkaBatch, KafkaBatchCoder, KafkaRecord
from transforms.kafka.spec import EventTimeOf, ReadTiming, StartAt, StopAt
from transforms.kafka.watermarks import event_time_step
from transforms.kafka.write import OUTAGE_S, KafkaSender, KafkaWriteError, WriteToKafka

__all__ = [
    "GLOBAL_WINDOWS",
    "KAFKA_CLIENTS",
    "LOCAL_PROGRESS",
    "METRICS_NAMESPACE",
    "OUTAGE_S",
    "PROGRESS_DIR_ENV",
    "ClientSettings",
    "EventTimeOf",
    "FetchRecords",
    "KafkaBatch",
    "KafkaBatchCoder",
    "KafkaConnection",
    "KafkaRecord",
    "KafkaSender",
    "KafkaWriteError",
    "ReadFromKafka",
    "ReadTiming",
    "StartAt",
    "StopAt",
    "WriteToKafka",
    "client_config",
    "commit_group_offsets",
    "count_records",
    "ensure_topics",
    "event_time_step",
    "first_record_times",
    "load_client_properties",
    "parse_client_setting",
    "partition_offsets",
    "redacted",
    "wait_for_kafka",
]
