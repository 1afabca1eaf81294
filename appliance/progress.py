"""Progress events that every long step emits and every front end renders."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Progress:
    """One progress report: a step name, bytes done of bytes total, and a message."""

    step: str
    done: int = 0
    total: int = 0
    message: str = ""


ProgressFn = Callable[[Progress], None]


def no_progress(_: Progress) -> None:
    """A ProgressFn that ignores events."""
