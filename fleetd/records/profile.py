"""A profile (one login or API key of a backend) and its limits, as stored and as the router reads them."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Literal
from urllib.parse import urlparse

from fleetd.timefmt import format_duration

Tier = Literal["local", "subscription", "metered"]
TIERS: tuple[Tier, ...] = ("local", "subscription", "metered")
PRICE_FIELDS = ("price_input", "price_output", "price_cache_read", "price_cache_write")
Unit = Literal["tok", "req", "usd"]


def is_loopback(url: str | None) -> bool:
    """A URL on this host (a local model server): no key needed, no traffic leaves the machine."""
    try:
        host = urlparse(url or "").hostname or ""
    except ValueError:
        return False
    return host in ("localhost", "::1") or host.startswith("127.")


@dataclass(frozen=True)
class Limit:
    """`5h=4000000tok`: at most `amount` of `unit` per rolling `window_s` (heartbeat/limits.py parses them)."""

    window_s: float
    amount: float
    unit: Unit

    @property
    def label(self) -> str:
        return format_duration(self.window_s)

    def describe(self) -> str:
        """As `--limit` takes it: never in exponent form (`1e-07usd` is refused)."""
        amount = str(int(self.amount)) if self.amount == int(self.amount) else f"{Decimal(repr(self.amount)):f}"
        return f"{self.label}={amount}{self.unit}"

    def to_json(self) -> dict[str, object]:
        return {"window_s": self.window_s, "amount": self.amount, "unit": self.unit}

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Limit:
        return cls(float(data["window_s"]), float(data["amount"]), data["unit"])  # type: ignore[arg-type]


@dataclass
class Profile:
    name: str
    backend: str
    tier: Tier
    config_dir: str
    base_url: str | None = None
    model: str | None = None
    price_input: float | None = None  # USD per million tokens
    price_output: float | None = None
    price_cache_read: float | None = None
    price_cache_write: float | None = None
    has_secret: bool = False
    enabled: bool = True
    limits: list[Limit] = field(default_factory=list)
    default_reset_s: float | None = None  # a rate limit that names no reset clears after this long
    daily_cost: float | None = None  # USD per rolling 24 h; over it the profile is passed over
    created_at: datetime | None = None
    updated_at: datetime | None = None

    def cost(self, input_tokens: int, output_tokens: int, cache_read: int, cache_write: int) -> float | None:
        """What an attempt cost at this profile's prices, when it has any."""
        prices = (self.price_input, self.price_output, self.price_cache_read, self.price_cache_write)
        if all(p is None for p in prices):
            return None
        counts = (input_tokens, output_tokens, cache_read, cache_write)
        return sum((p or 0.0) * n for p, n in zip(prices, counts, strict=True)) / 1_000_000
