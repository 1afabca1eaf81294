"""The install steps down the side of the screen, each marked pending, running, ok or failed."""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text
from textual.reactive import reactive
from textual.widgets import Static

from appliance.site.plan import STEPS

SHORT_TITLES = {
    "preflight": "Preflight checks",
    "verify": "Verify and copy",
    "placement": "GPUs and placement",
    "load": "Load images",
    "start": "Start new release",
    "health": "Wait until ready",
    "accept": "Signed samples",
    "switch": "Switch current",
    "stop_old": "Stop previous",
}
STEP_NAMES = tuple(s.name for s in STEPS)
MARKS = {"pending": ("·", "dim"), "running": ("▶", "bold yellow"), "ok": ("✓", "green"),
         "warn": ("!", "bold yellow"), "failed": ("✗", "bold red")}


class StepList(Static):
    """One line per install step with its state; `set_status` moves it along."""

    DEFAULT_CSS = """
    StepList {
        width: 24;
        height: auto;
        padding: 0 1;
    }
    """

    statuses: reactive[dict[str, str]] = reactive(dict, always_update=True)

    def __init__(self, steps: Sequence[str] = STEP_NAMES, *,
                 id: str | None = None) -> None:
        super().__init__(id=id)
        self.steps = list(steps)
        self.set_reactive(StepList.statuses, {s: "pending" for s in self.steps})

    def set_status(self, step: str, status: str) -> None:
        """Mark `step` (an unknown status shows as pending)."""
        if step in self.statuses:
            self.statuses = {**self.statuses, step: status}

    def status(self, step: str) -> str:
        """The state `step` is shown in."""
        return self.statuses.get(step, "pending")

    def render(self) -> Text:
        text = Text()
        for i, step in enumerate(self.steps):
            mark, style = MARKS.get(self.statuses.get(step, "pending"), MARKS["pending"])
            text.append(f"{mark} ", style=style)
            text.append(SHORT_TITLES.get(step, step),
                        style="bold" if self.statuses.get(step) == "running" else "")
            if i < len(self.steps) - 1:
                text.append("\n")
        return text
