"""Prices from `mitre/data/prices.yaml`: USD per million tokens for input, output, cache reads and cache
writes (per cache lifetime), the vendor's prompt-cache rules per model; batch calls at the batch discount.
Unknown models (local servers) cost nothing and are unpriced."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

from mitre.models import Usage


@dataclass(frozen=True)
class Price:
    model: str
    provider: str
    input: float
    output: float
    cache_read: float
    cache_write: float  # a write to the default (5-minute) cache
    cache_write_1h: float | None = None  # a write to the 1-hour cache, where the vendor offers one
    min_cacheable_tokens: int = 0  # shorter prefixes are not cached at all
    cache_idle_s: float | None = None  # automatic caches (OpenAI): how long an idle prefix survives

    def cache_write_price(self, ttl: str) -> float:
        return self.cache_write_1h if ttl == "1h" and self.cache_write_1h is not None else self.cache_write


class PriceTable:
    def __init__(self, prices: Mapping[str, Price], per_tokens: int = 1_000_000, batch_discount: float = 0.5) -> None:
        self.prices = dict(prices)
        self.per_tokens = per_tokens
        self.batch_discount = batch_discount

    @classmethod
    def load(cls, path: Path | None = None) -> PriceTable:
        text = path.read_text() if path else resources.files("mitre").joinpath("data/prices.yaml").read_text()
        raw = yaml.safe_load(text)
        prices: dict[str, Price] = {}
        for name, p in raw["models"].items():
            price = Price(
                model=name,
                provider=str(p.get("provider", "")),
                input=float(p["input"]),
                output=float(p["output"]),
                cache_read=float(p.get("cache_read", p["input"])),
                cache_write=float(p.get("cache_write", p["input"])),
                cache_write_1h=float(p["cache_write_1h"]) if "cache_write_1h" in p else None,
                min_cacheable_tokens=int(p.get("min_cacheable_tokens", 0)),
                cache_idle_s=float(p["cache_idle_s"]) if "cache_idle_s" in p else None,
            )
            for alias in (name, *p.get("aliases", ())):
                prices[alias] = price
        return cls(prices, int(raw.get("per_tokens", 1_000_000)), float(raw.get("batch_discount", 0.5)))

    def models(self) -> list[Price]:
        return list({p.model: p for p in self.prices.values()}.values())

    def price(self, model: str | None) -> Price | None:
        if not model:
            return None
        if model in self.prices:
            return self.prices[model]
        # Dated snapshots (claude-haiku-4-5-20251001, gpt-4o-mini-2024-07-18) price as their family.
        for name in sorted(self.prices, key=len, reverse=True):
            if model.startswith(name + "-"):
                return self.prices[name]
        return None

    def cost(self, model: str | None, usage: Usage, batch: bool = False, cache_ttl: str = "5m") -> float | None:
        p = self.price(model)
        if p is None:
            return None
        usd = (
            usage.input_tokens * p.input
            + usage.output_tokens * p.output
            + usage.cache_read_tokens * p.cache_read
            + usage.cache_write_tokens * p.cache_write_price(cache_ttl)
        ) / self.per_tokens
        return usd * (self.batch_discount if batch else 1.0)
