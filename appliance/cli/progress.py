"""One renderer of progress events for every command (the TUI has its own widgets).

Steps and preflight checks print as lines; byte counts as a bar redrawn in place on a
terminal (at most ten times a second), else as a line every 10 %; or, for scripts,
every event as one JSON line.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, TextIO

from appliance.frontdoor.canary import CanaryEvent
from appliance.progress import Progress
from appliance.site.plan import CheckEvent, StepEvent
from appliance.units import human

STEP_MARKS = {"running": "==>", "ok": " ok", "warn": "  !", "failed": "  X"}
CANARY_LINE_EVERY_S = 10.0  # a canary's figures come every 2 s; a log line every 10 is enough


class ProgressPrinter:
    """Renders `Progress` events (and the plan's step and check events) on a stream."""

    def __init__(self, stream: TextIO | None = None, *, as_json: bool = False,
                 bar: bool | None = None, width: int = 30) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self.as_json = as_json
        self.bar = self.stream.isatty() if bar is None else bar
        self.width = width
        self._last_draw = 0.0
        self._drawn = False
        self._last_pct: dict[str, int] = {}
        self._canary_at: dict[str, float] = {}

    def __call__(self, ev: Progress) -> None:
        if self.as_json:
            self._json(ev)
        elif isinstance(ev, StepEvent):
            self._line(f"{STEP_MARKS[ev.status]} {ev.step}: {ev.message}")
        elif isinstance(ev, CheckEvent):
            self._line(f"    {ev.message}")
        elif isinstance(ev, CanaryEvent):
            last = self._canary_at.get(ev.service)
            if ev.verdict or last is None or ev.elapsed_s - last >= CANARY_LINE_EVERY_S:
                self._canary_at[ev.service] = ev.elapsed_s
                self._line(f"    {ev.message}")
        elif ev.total:
            self._draw(ev) if self.bar else self._tenth(ev)
        elif ev.message:
            self._line(f"    {ev.message}")

    def close(self) -> None:
        """End a bar left on the current line."""
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False

    def _json(self, ev: Progress) -> None:
        doc: dict[str, Any] = {"step": ev.step, "done": ev.done, "total": ev.total,
                               "message": ev.message, "kind": type(ev).__name__}
        if isinstance(ev, StepEvent):
            doc["status"] = ev.status
        if isinstance(ev, CheckEvent):
            doc["level"] = ev.level
        if isinstance(ev, CanaryEvent):  # the figures themselves, not only their sentence
            doc["canary"] = ev.figures()
        print(json.dumps(doc), file=self.stream, flush=True)

    def _line(self, text: str) -> None:
        self.close()
        print(text, file=self.stream, flush=True)

    def _tenth(self, ev: Progress) -> None:
        pct = ev.done * 100 // ev.total
        if pct // 10 != self._last_pct.get(ev.step, -1) // 10 or ev.done == ev.total:
            self._last_pct[ev.step] = pct
            self._line(f"    {ev.step}: {pct:3d}% of {ev.total / 1024**2:.1f} MiB")

    def _draw(self, ev: Progress) -> None:
        now = time.monotonic()
        if now - self._last_draw < 0.1 and ev.done < ev.total:
            return
        self._last_draw = now
        frac = min(1.0, ev.done / ev.total)
        fill = int(frac * self.width)
        self.stream.write(f"\r{ev.step:<7} [{'#' * fill}{'.' * (self.width - fill)}] "
                          f"{frac * 100:5.1f}% {human(ev.done):>10} / {human(ev.total):<10} "
                          f"{ev.message[:40]:<40}")
        self.stream.flush()
        self._drawn = True
