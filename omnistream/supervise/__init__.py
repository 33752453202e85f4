"""Always on: every server and pipeline process under one supervisord, watched, and reported on.

- ``catalogue``: the one list of long-running services (shared with docker-compose.yml, checked by a test);
- ``programs``: what each service runs, as supervisord programs;
- ``config``: supervisord's configuration file, rendered from the programs;
- ``control``: supervisord itself: start it, talk to it over XML-RPC, shut it down;
- ``events``: an event listener that records every process state change (restart counts, crash loops);
- ``watchdog``: restarts FAILED Connect tasks and FATAL programs, with backoff;
- ``pipeline``: ``omnistream up`` / ``down`` (with ``--drain``);
- ``status``: ``omnistream status``: one view of whether data flows, with an exit code.
"""
