"""Sizes for people and from people: `human(1536) == "1.5 KiB"`, `parse_size("3900MiB")`."""

from __future__ import annotations

import re

from appliance.errors import SpecError

_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2, "mb": 1000**2,
          "mib": 1024**2, "g": 1000**3, "gb": 1000**3, "gib": 1024**3}


def parse_size(text: str) -> int:
    """Bytes from '3900MiB', '4GB', '1048576'.

    Raises:
        SpecError: not a size.
    """
    m = re.fullmatch(r"\s*(\d+)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in _UNITS:
        raise SpecError(f"{text!r} is not a size; write e.g. 3900MiB")
    return int(m.group(1)) * _UNITS[m.group(2).lower()]


def human(n: float) -> str:
    """A byte count for people: 1.5 GiB, 320.0 KiB, 12 B."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover - the loop returns at GiB
