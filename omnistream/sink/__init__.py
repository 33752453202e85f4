"""The landing sink: Kafka topics to Parquet files, exactly once per (topic, partition, offset).

Layout (local directory or GCS bucket)::

    landing/<topic>/partition=<p>/<topic>+<p>+<startOffset>+<endOffset>.parquet

Each file holds the typed columns of the Avro value plus ``record_metadata`` (see
:mod:`omnistream.sink.arrow`), the shape of the Snowflake connector's schematized tables.

Offset accounting: a file accounts for every offset from ``startOffset`` to ``endOffset``; the next file of
the partition starts at ``endOffset + 1``. Within that range an offset is either

- a row of the file,
- a record that was dead-lettered: listed in the file's ``omnistream.landing`` key-value metadata as
  ``dead_lettered_offsets``, the record itself in ``<topic>.dlq`` as a ``DeadLetter``
  (schemas/dead_letter.avsc) keyed ``<topic>/<partition>/<offset>``,
- or not a record a consumer ever sees: a transaction marker, a record of an aborted transaction, or one
  compaction removed.

Files therefore tile each partition without gaps or overlaps, and recovery resumes at the highest
``endOffset + 1``; see :mod:`omnistream.sink.consumer` for the rules that make that exactly once.

The one exception is compaction (:mod:`omnistream.sink.compaction`): a merged file covers the range of the
small contiguous files it was made from, which stay beside it for a grace period before they are deleted.
The *live* files (those no other file covers) always tile. Reader contract: list a partition once, skip
covered files (:func:`omnistream.sink.layout.live_files`) or keep one row per (partition, offset), and
finish reading within the grace period; then every record is read exactly once.
"""
