"""Reusable Beam transforms: Kafka I/O, event decoding, per-key state, sinks."""
