"""A progress bar for bytes with the rate and the time left, for verify and image loads."""

from __future__ import annotations

import time
from collections.abc import Callable

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Label, ProgressBar

from appliance.units import human
from installer_tui.format import duration

MIN_REDRAW_S = 0.25  # the bar redraws at most four times a second (the last update always)


class TransferBar(Vertical):
    """Bytes done of bytes total, with bytes/s and an ETA measured since the first update.

    Verify reports every 16 MiB, some 30 times a second on a fast disk; each redraw
    costs the hashing CPU on a two-core server, so updates closer together than
    MIN_REDRAW_S are dropped (the first and the finishing one are always shown).
    """

    DEFAULT_CSS = """
    TransferBar {
        height: auto;
    }
    TransferBar > ProgressBar {
        width: 1fr;
    }
    TransferBar > .transfer-rate {
        color: $text-muted;
    }
    """

    def __init__(self, title: str = "", *, clock: Callable[[], float] = time.monotonic,
                 id: str | None = None) -> None:
        super().__init__(id=id)
        self._title = title
        self._clock = clock
        self._started: float | None = None
        self._first_done = 0
        self._shown_at = float("-inf")

    def compose(self) -> ComposeResult:
        yield Label(self._title, classes="transfer-title")
        yield ProgressBar(total=None, show_eta=False)
        yield Label("", classes="transfer-rate")

    def reset(self, title: str) -> None:
        """Start a new transfer named `title`."""
        self._title = title
        self._started = None
        self._shown_at = float("-inf")
        self.query_one(".transfer-title", Label).update(title)
        self.query_one(ProgressBar).update(total=None, progress=0)
        self.query_one(".transfer-rate", Label).update("")

    def advance(self, done: int, total: int) -> None:
        """Show `done` of `total` bytes, the rate so far and the time left."""
        now = self._clock()
        if self._started is None:
            self._started, self._first_done = now, done
        elif done < total and now - self._shown_at < MIN_REDRAW_S:
            return
        self._shown_at = now
        self.query_one(ProgressBar).update(total=max(total, 1), progress=done)
        elapsed = now - self._started
        moved = done - self._first_done
        text = f"{human(done)} of {human(total)}"
        if done >= total:
            text = f"{human(total)} done"
        elif elapsed > 0.2 and moved > 0:
            rate = moved / elapsed
            text += f"  {human(rate)}/s  about {duration((total - done) / rate)} left"
        self.query_one(".transfer-rate", Label).update(text)

    @property
    def text(self) -> str:
        """The rate line as shown (for tests)."""
        return str(self.query_one(".transfer-rate", Label).content)
