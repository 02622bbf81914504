"""Checks of numeric options: counts, positive reals (local: no message is sent)."""

import math
import numbers

__all__ = ["check_count", "check_positive"]


def check_count(name, value, *, low=1, high=None, allow_none=False):
    """Return ``value`` as an int in ``low..high``; raise otherwise.

    ``None`` is returned as is when ``allow_none`` is true.
    """
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < low or (high is not None and value > high):
        upper = "" if high is None else f"..{high}"
        raise ValueError(f"{name} must be in {low}{upper}, got {value}")
    return int(value)


def check_positive(name, value, *, zero=False):
    """Return ``value`` as a float; raise unless it is finite and > 0 (>= 0 with ``zero``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not (math.isfinite(value) and (value >= 0 if zero else value > 0)):
        bound = ">= 0" if zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value}")
    return value
