"""An error in plain words: what it means for the site, the message, and what to do next."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from installer_tui.format import explain


class ErrorPanel(Static):
    """Shows one failure; empty (and hidden by the screen's CSS) until `show_error`."""

    DEFAULT_CSS = """
    ErrorPanel {
        border: round $error;
        padding: 0 1;
        height: auto;
    }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__("", id=id)
        self.message = ""

    def show_error(self, error: BaseException, where: str = "",
                   meaning: tuple[str, str] | None = None) -> None:
        """Render `error` with what it means for the site and the next step.

        `meaning` overrides the install's reading of the error (e.g. for a log export).
        """
        meaning_text, todo = meaning or explain(error)
        self.message = str(error)
        text = Text()
        text.append(meaning_text + "\n", style="bold")
        text.append("\n")
        text.append(f"{where}: " if where else "", style="bold")
        text.append(self.message + "\n")
        text.append("\n")
        text.append("What to do: ", style="bold")
        text.append(todo)
        self.border_title = "Stopped"
        self.update(text)
