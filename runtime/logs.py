"""JSON-lines logs, rotated by size and capped on disk; request records never hold tensors."""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

LOG_NAME = "runtime.jsonl"


def _now_iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonLinesLog:
    """Append-only JSON-lines file `dir/runtime.jsonl` with `backups` rotated siblings.

    Writes are buffered and flushed by `flush()` (the server calls it every second and at
    exit), so a request costs one small string write, not a system call.
    """

    def __init__(self, directory: Path, max_bytes: int, backups: int) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / LOG_NAME
        self._max_bytes = max_bytes
        self._backups = max(0, backups)
        self._lock = threading.Lock()
        self._file: TextIO = self.path.open("a", encoding="utf-8", buffering=64 * 1024)
        self._size = self.path.stat().st_size

    def write(self, record: dict[str, Any]) -> None:
        """Append one record (a timestamp is added when missing)."""
        if "ts" not in record:
            record = {"ts": _now_iso(time.time()), **record}
        line = json.dumps(record, separators=(",", ":"), default=str) + "\n"
        with self._lock:
            self._file.write(line)
            self._size += len(line)
            if self._size >= self._max_bytes:
                self._rotate()

    def _rotate(self) -> None:
        self._file.close()
        if self._backups == 0:
            self.path.unlink(missing_ok=True)
        else:
            oldest = self.path.with_name(f"{LOG_NAME}.{self._backups}")
            oldest.unlink(missing_ok=True)
            for i in range(self._backups - 1, 0, -1):
                src = self.path.with_name(f"{LOG_NAME}.{i}")
                if src.exists():
                    os.replace(src, self.path.with_name(f"{LOG_NAME}.{i + 1}"))
            os.replace(self.path, self.path.with_name(f"{LOG_NAME}.1"))
        self._file = self.path.open("a", encoding="utf-8", buffering=64 * 1024)
        self._size = 0

    def flush(self) -> None:
        """Push buffered lines to the file."""
        with self._lock:
            self._file.flush()

    def close(self) -> None:
        """Flush and close."""
        with self._lock:
            self._file.close()


class JsonLinesHandler(logging.Handler):
    """Send `logging` records into a `JsonLinesLog`."""

    def __init__(self, sink: JsonLinesLog) -> None:
        super().__init__()
        self._sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        """Write one record as JSON."""
        try:
            doc: dict[str, Any] = {
                "ts": _now_iso(record.created), "level": record.levelname,
                "logger": record.name, "msg": record.getMessage(),
            }
            if record.exc_info and record.exc_info[1] is not None:
                doc["exc"] = f"{type(record.exc_info[1]).__name__}: {record.exc_info[1]}"
            self._sink.write(doc)
        except Exception:
            self.handleError(record)


def configure(sink: JsonLinesLog | None, level: int = logging.INFO) -> None:
    """Route the `runtime` loggers to the JSON file and one-line text on stderr."""
    root = logging.getLogger("runtime")
    root.setLevel(level)
    for h in list(root.handlers):
        root.removeHandler(h)
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(stderr)
    if sink is not None:
        root.addHandler(JsonLinesHandler(sink))
    root.propagate = False
