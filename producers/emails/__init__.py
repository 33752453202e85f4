"""The in-store order producer: the stores' confirmation emails (IMAP) → ``stores.order_confirmations``.

- ``imap``: reads the mailbox incrementally by UID, through outages, respecting UIDVALIDITY.
- ``parser``: one email → a checked ``StoreOrder``, or a ``ParseError`` saying what is wrong.
- ``checkpoint``: the last committed UID per mailbox, kept in a compacted Kafka topic.
- ``producer``: the loop, one Kafka transaction per batch (orders + dead letters + checkpoint), so each
  email is in Kafka exactly once for ``read_committed`` consumers.
"""
