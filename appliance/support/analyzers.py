"""Analyzers: what a verified export says about its site, as findings with what to do.

`SiteData.from_export` reads an export once; each analyzer is a pure function over it
returning findings. No IO here, so each is tested on an export made to trigger it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from appliance.support.verify import VerifiedExport

CRASH_LOOP_STARTS = 3  # this many runtime starts ...
CRASH_LOOP_WINDOW_S = 600.0  # ... within this long is a crash loop
DISK_USED_PCT = 90.0
DISK_FREE_BYTES = 2 * 1024**3
CLOCK_SKEW_S = 300.0
CERT_WARN_DAYS = 30
REFUSALS = 3

SEVERITY_ORDER = {"critical": 0, "warning": 1, "info": 2}


@dataclass(frozen=True)
class Finding:
    """One thing the vendor should know, and what to do about it."""

    severity: str  # critical, warning, info
    code: str
    title: str
    detail: str
    action: str


@dataclass(frozen=True)
class Event:
    """One point of the timeline."""

    t: float
    kind: str  # install, update, rollback, refused, trust, start, crash-loop, failed, ...
    text: str


def ts(value: Any) -> float | None:
    """Seconds since the epoch of an ISO time (a trailing Z allowed) or a number."""
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str) and value:
        try:
            d = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        return (d if d.tzinfo else d.replace(tzinfo=UTC)).timestamp()
    return None


@dataclass
class SiteData:
    """Everything the report and analyzers use from one export."""

    name: str
    key_id: str
    created: float
    system: dict[str, Any]
    gpu: dict[str, Any]
    releases: dict[str, Any]
    audit: list[dict[str, Any]]
    audit_check: dict[str, Any]
    logs: list[dict[str, Any]]
    metrics: dict[str, list[dict[str, Any]]]  # service -> samples, oldest first
    install_logs: list[dict[str, Any]]
    redaction: dict[str, Any]
    export_meta: dict[str, Any]
    events: list[Event] = field(default_factory=list)

    @classmethod
    def from_export(cls, v: VerifiedExport) -> SiteData:
        """Read the parts of a verified export the report uses."""
        meta = v.json("export.json", {}) or {}
        system = v.json("system.json", {}) or {}
        metrics: dict[str, list[dict[str, Any]]] = {}
        logs: list[dict[str, Any]] = []
        for doc in v.jsonl("runtime/"):  # one pass: a busy week is many lines
            parts = str(doc.get("_file", "")).split("/")
            if len(parts) >= 3 and parts[2] == "history":
                metrics.setdefault(parts[1], []).append(doc)
            elif len(parts) >= 3 and parts[2] == "logs":
                logs.append(doc)
        for samples in metrics.values():
            samples.sort(key=lambda d: float(d.get("t") or 0))
        logs += v.jsonl("engine/")
        audit = v.jsonl("audit/audit.jsonl")
        site = cls(
            name=str(meta.get("hostname") or system.get("hostname") or v.top),
            key_id=v.key_id, created=ts(meta.get("created")) or 0.0, system=system,
            gpu=v.json("gpu.json", {}) or {}, releases=v.json("site/releases.json", {}) or {},
            audit=audit, audit_check=v.json("audit/verify.json", {}) or {}, logs=logs,
            metrics=metrics, install_logs=v.jsonl("releases/"),
            redaction=v.json("redaction.json", {}) or {}, export_meta=meta)
        site.events = timeline(site)
        return site

    def current_release(self) -> dict[str, Any] | None:
        """The identity of the release `current` pointed at."""
        for r in self.releases.get("releases", []):
            if r.get("current"):
                return dict(r)
        return None

    def starts(self) -> list[tuple[float, str]]:
        """Times the runtime started, with the service, oldest first."""
        out = []
        for d in self.logs:
            if str(d.get("msg", "")).startswith("starting:"):
                t = ts(d.get("ts"))
                if t is not None:
                    out.append((t, str(d.get("_file", "")).split("/")[1]))
        return sorted(out)


def timeline(site: SiteData) -> list[Event]:
    """Installs, updates, rollbacks, refusals, trust changes, restarts and crash loops."""
    out: list[Event] = []
    for a in site.audit:
        t = ts(a.get("time"))
        if t is None:
            continue
        ev = str(a.get("event", ""))
        what = {"install": "installed", "update": "updated to", "reinstall": "reinstalled",
                "rollback": "rolled back to", "rollback_failed": "rollback failed for",
                "install_failed": "install failed:", "refused": "refused",
                "trust": "trust changed:", "allow_expired": "expired bundle accepted:"}.get(
                    ev, ev)
        detail = " ".join(str(a[k]) for k in ("version", "sequence", "reason", "action",
                                               "step", "bundle") if a.get(k) not in (None, ""))
        out.append(Event(t, ev, f"{what} {detail} (by {a.get('user', '?')})".strip()))
    for t, svc in site.starts():
        out.append(Event(t, "start", f"runtime {svc} started"))
    for t, svc, n in crash_loops(site):
        out.append(Event(t, "crash-loop", f"runtime {svc}: {n} starts within "
                                          f"{CRASH_LOOP_WINDOW_S / 60:.0f} min"))
    return sorted(out, key=lambda e: e.t)


def crash_loops(site: SiteData) -> list[tuple[float, str, int]]:
    """(first start, service, starts) for each run of starts close together."""
    by_svc: dict[str, list[float]] = {}
    for t, svc in site.starts():
        by_svc.setdefault(svc, []).append(t)
    loops = []
    for svc, times in by_svc.items():
        i = 0
        while i < len(times):
            j = i
            while j + 1 < len(times) and times[j + 1] - times[i] <= CRASH_LOOP_WINDOW_S:
                j += 1
            if j - i + 1 >= CRASH_LOOP_STARTS:
                loops.append((times[i], svc, j - i + 1))
                i = j + 1
            else:
                i += 1
    return sorted(loops)


# -- analyzers ------------------------------------------------------------------------
def gpu_serving_on_cpu(site: SiteData) -> list[Finding]:
    """The server has NVIDIA GPUs but the serving release runs on the CPU."""
    gpus = site.gpu.get("gpus") or []
    driver = (site.system.get("nvidia") or {}).get("driver") or []
    if not gpus and not driver:
        return []
    cur = site.current_release() or {}
    placement = cur.get("placement") or {}
    on_cpu = [s["service"] for s in placement.get("services", []) if s.get("device") == "cpu"]
    fell_back = [d for d in site.logs if "runs on CPU" in str(d.get("msg", ""))]
    if not on_cpu and not fell_back:
        return []
    tools = (site.system.get("nvidia") or {}).get("tools") or {}
    cdi = (site.system.get("nvidia") or {}).get("cdi_specs") or []
    why = [] if any(tools.values()) else ["no NVIDIA container toolkit found"]
    if not cdi:
        why.append("no CDI spec in /etc/cdi or /var/run/cdi")
    return [Finding(
        "critical", "gpu-on-cpu", "GPU server serving on the CPU",
        f"{len(gpus) or 'some'} GPU(s) present, but services {', '.join(on_cpu) or '?'} run on "
        f"the CPU{'; ' + '; '.join(why) if why else ''}"
        f"{f'; the runtime logged a CPU fallback {len(fell_back)} time(s)' if fell_back else ''}.",
        "Install nvidia-container-toolkit and generate the CDI spec (nvidia-ctk cdi generate "
        "--output=/etc/cdi/nvidia.yaml), then install the release again: placement is decided "
        "at install.")]


def crash_loop(site: SiteData) -> list[Finding]:
    """The runtime restarted again and again in a short time."""
    loops = crash_loops(site)
    if not loops:
        return []
    t, svc, n = loops[-1]
    return [Finding(
        "critical", "crash-loop", f"Runtime crash loop ({len(loops)} episode(s))",
        f"service {svc} started {n} times within {CRASH_LOOP_WINDOW_S / 60:.0f} minutes from "
        f"{_when(t)}; see runtime/{svc}/logs in the export.",
        "Read the log lines just before each start (errors, out of memory); check GPU memory "
        "and disk; if it began with an update, `appliance rollback` to the previous release.")]


def disk_nearly_full(site: SiteData) -> list[Finding]:
    """A disk the appliance uses is nearly full."""
    out = []
    for d in site.system.get("disks") or []:
        used, free = float(d.get("used_pct") or 0), int(d.get("free_bytes") or 0)
        if used >= DISK_USED_PCT or free < DISK_FREE_BYTES:
            out.append(Finding(
                "warning", "disk-full", f"Disk nearly full: {d.get('path')}",
                f"{used:.0f}% used, {free / 1024**3:.1f} GiB free.",
                "Free space before the next update (an update needs its bundle's size plus "
                "margin): remove old bundles from the disk; `appliance releases` lists "
                "releases whose images can go."))
    return out


def clock_skew(site: SiteData) -> list[Finding]:
    """The site clock is before the bundle's signing time, or far from the export's."""
    clock = site.system.get("clock") or {}
    offset = clock.get("offset_from_signing_s")
    if isinstance(offset, int | float) and offset < -CLOCK_SKEW_S:
        return [Finding(
            "warning", "clock-skew", "Site clock is behind the bundle's signing time",
            f"the clock read {clock.get('now')}, {-offset / 3600:.1f} h before the serving "
            f"bundle was made ({clock.get('bundle_created')}).",
            "Set the site clock (timedatectl set-time, or the hospital's NTP server); expiry "
            "checks and log times depend on it.")]
    expires_in = clock.get("expires_in_s")
    if isinstance(expires_in, int | float) and expires_in < 0:
        return [Finding(
            "warning", "bundle-expired", "Serving bundle has expired by the site clock",
            f"it expired {clock.get('bundle_expires')}; the clock reads {clock.get('now')}.",
            "Ship an update bundle, or correct the clock if it is wrong.")]
    return []


def certificate_expiry(site: SiteData) -> list[Finding]:
    """A site certificate expires soon (or has)."""
    out = []
    for c in site.system.get("certificates") or []:
        t = ts(c.get("not_after"))
        if t is None:
            continue
        days = (t - site.created) / 86400
        if days < CERT_WARN_DAYS:
            out.append(Finding(
                "critical" if days < 0 else "warning", "cert-expiry",
                f"Certificate {'expired' if days < 0 else 'near expiry'}: {c.get('file')}",
                f"{c.get('subject')} is valid until {c.get('not_after')} "
                f"({days:.0f} days from the export).",
                "Renew the certificate (the hospital's CA or a new site certificate) and "
                "restart the front door; clients refuse an expired one."))
    return out


def repeated_refusals(site: SiteData) -> list[Finding]:
    """Several bundles were refused: tampering, a damaged stick, or the wrong bundle."""
    refused = [a for a in site.audit if a.get("event") == "refused"]
    if len(refused) < REFUSALS:
        return []
    reasons: dict[str, int] = {}
    for a in refused:
        reasons[str(a.get("reason", "?"))] = reasons.get(str(a.get("reason", "?")), 0) + 1
    text = ", ".join(f"{r} x{n}" for r, n in sorted(reasons.items()))
    return [Finding(
        "critical" if "tampered" in reasons or "wrong key" in reasons else "warning",
        "refusals", f"{len(refused)} bundles refused", f"reasons: {text}; last "
        f"{_when(ts(refused[-1].get('time')) or 0)} by {refused[-1].get('user', '?')}.",
        "Ask the site who brought which stick; ship a fresh copy with its signed checksum "
        "list. Tampered or wrong-key refusals are security events: tell the security team.")]


def expired_accepted(site: SiteData) -> list[Finding]:
    """A bundle past its expiry was installed with --allow-expired."""
    uses = [a for a in site.audit if a.get("event") == "allow_expired"]
    if not uses:
        return []
    last = uses[-1]
    return [Finding(
        "warning", "expired-accepted", "Expired bundle accepted with --allow-expired",
        f"{len(uses)} time(s); last: release {last.get('sequence')} ({last.get('version')}), "
        f"expired {last.get('expired')}, by {last.get('user', '?')} at {last.get('time')}.",
        "Check the site clock; ship a bundle that is in date so the override is not needed.")]


def audit_intact(site: SiteData) -> list[Finding]:
    """The audit trail's hash chain did not verify on site."""
    if site.audit_check.get("ok", True):
        return []
    return [Finding("critical", "audit-broken", "Audit trail was edited",
                    str(site.audit_check.get("error", "")),
                    "Treat as a security incident: keep this export, ask the site who has "
                    "root access, compare with the previous export's trail.")]


def export_trimmed(site: SiteData) -> list[Finding]:
    """The export left out old files to fit its size limit."""
    trimmed = site.export_meta.get("trimmed") or []
    if not trimmed:
        return []
    return [Finding("info", "trimmed", f"{len(trimmed)} old file(s) left out of the export",
                    f"to fit --max-size; the newest left out was modified "
                    f"{trimmed[-1].get('modified', '?')}.",
                    "If the problem is older, ask for an export with a larger --max-size or a "
                    "shorter --since.")]


ANALYZERS: tuple[Callable[[SiteData], list[Finding]], ...] = (
    audit_intact, gpu_serving_on_cpu, crash_loop, disk_nearly_full, clock_skew,
    certificate_expiry, repeated_refusals, expired_accepted, export_trimmed,
)


def analyze(site: SiteData) -> list[Finding]:
    """Every analyzer's findings, most severe first."""
    found = [f for a in ANALYZERS for f in a(site)]
    return sorted(found, key=lambda f: SEVERITY_ORDER.get(f.severity, 9))


def _when(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M UTC")
