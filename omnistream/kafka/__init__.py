"""The Kafka toolkit every producer, the sink, replay and inspection build on; one job per module.

- :mod:`omnistream.kafka.clients`: client and producer configs, a checked admin client, topic creation;
- :mod:`omnistream.kafka.registry`: the schema-registry client, what is worth retrying, schema registration;
- :mod:`omnistream.kafka.serde`: the schemas in ``schemas/``, the Confluent wire format, Avro decoding;
- :mod:`omnistream.kafka.offsets`: partitions, watermarks, committed offsets, reading partitions to their end;
- :mod:`omnistream.kafka.record_counts`: records (not offsets) as a ``read_committed`` consumer sees them;
- :mod:`omnistream.kafka.transactions`: a transactional producer, exactly once.
"""
