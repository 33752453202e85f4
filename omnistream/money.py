"""Euro amounts the way each branch store's till prints them, and back; exact, half-up cent rounding.

Formatting is implemented here rather than taken from the C library or Babel so that it is the same on every
machine and every version: ``de_DE`` ``1.234,56 €``, ``fr_FR`` ``1 234,56 €``, ``nl_NL`` ``€ 1.234,56``,
``en_IE`` ``€1,234.56``; ``es_ES`` and ``it_IT`` print like ``de_DE``. Separators are plain ASCII (the French
group separator is an ordinary space). Amounts are ``Decimal`` whole cents; nothing here goes through a float.

The store-email simulator writes amounts with it and the email producer reads them back, so both sides share
one definition of each format.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from functools import cached_property

CENT = Decimal("0.01")
_NUMBER = "{number}"
_PERCENT = re.compile(r"(?P<number>\d+(?:\.\d+)?)%")


@dataclass(frozen=True)
class MoneyFormat:
    """How one locale writes an amount: separators, where the sign and the symbol go, and the currency."""

    group: str
    decimal: str
    positive: str  # a pattern around {number}
    negative: str
    currency: str = "EUR"  # ISO 4217 code of the symbol in the patterns

    @cached_property
    def _regexes(self) -> tuple[re.Pattern[str], re.Pattern[str]]:
        number = (
            rf"(?P<integer>\d{{1,3}}(?:{re.escape(self.group)}\d{{3}})*)"
            rf"{re.escape(self.decimal)}(?P<cents>\d{{2}})"
        )
        positive, negative = (
            re.escape(p).replace(re.escape(_NUMBER), number) for p in (self.positive, self.negative)
        )
        return re.compile(positive), re.compile(negative)

    def format(self, amount: Decimal) -> str:
        """``amount`` (whole cents) in this format."""
        if amount != amount.quantize(CENT):
            raise ValueError(f"{amount} is not a whole number of cents")
        integer, cents = f"{abs(amount):.2f}".split(".")
        groups: list[str] = []
        while len(integer) > 3:
            integer, tail = integer[:-3], integer[-3:]
            groups.insert(0, tail)
        number = self.group.join([integer, *groups]) + self.decimal + cents
        return (self.negative if amount < 0 else self.positive).replace(_NUMBER, number)

    def parse(self, text: str) -> Decimal:
        """The amount written as ``text`` in this format; ``ValueError`` if it is not exactly that."""
        positive, negative = self._regexes
        for regex, sign in ((positive, ""), (negative, "-")):
            match = regex.fullmatch(text.strip())
            if match:
                integer = match["integer"].replace(self.group, "")
                return Decimal(f"{sign}{integer}.{match['cents']}")
        raise ValueError(f"{text!r} is not an amount written as {self.positive!r}")


_LIKE_GERMAN = MoneyFormat(group=".", decimal=",", positive="{number} €", negative="-{number} €")
FORMATS: dict[str, MoneyFormat] = {
    "de_DE": _LIKE_GERMAN,
    "es_ES": _LIKE_GERMAN,
    "it_IT": _LIKE_GERMAN,
    "fr_FR": MoneyFormat(group=" ", decimal=",", positive="{number} €", negative="-{number} €"),
    "nl_NL": MoneyFormat(group=".", decimal=",", positive="€ {number}", negative="€ -{number}"),
    "en_IE": MoneyFormat(group=",", decimal=".", positive="€{number}", negative="-€{number}"),
}


def money_format(locale: str) -> MoneyFormat:
    """The format of ``locale``; ``KeyError`` names the locales there are."""
    try:
        return FORMATS[locale]
    except KeyError:
        raise KeyError(f"no money format for locale {locale!r}; known: {sorted(FORMATS)}") from None


def format_money(amount: Decimal, locale: str) -> str:
    """``amount`` as a till in ``locale`` prints it, e.g. ``format_money(Decimal("1234.56"), "fr_FR")``."""
    return money_format(locale).format(amount)


def parse_money(text: str, locale: str) -> Decimal:
    """The inverse of ``format_money``."""
    return money_format(locale).parse(text)


def round_cents(value: Decimal) -> Decimal:
    """``value`` rounded to the cent, half-up, as a till rounds tax."""
    return value.quantize(CENT, rounding=ROUND_HALF_UP)


def format_percent(rate: Decimal) -> str:
    """A tax rate as printed on a receipt: ``Decimal("0.19")`` → ``19%``, ``Decimal("0.055")`` → ``5.5%``."""
    return f"{(rate * 100).normalize():f}%"


def parse_percent(text: str) -> Decimal:
    """The inverse of ``format_percent``: ``"19%"`` → ``Decimal("0.19")``; ``ValueError`` otherwise."""
    match = _PERCENT.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a percentage such as '19%' or '5.5%'")
    return Decimal(match["number"]) / 100
