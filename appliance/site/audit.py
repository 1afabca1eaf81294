"""The site's audit trail: hash-chained JSON lines in `<root>/audit/audit.jsonl`.

Each line holds `n` (1, 2, ...), `time`, `user`, `event` and the event's fields, `prev`
(the hash of the line before, 64 zeros for the first) and `hash` (sha256 of the line's
canonical JSON without `hash`). Editing, inserting or removing a line breaks the chain at
that line. `audit.head` holds the last line's number and hash, so cutting lines off the end
is caught too. Appends are serialised with a lock on the file and fsync'd.

Events: install, update, install_failed, refused (reason: tampered, older, expired,
wrong key, not enough space, ...), rollback, rollback_failed, trust, allow_expired,
watchdog_restart, watchdog_failed, fallback_started, fallback_stopped.
"""

from __future__ import annotations

import fcntl
import getpass
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from appliance.errors import AuditChainError
from appliance.fsutil import atomic_write, fsync_dir

AUDIT_DIR = "audit"
AUDIT_FILE = "audit.jsonl"
HEAD_FILE = "audit.head"
GENESIS = "0" * 64
MAX_LINE_BYTES = 64 * 1024  # a longer line is cut: fields are clipped before hashing

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AuditEntry:
    """One verified line of the trail."""

    n: int
    time: str
    user: str
    event: str
    fields: dict[str, Any]
    hash: str


def audit_path(root: Path) -> Path:
    """Where the trail of the site at `root` lives."""
    return Path(root) / AUDIT_DIR / AUDIT_FILE


def current_user() -> str:
    """The person behind this process: the sudo caller when there is one, else the login."""
    sudo = os.environ.get("SUDO_USER")
    try:
        me = getpass.getuser()
    except (KeyError, OSError):
        me = f"uid {os.getuid()}"
    return f"{sudo} (as {me})" if sudo and sudo != me else me


def _digest(doc: dict[str, Any]) -> str:
    body = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(body.encode()).hexdigest()


def _clip(fields: dict[str, Any]) -> dict[str, Any]:
    # error messages can be long; a trail line stays readable and bounded
    out: dict[str, Any] = {}
    for k, v in fields.items():
        if isinstance(v, str) and len(v) > 2000:
            v = v[:2000] + "..."
        out[k] = v
    return out


def append(root: Path, event: str, *, now: datetime | None = None, user: str | None = None,
           **fields: Any) -> AuditEntry:
    """Append one event to the site's trail (locked, fsync'd) and return it.

    Raises:
        OSError: the trail cannot be written (callers that must not fail use `record`).
    """
    path = audit_path(root)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
    when = (now or datetime.now(UTC)).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o640)
    with os.fdopen(fd, "r+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        n, prev = _last(f)
        doc = {"n": n + 1, "time": when, "user": user or current_user(), "event": event,
               **_clip(fields), "prev": prev}
        doc["hash"] = _digest(doc)
        f.write(json.dumps(doc, sort_keys=True, ensure_ascii=True).encode() + b"\n")
        f.flush()
        os.fsync(f.fileno())
        atomic_write(path.parent / HEAD_FILE, f"{doc['n']} {doc['hash']}\n".encode(), 0o640)
    fsync_dir(path.parent)
    return AuditEntry(doc["n"], when, doc["user"], event, dict(fields), doc["hash"])


def record(root: Path, event: str, **fields: Any) -> None:
    """Append to the trail, never raising: an unwritable trail must not hide the message of
    the install or refusal being recorded. It is logged instead."""
    try:
        append(root, event, **fields)
    except OSError as e:
        log.warning("cannot write the audit trail under %s: %s", root, e)


def _last(f: Any) -> tuple[int, str]:
    """The last line's number and hash (0 and GENESIS for an empty trail)."""
    size = f.seek(0, os.SEEK_END)
    if size == 0:
        return 0, GENESIS
    f.seek(max(0, size - MAX_LINE_BYTES))
    lines = [x for x in f.read().splitlines() if x.strip()]
    try:
        doc = json.loads(lines[-1])
        return int(doc["n"]), str(doc["hash"])
    except (IndexError, ValueError, KeyError, TypeError) as e:
        raise OSError(f"the trail's last line is unreadable ({e}); run `appliance audit`") \
            from e


def verify_lines(data: bytes, head: str | None = None,
                 where: str = AUDIT_FILE) -> list[AuditEntry]:
    """Check the chain over the bytes of a trail (and its head line, when given).

    Raises:
        AuditChainError: names the first line that does not chain (edited, inserted,
            removed or cut off the end).
    """
    entries: list[AuditEntry] = []
    prev = GENESIS
    for i, raw in enumerate(data.splitlines(), start=1):
        try:
            doc = json.loads(raw)
            if not isinstance(doc, dict):
                raise ValueError("not an object")
            claimed = doc.pop("hash")
        except (ValueError, KeyError) as e:
            raise AuditChainError(f"{where} line {i} is not an audit entry ({e}); the trail "
                                  "was edited: keep this copy for the auditor") from e
        if doc.get("prev") != prev or doc.get("n") != i:
            raise AuditChainError(f"{where} line {i} does not follow line {i - 1} (a line was "
                                  "removed, inserted or edited); keep this copy for the auditor")
        if _digest(doc) != claimed:
            raise AuditChainError(f"{where} line {i} was edited after it was written (hash "
                                  "mismatch); keep this copy for the auditor")
        fields = {k: v for k, v in doc.items()
                  if k not in ("n", "time", "user", "event", "prev")}
        entries.append(AuditEntry(i, str(doc.get("time", "")), str(doc.get("user", "")),
                                  str(doc.get("event", "")), fields, claimed))
        prev = claimed
    if head:
        try:
            n_text, h = head.split()
            n = int(n_text)
        except ValueError as e:
            raise AuditChainError(f"{HEAD_FILE} is unreadable ({head.strip()!r}); keep this "
                                  "copy for the auditor") from e
        # the head is written just after its line: it may lag by one after a crash
        if n > len(entries) or (n > 0 and entries[n - 1].hash != h) or n < len(entries) - 1:
            raise AuditChainError(f"{where} ends at line {len(entries)} but {HEAD_FILE} "
                                  f"records line {n}: lines were cut off or the trail was "
                                  "replaced; keep this copy for the auditor")
    return entries


def verify(root: Path) -> list[AuditEntry]:
    """Read and check the site's trail; an absent trail is an empty one.

    Raises:
        AuditChainError: the first line that does not chain (see `verify_lines`).
    """
    path = audit_path(root)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        data = b""
    head_path = path.parent / HEAD_FILE
    head = head_path.read_text() if head_path.is_file() else None
    return verify_lines(data, head, str(path))
