"""Per-GPU sparklines: utilisation, memory used and temperature of each GPU, one row each."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence

from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from installer_tui.figures import GpuFigure

POINTS = 60
BARS = "▁▂▃▄▅▆▇█"
# (key, label, unit, fixed top of the scale or None for the series' own maximum)
ROWS = (("util", "util", "%", 100.0), ("mem", "memory", "MiB", None),
        ("temp", "temp", "°C", 100.0))


def spark(values: Sequence[float], top: float | None = None) -> str:
    """A line of block characters, one per value, scaled to `top` (default: the maximum)."""
    if not values:
        return ""
    high = top if top is not None else max(values)
    if high <= 0:
        return BARS[0] * len(values)
    return "".join(BARS[min(len(BARS) - 1, max(0, int(v / high * (len(BARS) - 1) + 0.5)))]
                   for v in values)


class GpuFigures(Static):
    """One sparkline row per GPU and figure; hidden while no GPU has reported."""

    DEFAULT_CSS = """
    GpuFigures {
        height: auto;
    }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__("", id=id)
        self.series: dict[int, dict[str, deque[float]]] = {}

    def on_mount(self) -> None:
        self.display = bool(self.series)

    def push(self, gpus: Iterable[GpuFigure]) -> None:
        """Add one point for each GPU in `gpus` (a GPU seen for the first time adds rows)."""
        for g in gpus:
            rows = self.series.setdefault(
                g.index, {key: deque(maxlen=POINTS) for key, *_ in ROWS})
            rows["util"].append(g.utilization_pct)
            rows["mem"].append(g.memory_used_mib)
            rows["temp"].append(g.temperature_c)
        if self.series:
            self.display = True
            self.update(self.table())

    def table(self) -> Table:
        """The rows as they stand: name, sparkline, latest value."""
        t = Table(expand=True, box=None, padding=(0, 0), show_header=False)
        t.add_column("name", width=16, no_wrap=True)
        t.add_column("line", ratio=1, no_wrap=True, overflow="crop")
        t.add_column("value", width=14, justify="right", no_wrap=True)
        for index in sorted(self.series):
            for key, label, unit, top in ROWS:
                values = list(self.series[index][key])
                t.add_row(f"GPU {index} {label}", Text(spark(values, top), style="green"),
                          f"{values[-1]:.0f} {unit}" if values else "")
        return t
