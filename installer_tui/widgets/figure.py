"""One live figure: its name, latest value and a sparkline of the recent ones."""

from __future__ import annotations

from collections import deque

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Label, Sparkline

POINTS = 60


class Figure(Horizontal):
    """A labelled sparkline; `None` values (nothing measured) show as a gap of zeros."""

    DEFAULT_CSS = """
    Figure {
        height: 1;
    }
    Figure > .figure-name {
        width: 16;
    }
    Figure > Sparkline {
        width: 1fr;
        height: 1;
    }
    Figure > .figure-value {
        width: 14;
        text-align: right;
    }
    """

    def __init__(self, name: str, unit: str, *, id: str | None = None,
                 empty: str = "no data yet") -> None:
        super().__init__(id=id)
        self.label = name
        self.unit = unit
        self.empty = empty
        self.values: deque[float] = deque(maxlen=POINTS)
        self.latest: float | None = None

    def compose(self) -> ComposeResult:
        yield Label(self.label, classes="figure-name")
        yield Sparkline([], summary_function=max)
        yield Label(self.empty, classes="figure-value")

    def push(self, value: float | None) -> None:
        """Add a point; `None` keeps the line going at zero and says nothing was measured."""
        self.values.append(0.0 if value is None else value)
        if value is not None:
            self.latest = value
        self.query_one(Sparkline).data = list(self.values)
        shown = self.empty if self.latest is None else f"{self.latest:.1f} {self.unit}"
        self.query_one(".figure-value", Label).update(shown)

    def set_empty(self, text: str) -> None:
        """Say why this figure has no data (e.g. no GPU on this server)."""
        self.empty = text
        if self.latest is None:
            self.query_one(".figure-value", Label).update(text)
