"""Each service's fallback on the status screen: whether it answers now, and how much."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from appliance.site.fallbacks import FallbackFigures


class FallbackPanel(Static):
    """One line per service with a fallback; hidden while there is none."""

    DEFAULT_CSS = """
    FallbackPanel {
        height: auto;
        margin-bottom: 1;
    }
    """

    def show_figures(self, figures: list[FallbackFigures]) -> None:
        """Redraw from what the proxy says now."""
        self.figures = figures
        self.display = bool(figures)
        out = Text()
        for f in figures:
            if f.answering:
                out.append(f"{f.service}: answered by its fallback {f.fallback} now", "bold yellow")
                out.append(f" (main: {f.main})")
            else:
                out.append(f"{f.service}: main release serving; fallback {f.fallback}")
            out.append(f"; {f.answered} request(s) answered by the fallback since the front "
                       "door started\n", style="dim" if not f.answering else "")
        self.update(out)
