"""The numbers the command line and the training functions accept, checked in one place.

Every numeric setting (a learning rate, a clip norm, a step count, a batch size, a flag
of ``jaxrnn train``) goes through :func:`number` before it is used, with the name the
user typed: ``"--lr"`` for the command line, ``"max_norm"`` for :func:`jaxrnn.clipped`.
A bad value raises ``ValueError`` naming it, what was expected and what was given::

    --lr must be a finite number, got nan (expected a positive number)
    --clip must be a number >= 0 (0 turns clipping off), got -1.0
    num_steps must be a positive int, got 0

NaN passes every ordered comparison as ``False``, which is how ``--lr nan`` used to slip
through a ``v <= 0`` test; the checks here ask for what is wanted (``v > 0``) and test
finiteness explicitly.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["number", "positive_int", "non_negative_int", "positive", "optional"]


def _describe(integer: bool, low, high, low_open: bool, high_open: bool) -> str:
    kind = "int" if integer else "number"
    finite = ""  # finiteness has its own message
    if integer and (low is None or not (low == 0 and low_open)):
        kind, a = "int", "an"
    else:
        a = "a"
    if low is not None and high is None:
        if low == 0 and low_open:
            return f"a {finite}positive {kind}"
        return f"{a} {finite}{kind} {'>' if low_open else '>='} {low:g}"
    if high is not None and low is None:
        return f"{a} {finite}{kind} {'<' if high_open else '<='} {high:g}"
    if low is not None and high is not None:
        return f"{a} {finite}{kind} in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    return f"{a} {finite}{kind}"


def number(
    name: str,
    value: Any,
    *,
    integer: bool = False,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    note: str = "",
) -> int | float:
    """``value`` as a Python ``int`` / ``float`` if it is a finite number in the range.

    Args:
      name: the argument as the user wrote it (``"--batch-size"``, ``"max_norm"``).
      value: the value given.
      integer: require an integer (``bool`` is refused; NumPy integers are accepted).
      low, high: the bounds, ``None`` for none; ``low_open`` / ``high_open`` exclude them.
      note: appended to the expectation in the message, e.g. ``"(0 turns clipping off)"``.

    Raises:
      ValueError: not a number of the wanted kind, not finite, or out of range.
    """
    want = _describe(integer, low, high, low_open, high_open) + (f" {note}" if note else "")
    if isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be {want}, got {value!r}")
    if integer:
        if not isinstance(value, (int, np.integer)):
            raise ValueError(f"{name} must be {want}, got {value!r}")
        v: int | float = int(value)
    else:
        if not isinstance(value, (int, float, np.integer, np.floating)):
            raise ValueError(f"{name} must be {want}, got {value!r}")
        v = float(value)
        if not math.isfinite(v):
            raise ValueError(f"{name} must be a finite number, got {v!r} (expected {want})")
    if low is not None and not (v > low if low_open else v >= low):
        raise ValueError(f"{name} must be {want}, got {value!r}")
    if high is not None and not (v < high if high_open else v <= high):
        raise ValueError(f"{name} must be {want}, got {value!r}")
    return v


def positive_int(name: str, value: Any) -> int:
    """``number(name, value, integer=True, low=1)``: a count (steps, a batch size)."""
    return number(name, value, integer=True, low=0, low_open=True)


def non_negative_int(name: str, value: Any) -> int:
    """An int ``>= 0`` (a start position, a seed)."""
    return number(name, value, integer=True, low=0)


def positive(name: str, value: Any) -> float:
    """A finite number ``> 0`` (a learning rate, a norm)."""
    return number(name, value, low=0, low_open=True)


def optional(check, name: str, value: Any, *args, **kwargs):
    """``None`` stays ``None``; anything else goes through ``check(name, value, ...)``."""
    return None if value is None else check(name, value, *args, **kwargs)
