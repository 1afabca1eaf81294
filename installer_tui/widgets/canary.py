"""The canary panel: each service's share, time gone of the window, and both releases'
requests, error rates and p99s as they come, then the verdict with its figures."""

from __future__ import annotations

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from appliance.frontdoor.canary import CanaryEvent, WindowFigures

BAR_WIDTH = 12


def _bar(done: float, total: float) -> str:
    fill = int(BAR_WIDTH * min(1.0, done / total)) if total else 0
    return "█" * fill + "░" * (BAR_WIDTH - fill)


def _side(f: WindowFigures) -> tuple[str, str, str]:
    return str(f.requests), f"{f.error_rate:.2%}", f"{f.p99_ms:.1f}"


class CanaryPanel(Static):
    """Renders the install's `CanaryEvent`s: the latest per service, the verdict at the end."""

    DEFAULT_CSS = """
    CanaryPanel {
        height: auto;
        border: round $primary;
        padding: 0 1;
    }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__("", id=id)
        self.latest: dict[str, CanaryEvent] = {}
        self.border_title = "Canary"

    def show_event(self, ev: CanaryEvent) -> None:
        """Take one event (live figures or the verdict) and redraw."""
        self.latest[ev.service] = ev
        self.update(self.render_events())

    @property
    def verdict(self) -> str:
        """"promote" or "rollback" once the canary ended, else ""."""
        return next((e.verdict for e in self.latest.values() if e.verdict), "")

    def render_events(self) -> RenderableType:
        """The table of figures and, at the end, the verdict in words."""
        if not self.latest:
            return Text("")
        first = next(iter(self.latest.values()))
        done = max(e.elapsed_s for e in self.latest.values())
        head = Text.assemble(
            (f"{first.share:.0%}", "bold"), " of new requests to the new release: ",
            f"{min(done, first.window_s):.0f} of {first.window_s} s ",
            (_bar(done, first.window_s), "cyan"))
        t = Table(expand=True, box=box.SIMPLE_HEAD, padding=(0, 1))
        for col in ("Service", "Release", "Requests", "Errors", "p99 ms"):
            t.add_column(col, justify="left" if col in ("Service", "Release") else "right",
                         no_wrap=True)
        for svc, ev in sorted(self.latest.items()):
            t.add_row(svc, "new", *_side(ev.new))
            t.add_row("", "old", *_side(ev.old), end_section=True)
        parts: list[RenderableType] = [head, t]
        if self.verdict:
            ok = self.verdict == "promote"
            word = "Promoted" if ok else "Rolled back"
            style = "bold green" if ok else "bold red"
            for svc, ev in sorted(self.latest.items()):
                parts.append(Text.assemble((f"{word}: ", style), f"{svc}: {ev.reason}"))
        return Group(*parts)
