"""Topic inspection for the local stack, what Kafka UI shows: ``omnistream topics list | describe | tail``."""
