"""Local services Beamline runs for users and tests: the Kafka broker, Prism, Flink."""
