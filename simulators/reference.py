"""The retailer's reference data, generated once per seed and shared by every simulator.

The same store ids, product SKUs and customer ids appear in the API, the online shop, the store emails
and the history, so the warehouse can join them. Generation is deterministic for a seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import lru_cache

import numpy as np
from faker import Faker

CENT = Decimal("0.01")

# (locale, city, country, tax rate, time zone); every store sells in EUR, each in its own number format.
STORE_SITES = [
    ("de_DE", "Berlin", "DE", "0.19", "Europe/Berlin"),
    ("de_DE", "Hamburg", "DE", "0.19", "Europe/Berlin"),
    ("de_DE", "München", "DE", "0.19", "Europe/Berlin"),
    ("fr_FR", "Paris", "FR", "0.20", "Europe/Paris"),
    ("fr_FR", "Lyon", "FR", "0.20", "Europe/Paris"),
    ("nl_NL", "Amsterdam", "NL", "0.21", "Europe/Amsterdam"),
    ("nl_NL", "Utrecht", "NL", "0.21", "Europe/Amsterdam"),
    ("en_IE", "Dublin", "IE", "0.23", "Europe/Dublin"),
    ("en_IE", "Cork", "IE", "0.23", "Europe/Dublin"),
    ("es_ES", "Madrid", "ES", "0.21", "Europe/Madrid"),
    ("es_ES", "Barcelona", "ES", "0.21", "Europe/Madrid"),
    ("it_IT", "Milano", "IT", "0.22", "Europe/Rome"),
]
CATEGORIES = ["apparel", "footwear", "home", "kitchen", "electronics", "beauty", "toys", "garden"]
ONLINE_TAX_RATE = Decimal("0.19")
EPOCH = datetime(2016, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Store:
    store_id: str
    name: str
    city: str
    country: str
    locale: str
    timezone: str
    tax_rate: Decimal
    opened_at: datetime


@dataclass(frozen=True)
class Product:
    sku: str
    name: str
    category: str
    unit_price: Decimal
    created_at: datetime


@dataclass(frozen=True)
class Customer:
    customer_id: int
    first_name: str
    last_name: str
    email: str
    street: str
    city: str
    postcode: str
    country: str
    created_at: datetime


@dataclass(frozen=True)
class Reference:
    seed: int
    stores: tuple[Store, ...]
    products: tuple[Product, ...]
    customers: tuple[Customer, ...]


def money(value: float | str | Decimal) -> Decimal:
    """A Decimal rounded to the cent (half-up, as a till does)."""
    return Decimal(str(value)).quantize(CENT, rounding="ROUND_HALF_UP")


@lru_cache(maxsize=4)
def build_reference(seed: int = 42, n_products: int = 400, n_customers: int = 3000) -> Reference:
    """Generate stores, products and customers deterministically for ``seed``."""
    rng = np.random.default_rng(seed)
    fake = Faker(["de_DE", "fr_FR", "nl_NL", "en_IE", "es_ES", "it_IT"])
    fake.seed_instance(seed)

    stores = tuple(
        Store(
            store_id=f"S{i + 1:03d}",
            name=f"omnistream {city}",
            city=city,
            country=country,
            locale=locale,
            timezone=tz,
            tax_rate=Decimal(rate),
            opened_at=EPOCH + timedelta(days=int(rng.integers(0, 365))),
        )
        for i, (locale, city, country, rate, tz) in enumerate(STORE_SITES)
    )
    prices = np.round(np.exp(rng.normal(3.2, 0.8, n_products)), 2).clip(0.99, 999.99)
    products = tuple(
        Product(
            sku=f"SKU-{i + 1:05d}",
            name=f"{fake.word().capitalize()} {CATEGORIES[i % len(CATEGORIES)]} {i + 1}",
            category=CATEGORIES[i % len(CATEGORIES)],
            unit_price=money(prices[i]),
            created_at=EPOCH + timedelta(days=int(rng.integers(0, 3000))),
        )
        for i in range(n_products)
    )
    customers = []
    for i in range(n_customers):
        first, last = fake.first_name(), fake.last_name()
        customers.append(
            Customer(
                customer_id=i + 1,
                first_name=first,
                last_name=last,
                email=f"{first}.{last}.{i + 1}@example.com".lower().replace(" ", ""),
                street=fake.street_address(),
                city=fake.city(),
                postcode=fake.postcode(),
                country=fake.current_country_code(),
                created_at=EPOCH + timedelta(days=int(rng.integers(0, 3600))),
            )
        )
    return Reference(seed=seed, stores=stores, products=products, customers=tuple(customers))
