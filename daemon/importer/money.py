"""The import's exact money arithmetic: each price as an integer multiplier of 10**-(6 +
decimals) USD (the most decimals of any price so far), the integer widths the token and cost
sums need (32, 64 or 128 bits), and, past 128 bits, the costs priced with Python's integers
instead (`TooWide`, `priced_in_python`). `group` does the grouping; this only says what the
sums are counted in."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from daemon.importer.read import parse_price

INT64_SAFE = 2**62  # sums below this can't overflow a 64-bit integer
INT128_SAFE = 2**126


class TooWide(Exception):
    """The costs may outgrow 128-bit integers."""


class Pricing:
    """The costs' scale so far and what bounds their sums: the most decimals of any price
    seen, the scale the costs are counted in, the largest price multiplier and an upper
    bound on the sum of all token counts."""

    def __init__(self, pl: Any) -> None:
        self.pl = pl
        self.decimals_seen = 0  # the most of any valid price so far
        self.decimals = 0  # the costs' scale so far (10**-(6 + decimals) USD)
        self.top = 0  # the largest price multiplier so far
        self.tokens = 0.0  # an upper bound on the sum of all token counts

    def price(self, text: str) -> Decimal | None:
        """A price text's value (None: not a price), noting its decimals."""
        value = parse_price(text)
        if value is not None:  # 2.50 and 2.5000 are one price, with four decimals
            self.decimals_seen = max(self.decimals_seen, decimals(value))
        return value

    def token_type(self) -> Any:
        """The integer type the token counts are summed in."""
        return self.pl.Int64 if self.tokens < INT64_SAFE else self.pl.Int128

    def units_type(self, values: list[Decimal | None], partials: list[Any]) -> Any:
        """The integer type a chunk's costs are summed in, after scaling the earlier chunks'
        (``partials``, replaced in place) up if one of its prices has more decimals than any
        so far."""
        pl = self.pl
        factor: int = 10 ** (self.decimals_seen - self.decimals)
        self.decimals, self.top = self.decimals_seen, self.top * factor
        prices = [value for value in values if value is not None]
        self.top = max([self.top] + [scaled(price, self.decimals) for price in prices])
        units_type = self.bounded()
        if factor > 1 and partials:
            if factor >= INT128_SAFE:
                raise TooWide
            # (the factor itself must fit too, even where the costs so far are all 0)
            wide = units_type if factor < INT64_SAFE else pl.Int128
            units = pl.col("units").cast(wide) * pl.lit(factor, dtype=wide)
            partials[:] = [partial.with_columns(units) for partial in partials]
        return units_type

    def bounded(self) -> Any:
        """The integer type the costs so far fit in (`TooWide`: none)."""
        bound = max(self.tokens, 1) * self.top  # the sums, and the multipliers themselves
        if bound >= INT128_SAFE:
            raise TooWide
        return self.pl.Int64 if bound < INT64_SAFE else self.pl.Int128


def narrowed(pl: Any, partial: Any) -> Any:
    """The partial groups with their sums in 32 bits where they fit (most do): the groups
    so far are what the import holds in memory."""
    sums = ("input", "output", "units")
    fits = partial.select(pl.col(sums).max() < 2**31).row(0, named=True)
    return partial.cast({name: pl.Int32 for name, fit in fits.items() if fit})


def priced_in_python(pl: Any, partials: list[Any], multipliers: list[int]) -> Any:
    """The groups priced and merged with Python's integers, the cost as decimal digits."""
    merged: dict[tuple[int, int, int], list[int]] = {}
    for partial in partials:
        for bucket, key, model, input_id, output_id, calls, inp, out in partial.select(
            "bucket", "key", "model_id", "input_id", "output_id", "calls", "input", "output"
        ).iter_rows():
            group = merged.setdefault((bucket, key, model), [0, 0, 0, 0])
            group[0] += calls
            group[1] += inp
            group[2] += out
            group[3] += inp * multipliers[input_id] + out * multipliers[output_id]
    return pl.DataFrame(
        [(*k, calls, inp, out, str(units)) for k, (calls, inp, out, units) in merged.items()],
        schema={
            "bucket": pl.Int32,
            "key": pl.UInt32,
            "model_id": pl.UInt32,
            "calls": pl.Int64,
            "input": pl.Int128,
            "output": pl.Int128,
            "units": pl.String,
        },
        orient="row",
    )


def decimals(price: Decimal) -> int:
    return max(0, -int(price.as_tuple().exponent))


def scaled(price: Decimal, decimals: int) -> int:
    """``price * 10**decimals``, exactly (``decimals`` is at least the price's own)."""
    _sign, digits, exponent = price.as_tuple()
    assert isinstance(exponent, int)
    power: int = 10 ** (exponent + decimals)
    return int("".join(map(str, digits))) * power
