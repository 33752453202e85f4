"""The root of omnistream's own errors, and what each means for the command line.

Every error a user can meet derives from :class:`OmnistreamError`, so the CLI maps them to one line and an
exit code in one place (``omnistream.cli``): 2 for a usage error (bad arguments, an unknown name, an
invalid setting), 1 for a failure (a server that stays unreachable, a check that fails).
"""

from __future__ import annotations


class OmnistreamError(Exception):
    """A failure the user can act on; its message says what to fix. Exit code 1."""

    exit_code = 1


class UsageError(OmnistreamError):
    """The command was asked for something that cannot be: a bad argument, an unknown name. Exit code 2."""

    exit_code = 2


class Unreachable(OmnistreamError):
    """A server did not answer, after retries where retrying makes sense. Exit code 1."""
