"""The master-data snapshot producer: customers, products and stores from the REST API into compacted topics.

``client`` pages through the API with retries, ``records`` fits items to the Avro schemas, ``state`` reads
what a topic says is alive, ``producer`` publishes snapshots and tombstones, ``run`` repeats them.
"""
