"""`appliance support export`: one bounded, redacted, signed archive for the vendor.

The archive is a plain tar (so its size is known member by member) whose logs and
history are gzip'd one by one; `SHA256SUMS` lists every member and
`SHA256SUMS.dsse.json` signs it with the site's key (`site-key.pub` inside). It is
written under a temporary name, fsync'd and renamed: a stick pulled mid-write never holds
a file with the final name, and a cut copy fails `verify_export`.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import socket
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from appliance.errors import ApplianceError, ExportTooLargeError, ExportWriteError, SupportError
from appliance.site.gpu import GpuProbe
from appliance.site.layout import Site
from appliance.site.sitekey import site_key
from appliance.support.collect import (
    Item,
    frontdoor_items,
    gpu_state,
    release_items,
    runtime_items,
    site_items,
    system_facts,
)
from appliance.support.redact import Redactor
from signing import sign

FORMAT = "appliance-support-export/1"
SUMS = "SHA256SUMS"
SUMS_ENVELOPE = "SHA256SUMS.dsse.json"
PUBKEY = "site-key.pub"
SUMS_PAYLOAD_TYPE = "application/vnd.appliance.support-sums.v1+text"
DEFAULT_SINCE_S = 7 * 86400
DEFAULT_MAX_BYTES = 1024**3  # fits the smallest sticks still sold, and most mail gateways
TAR_RECORD = 10240  # tarfile pads the archive to a multiple of this
# the signed list and its envelope are written after the budget is spent: room kept for them
SIGNATURE_RESERVE = 4096

Opener = Callable[[Path], IO[bytes]]


@dataclass(frozen=True)
class ExportResult:
    """Where the export went, its size, and what `--max-size` left out."""

    path: Path
    size: int
    members: int
    trimmed: list[dict[str, Any]] = field(default_factory=list)
    redactions: int = 0


def _member_size(n: int) -> int:
    return 512 + (n + 511) // 512 * 512


def _stored(item: Item) -> tuple[str, bytes]:
    """The item's name and bytes as stored: logs and history gzip'd (fixed mtime)."""
    if item.trimmable:
        return item.arcname + ".gz", gzip.compress(item.data, compresslevel=6, mtime=0)
    return item.arcname, item.data


def _open_exclusive(path: Path) -> IO[bytes]:
    return open(path, "xb")


def write_support_export(
    site: Site, dest: Path, *, since_s: float = DEFAULT_SINCE_S,
    max_bytes: int = DEFAULT_MAX_BYTES, now: float | None = None, engine: Any = None,
    gpu_probe: GpuProbe | None = None, opener: Opener = _open_exclusive,
) -> ExportResult:
    """Collect, redact, bound and sign a support export of `site` into directory `dest`.

    Raises:
        ExportWriteError: `dest` is not a writable directory, or the write failed (nothing
            with the final name is left, the temp file is removed).
        ExportTooLargeError: even the essentials exceed `max_bytes`.
        SupportError: the site's key cannot be made or read.
    """
    if not dest.is_dir():
        raise ExportWriteError(f"export target {dest} is not a directory; mount the stick "
                               "or create the directory")
    if not site.root.is_dir():
        raise SupportError(f"no site at {site.root}; pass the site's --root "
                           "(default /var/lib/appliance)")
    now = time.time() if now is None else now
    since = now - since_s
    key = site_key(site.root)
    redactor = Redactor()
    items: list[Item] = [*site_items(site, now), *release_items(site, since, redactor),
                         *frontdoor_items(site, since, redactor),
                         *runtime_items(site, since, redactor),
                         *_engine_items(site, engine, redactor, now)]
    items.append(Item("system.json", _json(system_facts(site, now, engine=engine, dest=dest)),
                      now))
    items.append(Item("gpu.json", _json(gpu_state(gpu_probe)), now))
    stored = [(it, *_stored(it)) for it in items]
    keep, trimmed = _fit(stored, max_bytes, now, since_s, key.key_id, redactor)
    stamp = datetime.fromtimestamp(now, UTC).strftime("%Y%m%dT%H%M%SZ")
    top = f"appliance-support-{socket.gethostname()}-{stamp}"
    members = [*((name, data, it.mtime) for it, name, data in keep),
               *_meta(now, since_s, max_bytes, key.key_id, redactor, trimmed)]
    members.append((PUBKEY, key.public_key.to_pem(), now))
    sums = "".join(f"{hashlib.sha256(d).hexdigest()}  {n}\n" for n, d, _ in members).encode()
    envelope = sign(sums, SUMS_PAYLOAD_TYPE, [key]).to_json()
    members += [(SUMS, sums, now), (SUMS_ENVELOPE, envelope, now)]
    final = dest / f"{top}.tar"
    tmp = dest / f".{top}.tar.partial"
    try:
        with opener(tmp) as raw:
            with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
                for name, data, mtime in members:
                    ti = tarfile.TarInfo(f"{top}/{name}")
                    ti.size, ti.mtime, ti.mode = len(data), int(mtime), 0o644
                    tar.addfile(ti, io.BytesIO(data))
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, final)
        _fsync_dir(dest)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise ExportWriteError(f"cannot write the export to {dest}: {e.strerror or e}; check "
                               "free space and that the stick is writable, then run again") from e
    return ExportResult(final, final.stat().st_size, len(members), trimmed,
                        sum(redactor.counts.values()))


def _fit(stored: list[tuple[Item, str, bytes]], max_bytes: int, now: float, since_s: float,
         key_id: str, redactor: Redactor,
         ) -> tuple[list[tuple[Item, str, bytes]], list[dict[str, Any]]]:
    """Drop trimmable members, oldest first, until the archive fits `max_bytes`.

    Raises:
        ExportTooLargeError: the essentials alone do not fit.
    """
    fixed = [s for s in stored if not s[0].trimmable]
    optional = sorted((s for s in stored if s[0].trimmable), key=lambda s: s[0].mtime)
    names_len = sum(len(n) + 70 for _, n, _ in stored)  # one SHA256SUMS line per member
    base = (sum(_member_size(len(d)) for _, _, d in fixed) + 2 * TAR_RECORD + SIGNATURE_RESERVE
            + 3 * names_len)  # the list, and its base64 inside the envelope
    total = base + sum(_member_size(len(d)) for _, _, d in optional)
    trimmed: list[dict[str, Any]] = []

    def meta_size() -> int:
        return sum(_member_size(len(d)) + 2048
                   for _, d, _ in _meta(now, since_s, max_bytes, key_id, redactor, trimmed))

    while optional and total + meta_size() > max_bytes:
        it, name, data = optional.pop(0)
        total -= _member_size(len(data))
        trimmed.append({"file": name, "bytes": len(data), "modified":
                        datetime.fromtimestamp(it.mtime, UTC).isoformat()})
    if total + meta_size() > max_bytes:
        raise ExportTooLargeError(
            f"the export's essentials need {(total + meta_size()) / 1024**2:.1f} MiB, over "
            f"--max-size {max_bytes / 1024**2:.1f} MiB; give a larger --max-size")
    return fixed + optional, trimmed


def _meta(now: float, since_s: float, max_bytes: int, key_id: str, redactor: Redactor,
          trimmed: list[dict[str, Any]]) -> list[tuple[str, bytes, float]]:
    doc = {"format": FORMAT, "created": datetime.fromtimestamp(now, UTC).isoformat(),
           "since": datetime.fromtimestamp(now - since_s, UTC).isoformat(),
           "max_bytes": max_bytes, "site_key_id": key_id, "hostname": socket.gethostname(),
           "trimmed": trimmed,
           "trimmed_note": (f"{len(trimmed)} oldest log/history file(s) left out to fit "
                            "--max-size" if trimmed else "nothing left out")}
    return [("export.json", _json(doc), now), ("redaction.json", _json(redactor.report()), now)]


def _engine_items(site: Site, engine: Any, redactor: Redactor, now: float) -> list[Item]:
    """Container output of running releases, from the engine (docker keeps no files)."""
    if engine is None or getattr(engine, "name", "") != "docker":
        return []  # the process engine's output is in releases/<seq>/run already
    out = []
    try:
        running = sorted(engine.running())
    except ApplianceError:
        return []
    for seq in running:
        try:
            services = [s.name for s in site.release(seq).manifest().services]
        except ApplianceError:
            continue
        for svc in services:
            text = engine.logs_tail(seq, svc, lines=1_000_000)
            if text:
                name = f"engine/{seq}-{svc}.log"
                out.append(Item(name, redactor.lines(text.encode(), name), now, trimmable=True))
    return out


def _json(doc: Any) -> bytes:
    return (json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n").encode()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
