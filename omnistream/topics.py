"""Topic names, ``<source>.<entity>``, and their dead-letter topics. The one place they are spelled."""

from __future__ import annotations

CDC_PREFIX = "onlinedb"
ORDERS = f"{CDC_PREFIX}.shop.orders"
ORDER_ITEMS = f"{CDC_PREFIX}.shop.order_items"
STORE_ORDERS = "stores.order_confirmations"
CUSTOMERS = "masterdata.customers"
PRODUCTS = "masterdata.products"
STORES = "masterdata.stores"
# The email producer's IMAP checkpoint (last committed UID per mailbox), compacted, written in the same
# Kafka transaction as the records it covers.
EMAIL_CHECKPOINTS = "_omnistream.email_checkpoints"

PIPELINE_TOPICS = (ORDERS, ORDER_ITEMS, STORE_ORDERS, CUSTOMERS, PRODUCTS, STORES)
COMPACTED_TOPICS = (CUSTOMERS, PRODUCTS, STORES, EMAIL_CHECKPOINTS)


def dlq(topic: str) -> str:
    """The dead-letter topic beside ``topic``."""
    return f"{topic}.dlq"
