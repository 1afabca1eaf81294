"""How the parts of a split bundle are named: `NAME.001`, `NAME.002`, ... `NAME.999`,
`NAME.1000`, ... (at least three digits, never a leading zero beyond them), so that the
writer and every reader agree past part 999."""

from __future__ import annotations

import re
from pathlib import Path

_PART = re.compile(r"^(?P<base>.+)\.(?P<n>[0-9]{3,})$")


def part_name(out: Path, index: int) -> Path:
    """The path of part `index` (1-based) of the bundle `out`."""
    if index < 1:
        raise ValueError(f"part numbers start at 1, not {index}")
    return out.with_name(f"{out.name}.{index:03d}")


def parse_part(name: str) -> tuple[str, int] | None:
    """(base name, part number) when `name` is exactly a part's name, else None."""
    m = _PART.match(name)
    if m is None:
        return None
    n = int(m.group("n"))
    if n < 1 or m.group("n") != f"{n:03d}":
        return None
    return m.group("base"), n
