"""Ranges beside the defaults of the settings dataclasses, and the one check of a typed configuration: every
number in its range and no key the schema does not know (Hydra's `+key=value` adds one), each refused in one line
naming the key, before any data or model is read."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional

from mt.files import InputError

RANGE = "range"  # the metadata key of a field's (low, high, low_open, high_open)


def bounded(default: Any, low: Optional[float] = None, high: Optional[float] = None, *, above: Optional[float] = None,
            below: Optional[float] = None):
    """A dataclass field with a default and a range: at least `low` or more than `above`, at most `high` or less
    than `below` (None: unbounded; an Optional field may also be None)."""
    return dataclasses.field(default=default, metadata={RANGE: (
        above if above is not None else low, below if below is not None else high, above is not None,
        below is not None)})


def _out_of_range(value: float, low, high, low_open: bool, high_open: bool) -> Optional[str]:
    if isinstance(value, float) and math.isnan(value):
        return "is not a number"
    if low is not None and (value <= low if low_open else value < low):
        return f"must be {'more than' if low_open else 'at least'} {low}"
    if high is not None and (value >= high if high_open else value > high):
        return f"must be {'less than' if high_open else 'at most'} {high}"
    return None


def check(settings: Any, prefix: str = "") -> None:
    """Refuse, in one line naming the key, a number out of its field's range or a key no field declares."""
    if not dataclasses.is_dataclass(settings):
        return
    fields = {f.name: f for f in dataclasses.fields(settings)}
    unknown = sorted(set(vars(settings)) - set(fields))
    if unknown:
        raise InputError(f"{prefix}{unknown[0]}: no such key (the keys here: {', '.join(sorted(fields))})")
    for name, f in fields.items():
        value = getattr(settings, name)
        if RANGE in f.metadata and isinstance(value, (int, float)) and not isinstance(value, bool):
            problem = _out_of_range(value, *f.metadata[RANGE])
            if problem:
                raise InputError(f"{prefix}{name}={value}: {problem}")
        check(value, f"{prefix}{name}.")
