"""Range methods: pure functions from a histogram and a ``RangeSpec`` to a clipping ``Range``."""

from __future__ import annotations

from typing import Callable

from calibrators.histogram import Histogram
from calibrators.kl import kl_range
from calibrators.max import max_range
from calibrators.mse import mse_range
from calibrators.percentile import percentile_range
from calibrators.types import Range, RangeSpec

RangeMethod = Callable[[Histogram, RangeSpec], Range]

METHODS: dict[str, RangeMethod] = {
    "max": max_range,
    "percentile": percentile_range,
    "kl": kl_range,
    "mse": mse_range,
}


class UnknownMethod(ValueError):
    """A method name that is not in ``METHODS``."""


def method(name: str) -> RangeMethod:
    """The range method called ``name``; an unknown name lists the known ones."""
    try:
        return METHODS[name]
    except KeyError:
        raise UnknownMethod(f"unknown range method {name!r}; known: {', '.join(METHODS)}") from None


__all__ = ["METHODS", "Histogram", "Range", "RangeSpec", "UnknownMethod", "method"]
