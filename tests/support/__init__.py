"""Helpers the tests and benchmarks share (no tests of their own): one module per kind of thing they set up.

``sink`` produces and reads back the landing sink's records, ``email`` gives a test its own mailbox and
topics, ``cdc_sandbox`` an isolated copy of the shop's capture, ``second_stack`` a stack beside the shared
one, ``outage_relay`` a cuttable path to a server, ``simulator_runs`` a simulator run as the supervisor runs
it, and ``waiting`` polls a condition to its deadline.
"""
