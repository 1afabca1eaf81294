"""A bounded on-disk history of the runtime's figures: JSON-lines segments, capped by size
and age, kept across restarts, readable without outside infrastructure."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

SEGMENTS = 8  # the cap is split over this many files so pruning drops an eighth at a time


class MetricsHistory:
    """Append samples to `dir/metrics-<epoch_ms>.jsonl`; drop the oldest files over the caps."""

    def __init__(self, directory: Path, max_bytes: int, max_age_s: float) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self._max_bytes = max_bytes
        self._max_age_s = max_age_s
        self._segment_bytes = max(4096, max_bytes // SEGMENTS)
        self._lock = threading.Lock()

    def segments(self) -> list[Path]:
        """History files, oldest first."""
        def key(p: Path) -> int:
            try:
                return int(p.stem.split("-", 1)[1])
            except (IndexError, ValueError):
                return 0
        return sorted(self.directory.glob("metrics-*.jsonl"), key=key)

    def append(self, sample: dict[str, Any], now: float | None = None) -> None:
        """Write one sample, start a new segment when the current one is full, then prune."""
        now = time.time() if now is None else now
        line = json.dumps(sample, separators=(",", ":"), default=str) + "\n"
        with self._lock:
            segs = self.segments()
            current = segs[-1] if segs else None
            if current is None or current.stat().st_size + len(line) > self._segment_bytes:
                current = self.directory / f"metrics-{int(now * 1000)}.jsonl"
            with current.open("a", encoding="utf-8") as f:
                f.write(line)
            self._prune(now)

    def _prune(self, now: float) -> None:
        segs = self.segments()
        sizes = {p: p.stat().st_size for p in segs}
        total = sum(sizes.values())
        for p in segs[:-1]:  # never the segment being written
            too_old = now - p.stat().st_mtime > self._max_age_s
            if total > self._max_bytes or too_old:
                p.unlink(missing_ok=True)
                total -= sizes[p]

    def read(self, since: float = 0.0, limit: int = 10_000) -> list[dict[str, Any]]:
        """Samples with `t >= since`, oldest first, the newest `limit` of them."""
        out: list[dict[str, Any]] = []
        for p in self.segments():
            try:
                lines = p.read_text(encoding="utf-8").splitlines()
            except OSError:
                continue  # pruned while we read
            for line in lines:
                try:
                    doc = json.loads(line)
                except ValueError:
                    continue  # a line cut by a crash
                if isinstance(doc, dict) and doc.get("t", 0) >= since:
                    out.append(doc)
        return out[-limit:] if limit > 0 else []
