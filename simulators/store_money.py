"""Euro amounts as the branch stores' tills print them: re-exported from ``omnistream.money``.

The formats moved to ``omnistream.money`` because the email producer parses what the simulator writes, and a
producer should not depend on a simulator; this module keeps the simulator's imports working.
"""

from __future__ import annotations

from omnistream.money import (
    CENT,
    FORMATS,
    MoneyFormat,
    format_money,
    format_percent,
    money_format,
    parse_money,
)

__all__ = ["CENT", "FORMATS", "MoneyFormat", "format_money", "format_percent", "money_format", "parse_money"]
