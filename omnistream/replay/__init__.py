"""Replays: land topics again from a point (:mod:`.landing`), resend dead letters (:mod:`.dead_letters`)."""
