"""Argument checks shared by the optimizers (local: no message is sent)."""

import math
import numbers

from mpi4py import MPI

from optim.flat import FlatParameters

__all__ = ["check_number", "check_int", "check_flag", "check_comm", "check_flat",
           "check_timeout"]


def check_number(name, value, *, low=None, high=None, low_open=False, high_open=False,
                 because=""):
    """Return ``value`` as a float; raise unless it is a finite real in range."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if not math.isfinite(value) or too_low or too_high:
        raise ValueError(f"{name} must be {_range(low, high, low_open, high_open)}, "
                         f"got {value}{because}")
    return value


def _range(low, high, low_open, high_open):
    parts = []
    if low is not None:
        parts.append(f"{'>' if low_open else '>='} {low}")
    if high is not None:
        parts.append(f"{'<' if high_open else '<='} {high}")
    return " and ".join(parts) if parts else "finite"


def check_int(name, value, *, low):
    """Return ``value`` as an int; raise unless it is an int >= ``low``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return int(value)


def check_flag(name, value):
    """Return ``value``; raise unless it is a bool."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def check_comm(comm):
    """Raise unless ``comm`` is an MPI intracommunicator."""
    if not isinstance(comm, MPI.Intracomm):
        raise TypeError(f"comm must be an mpi4py MPI.Intracomm, got {type(comm).__name__}")
    if comm == MPI.COMM_NULL:
        raise ValueError("comm is MPI.COMM_NULL")


def check_flat(params):
    """Raise unless ``params`` is a :class:`FlatParameters`."""
    if not isinstance(params, FlatParameters):
        raise TypeError(f"params must be an optim.FlatParameters, got "
                        f"{type(params).__name__}; wrap the arrays with "
                        "optim.FlatParameters(arrays) and use its .params views")


def check_timeout(timeout):
    """Return ``timeout``; raise unless it is None or a number of seconds > 0."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real):
        raise TypeError(f"timeout must be a number of seconds or None, got {timeout!r}")
    if not timeout > 0:
        raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
    return float(timeout)
