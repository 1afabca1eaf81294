"""JSON-lines logs, rotated by size and capped on disk; request records never hold tensors.

What a client sent is never written as it came: request ids become a keyed hash (so a
vendor can follow one request through the logs without learning what the id said), every
string field is cut to `MAX_FIELD_CHARS` and every line to `MAX_LINE_BYTES`, so no request
can fill the on-disk cap on its own and rotate the earlier records away.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from runtime.errors import SettingsError

LOG_NAME = "runtime.jsonl"
KEY_NAME = "log-id.key"  # in the data dir, beside (not in) logs/: never exported
LOG_MODE = 0o640
MAX_FIELD_CHARS = 512
MAX_LINE_BYTES = 4096


def load_id_key(data_dir: Path) -> bytes:
    """This data dir's random key for hashing client ids, made (mode 0600) on first use.

    Raises:
        SettingsError: the key file cannot be made or read.
    """
    path = data_dir / KEY_NAME
    try:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            os.chmod(path, 0o600)
            key = path.read_bytes()
            if len(key) >= 32:
                return key
            # Cut short by a crash while it was written: nothing was hashed with it.
            fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
        key = secrets.token_bytes(32)
        try:
            os.write(fd, key)
            os.fsync(fd)
        finally:
            os.close(fd)
        return key
    except OSError as e:
        raise SettingsError(f"cannot make or read the log id key {path}: {e.strerror}; "
                            "check the data directory's permissions") from e


def id_digest(key: bytes, value: str) -> str:
    """A short keyed hash of a client-supplied id: the same id, the same digest."""
    mac = hmac.new(key, value.encode("utf-8", "replace"), hashlib.sha256)
    return "h-" + mac.hexdigest()[:16]


try:  # orjson writes a record several times faster than the standard library
    import orjson

    def _dumps(record: dict[str, Any]) -> bytes:
        try:
            return orjson.dumps(record, default=str, option=orjson.OPT_APPEND_NEWLINE)
        except TypeError:  # what orjson will not write (lone surrogates, huge ints)
            return (json.dumps(record, separators=(",", ":"), default=str) + "\n").encode()
except ImportError:  # pragma: no cover - the runtime extra installs orjson
    def _dumps(record: dict[str, Any]) -> bytes:
        return (json.dumps(record, separators=(",", ":"), default=str) + "\n").encode()


def _cap(value: Any) -> Any:
    if isinstance(value, str) and len(value) > MAX_FIELD_CHARS:
        return f"{value[:MAX_FIELD_CHARS]}...[{len(value) - MAX_FIELD_CHARS} chars cut]"
    return value


def _now_iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonLinesLog:
    """Append-only JSON-lines file `dir/runtime.jsonl` with `backups` rotated siblings.

    Writes are buffered and flushed by `flush()` (the server calls it every second and at
    exit), so a request costs one small string write, not a system call.
    """

    def __init__(self, directory: Path, max_bytes: int, backups: int,
                 id_key: bytes | None = None) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / LOG_NAME
        self._max_bytes = max_bytes
        self._backups = max(0, backups)
        self._id_key = id_key if id_key is not None else secrets.token_bytes(32)
        self._lock = threading.Lock()
        for old in directory.glob(LOG_NAME + "*"):
            os.chmod(old, LOG_MODE)  # files an older runtime left world-readable
        self._file: BinaryIO = self._open()
        self._size = self.path.stat().st_size

    def _open(self) -> BinaryIO:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, LOG_MODE)
        os.fchmod(fd, LOG_MODE)  # the umask may not take group read away; set it exactly
        return open(fd, "ab", buffering=64 * 1024)

    def client_id(self, value: str) -> str:
        """How a client-supplied request id is logged: its keyed hash."""
        return id_digest(self._id_key, value)

    def write(self, record: dict[str, Any]) -> None:
        """Append one record (a timestamp is added when missing), strings and line capped."""
        if "ts" not in record:
            record = {"ts": _now_iso(time.time()), **record}
        line = _dumps(record)
        if len(line) > MAX_FIELD_CHARS:  # only then can a field be over its cap
            record = {k: _cap(v) for k, v in record.items()}
            line = _dumps(record)
            if len(line) > MAX_LINE_BYTES:  # many fields, or long non-string values
                line = _dumps({"ts": record["ts"], "event": _cap(str(record.get("event"))),
                               "cut": line[:MAX_LINE_BYTES // 4].decode("utf-8", "ignore")})
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
        self._file = self._open()
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
