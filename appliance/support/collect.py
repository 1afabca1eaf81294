"""Collectors: what a support export holds, read from a site root and the box.

Each collector returns `Item`s whose bytes are already redacted; `export.py` bounds,
signs and writes them. Nothing here writes to the site.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from appliance.errors import ApplianceError
from appliance.frontdoor import site as files_of
from appliance.site import audit
from appliance.site.door import DOOR_FILE
from appliance.site.gpu import GpuProbe
from appliance.site.layout import (
    ENVELOPE_FILE,
    LOG_FILE,
    MANIFEST_FILE,
    PLACEMENT_FILE,
    RECORD_FILE,
    Release,
    Site,
)
from appliance.support.redact import Redactor
from runtime.history import MetricsHistory
from runtime.logs import LOG_NAME
from signing import Envelope, SigningError

RUNTIME_DIR = "runtime"  # <root>/runtime/<service>/{logs,history}: outlives releases
CERT_DIRS = ("tls", "certs", "frontdoor")
CDI_DIRS = ("/etc/cdi", "/var/run/cdi")
NVIDIA_TOOLS = ("nvidia-ctk", "nvidia-container-runtime", "nvidia-container-cli", "nvidia-smi")


@dataclass(frozen=True)
class Item:
    """One file of the export: its path inside, redacted bytes, time, and whether it may be
    dropped (oldest first) to fit `--max-size`."""

    arcname: str
    data: bytes
    mtime: float
    trimmable: bool = False


def _json(doc: Any) -> bytes:
    return (json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n").encode()


def _ts(value: Any) -> float | None:
    """Seconds since the epoch of a runtime log `ts` or history `t`."""
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None
    return None


def _since(since: float, key: str) -> Callable[[dict[str, Any]], bool]:
    """Whether a JSON line's `key` time is at or after `since` (lines with none are kept)."""
    def keep(doc: dict[str, Any]) -> bool:
        t = _ts(doc.get(key))
        return t is None or t >= since
    return keep


# -- site files -------------------------------------------------------------------
def runtime_items(site: Site, since: float, redactor: Redactor) -> Iterator[Item]:
    """Every service's runtime logs (all rotations) and metrics history since `since`."""
    base = site.root / RUNTIME_DIR
    if not base.is_dir():
        return
    for svc in sorted(p for p in base.iterdir() if p.is_dir() and not p.is_symlink()):
        logs = svc / "logs"
        if logs.is_dir():
            for p in sorted(logs.glob(f"{LOG_NAME}*")):
                yield from _file_item(p, f"runtime/{svc.name}/logs/{p.name}", since, "ts",
                                      redactor)
        hist = svc / "history"
        if hist.is_dir():
            for p in MetricsHistory(hist, 1 << 62, float("inf")).segments():
                yield from _file_item(p, f"runtime/{svc.name}/history/{p.name}", since, "t",
                                      redactor)


def _file_item(p: Path, arcname: str, since: float, key: str,
               redactor: Redactor) -> Iterator[Item]:
    if p.is_symlink() or not p.is_file():
        return
    try:
        mtime = p.stat().st_mtime
        if mtime < since:
            return
        raw = p.read_bytes()
        # a file whose first line is recent needs no line-by-line time filter
        first = raw[: raw.find(b"\n")] if b"\n" in raw else raw
        keep = _since(since, key)
        try:
            recent = keep(json.loads(first)) and _ts(json.loads(first).get(key)) is not None
        except (ValueError, AttributeError):
            recent = False
        data = redactor.lines(raw, arcname, keep=None if recent else keep)
    except FileNotFoundError:
        return  # rotated or pruned while we listed
    if data:
        yield Item(arcname, data, mtime, trimmable=True)


def release_items(site: Site, since: float, redactor: Redactor) -> Iterator[Item]:
    """Each release's record, manifest, placement, install log and process output."""
    for rel in site.releases():
        pre = f"releases/{rel.sequence}"
        for name in (RECORD_FILE, MANIFEST_FILE, ENVELOPE_FILE, PLACEMENT_FILE):
            p = rel.path / name
            if p.is_file() and not p.is_symlink():
                yield Item(f"{pre}/{name}", p.read_bytes(), p.stat().st_mtime)
        log = rel.path / LOG_FILE
        if log.is_file() and not log.is_symlink():
            yield Item(f"{pre}/{LOG_FILE}", redactor.lines(log.read_bytes(), f"{pre}/{LOG_FILE}"),
                       log.stat().st_mtime)
        run = rel.path / "run"
        if run.is_dir():
            for p in sorted([*run.glob("*.log"), *run.glob("*.log.1")]):
                yield from _file_item(p, f"{pre}/run/{p.name}", since, "ts", redactor)


def frontdoor_items(site: Site, since: float, redactor: Redactor) -> Iterator[Item]:
    """The front door's record and configuration (no secret: the token map holds only
    digests, and neither it nor a key is collected) and, on the process engine, HAProxy's
    own log (and the part moved to haproxy.log.1)."""
    conf = site.root / files_of.CONF_DIR
    for name in (DOOR_FILE, files_of.CONFIG):
        p = conf / name
        if p.is_file() and not p.is_symlink():
            yield Item(f"frontdoor/{name}", redactor.lines(p.read_bytes(), f"frontdoor/{name}"),
                       p.stat().st_mtime)
    proc = site.root / files_of.PROC_DIR
    for name in (f"{files_of.PROC_LOG}.1", files_of.PROC_LOG):
        yield from _file_item(proc / name, f"frontdoor/{name}", since, "ts", redactor)


def release_identity(rel: Release, current: int | None) -> dict[str, Any]:
    """Who made a release and what it is: name, version, sequence, digest, signer key ids."""
    doc: dict[str, Any] = {"sequence": rel.sequence, "current": rel.sequence == current}
    try:
        rec = rel.record
        doc.update(manifest_digest=rec.manifest_digest, status=rec.status, reason=rec.reason,
                   engine=rec.engine, updated=rec.updated, slot=rec.slot)
        m = rel.manifest()
        doc.update(name=m.name, version=m.version, created=m.created, expires=m.expires,
                   models=[f"{x.name}:{x.version}" for x in m.models],
                   services=[s.name for s in m.services])
    except ApplianceError as e:
        doc["error"] = str(e)
    try:
        env = Envelope.from_json((rel.path / ENVELOPE_FILE).read_bytes())
        doc["signer_key_ids"] = env.key_ids
    except (OSError, SigningError) as e:
        doc["signer_key_ids"] = []
        doc["signer_error"] = str(e)
    placement = rel.path / PLACEMENT_FILE
    if placement.is_file():
        try:
            doc["placement"] = json.loads(placement.read_bytes())
        except ValueError:
            doc["placement"] = None
    return doc


def site_items(site: Site, now: float) -> Iterator[Item]:
    """State, trust root, the audit trail (verbatim: it is hash-chained) and its check,
    and every release's identity."""
    for name in ("state.json", "root.json"):
        p = site.root / name
        if p.is_file() and not p.is_symlink():
            yield Item(f"site/{name}", p.read_bytes(), p.stat().st_mtime)
    trail = audit.audit_path(site.root)
    check: dict[str, Any] = {"ok": True, "entries": 0, "error": ""}
    try:
        check["entries"] = len(audit.verify(site.root))
    except ApplianceError as e:
        check.update(ok=False, error=str(e))
    for p in (trail, trail.parent / audit.HEAD_FILE):
        if p.is_file():
            yield Item(f"audit/{p.name}", p.read_bytes(), p.stat().st_mtime)
    yield Item("audit/verify.json", _json(check), now)
    try:
        cur = site.current()
        current = cur.sequence if cur is not None else None
    except ApplianceError:
        current = None
    try:
        state = site.state()
        st: dict[str, Any] = {"highest_sequence": state.highest_sequence,
                              "trust_root_version": state.trust_root_version}
    except ApplianceError as e:
        st = {"error": str(e)}
    rels = [release_identity(r, current) for r in site.releases()]
    yield Item("site/releases.json", _json({"current": current, "state": st,
                                            "releases": rels}), now)


# -- the box ------------------------------------------------------------------------
def _os_release() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return ""


def _read(path: str) -> str:
    try:
        return Path(path).read_text(errors="replace").strip()
    except OSError:
        return ""


def _disks(paths: list[Path]) -> list[dict[str, Any]]:
    out, seen = [], set()
    for p in paths:
        try:
            dev = os.stat(p).st_dev
            du = shutil.disk_usage(p)
        except OSError:
            continue
        if dev in seen:
            continue
        seen.add(dev)
        out.append({"path": str(p), "total_bytes": du.total, "free_bytes": du.free,
                    "used_pct": round(100 * (du.total - du.free) / du.total, 1)
                    if du.total else 0.0})
    return out


def _certificates(root: Path) -> list[dict[str, Any]]:
    """The public facts of the site's certificates (never a private key)."""
    from cryptography import x509
    found = []
    for d in CERT_DIRS:
        base = root / d
        if not base.is_dir():
            continue
        for p in sorted(base.iterdir()):
            if p.suffix not in (".crt", ".pem", ".cert") or not p.is_file():
                continue
            try:
                certs = x509.load_pem_x509_certificates(p.read_bytes())
            except (OSError, ValueError):
                continue  # a key file or something else: not a certificate, not read further
            for c in certs:
                found.append({"file": f"{d}/{p.name}", "subject": c.subject.rfc4514_string(),
                              "not_after": c.not_valid_after_utc.isoformat()})
    return found


def system_facts(site: Site, now: float, *, engine: Any = None, dest: Path | None = None,
                 ) -> dict[str, Any]:
    """Kernel, OS, engine, NVIDIA driver/CDI/toolkit, disks, certificates and the clock."""
    uname = platform.uname()
    facts: dict[str, Any] = {
        "hostname": socket.gethostname(), "kernel": f"{uname.release} {uname.version}",
        "machine": uname.machine, "os": _os_release(), "cpu_count": os.cpu_count(),
        "memory": _read("/proc/meminfo").splitlines()[:2],
        "uptime_s": float((_read("/proc/uptime").split() or ["0"])[0]),
    }
    engine_doc: dict[str, Any] = {"name": None, "version": None}
    if engine is not None:
        engine_doc["name"] = getattr(engine, "name", type(engine).__name__)
        try:
            engine_doc["version"] = engine.ping()
        except ApplianceError as e:
            engine_doc["error"] = str(e)
    facts["engine"] = engine_doc
    facts["nvidia"] = {
        "driver": _read("/proc/driver/nvidia/version").splitlines()[:1],
        "cdi_specs": sorted(str(p) for d in CDI_DIRS if Path(d).is_dir()
                            for p in Path(d).iterdir()),
        "tools": {t: shutil.which(t) for t in NVIDIA_TOOLS},
    }
    paths = [site.root, Path("/"), Path("/var/lib/docker"), Path("/var/lib/containers")]
    facts["disks"] = _disks(paths + ([dest] if dest else []))
    facts["certificates"] = _certificates(site.root)
    clock: dict[str, Any] = {"now": datetime.fromtimestamp(now, UTC).isoformat()}
    try:
        cur = site.current()
        if cur is not None:
            m = cur.manifest()
            engine_doc["name"] = engine_doc["name"] or cur.record.engine
            clock.update(release=cur.sequence, bundle_created=m.created,
                         bundle_expires=m.expires,
                         offset_from_signing_s=round(now - m.created_at.timestamp(), 1),
                         expires_in_s=round(m.expires_at.timestamp() - now, 1))
    except ApplianceError as e:
        clock["error"] = str(e)
    facts["clock"] = clock
    return facts


def gpu_state(probe: GpuProbe | None) -> dict[str, Any]:
    """The GPUs as NVML sees them now (or why it cannot)."""
    if probe is None:
        from appliance.site.gpu import NvmlProbe
        probe = NvmlProbe()
    return probe.probe().to_dict()
