"""`appliance install|status|rollback|releases`: the site side, headless.

Exit codes scripts can use are the errors' own (`appliance.errors`, listed in
docs/field-guide.md).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from appliance.cli.progress import ProgressPrinter
from appliance.cli.types import SubParsers
from appliance.engines import Engine, make_engine
from appliance.errors import ApplianceError, CanaryFlagError, exit_code
from appliance.frontdoor.canary import parse_bounds, parse_canary
from appliance.site import watchdog_units
from appliance.site.devices import (
    CAUSE_WORDS,
    ModelDevice,
    ask_devices,
    cpu_lines,
    device_lines,
    site_token,
)
from appliance.site.door import DoorRecord, certificate_warning
from appliance.site.fallbacks import fallback_line
from appliance.site.fallbacks import observe as observe_fallbacks
from appliance.site.layout import DEFAULT_ROOT, Site
from signing import SigningError

if TYPE_CHECKING:
    from appliance.bundle.manifest import Manifest
    from appliance.site.plan import InstallPlan, InstallResult


def register(sub: SubParsers) -> None:
    """Add this module's subcommands to the top-level parser."""
    p = sub.add_parser("install", help="verify a bundle and install it as the serving release")
    p.add_argument("bundle", type=Path, help="the bundle file (or the first of its parts)")
    p.add_argument("--yes", action="store_true", help="run without asking (required headless)")
    p.add_argument("--trust", type=Path, help="trust root to accept on a first install")
    p.add_argument("--allow-expired", action="store_true",
                   help="install a bundle past its expiry (logged); for a wrong site clock")
    p.add_argument("--expired-max-days", type=int, default=30, metavar="DAYS",
                   help="with --allow-expired: refuse a bundle expired longer ago than this "
                        "(default 30)")
    p.add_argument("--health-timeout", type=float, default=300.0, metavar="SECONDS")
    p.add_argument("--gpu-state", type=Path, help="use a recorded GPU state instead of NVML")
    p.add_argument("--json", action="store_true", help="progress as JSON lines on stdout")
    p.add_argument("--tls-cert", type=Path, help="the front door's certificate (PEM, with its "
                   "chain): the hospital's own instead of the site certificate made here")
    p.add_argument("--tls-key", type=Path, help="the private key of --tls-cert (PEM)")
    p.add_argument("--canary", metavar="SHARE%:WINDOW",
                   help="send SHARE of live traffic to the new release for WINDOW (e.g. "
                        "10%%:5m) and promote it only if its errors and p99 stay in bounds")
    p.add_argument("--canary-bounds", metavar="BOUNDS", default="",
                   help="override the canary's bounds: errors=+1%%,p99=x1.5,slack=5ms,min=20")
    _engine_args(p)
    p.set_defaults(func=cmd_install)

    p = sub.add_parser("status", help="the serving release and whether it answers")
    _engine_args(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("rollback", help="serve an earlier installed release again")
    p.add_argument("sequence", type=int, nargs="?", help="release to serve (default: previous)")
    p.add_argument("--health-timeout", type=float, default=300.0, metavar="SECONDS")
    _engine_args(p)
    p.set_defaults(func=cmd_rollback)

    p = sub.add_parser("releases", help="installed releases")
    p.add_argument("--root", type=Path, default=_default_root())
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_releases)


def _default_root() -> Path:
    return Path(os.environ.get("APPLIANCE_ROOT", str(DEFAULT_ROOT)))


def _engine(args: argparse.Namespace, site: Site) -> Engine:
    return make_engine(args.engine, site, docker_host=args.docker_host, unit_dir=args.unit_dir,
                       runtime_from=getattr(args, "runtime_from", None))


def _engine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--root", type=Path, default=_default_root(), help="site root directory")
    p.add_argument("--engine", choices=("docker", "process"), default=None,
                   help="docker (Docker or Podman socket) or process (no container engine); "
                        "default: the current release's, else docker")
    p.add_argument("--docker-host", help="engine socket URL, e.g. unix:///run/podman/podman.sock")
    p.add_argument("--unit-dir", type=Path, help="where to write systemd units (the process "
                   "engine's and the watchdog's; default /etc/systemd/system)")
    p.add_argument("--runtime-from", choices=("image", "host"), default=None,
                   help="process engine: run each service from its image's root (default), "
                        "or the host's own Python runtime (development, no image)")


def cmd_install(args: argparse.Namespace) -> int:
    from appliance.site.gpu import GpuProbe, NvmlProbe, RecordedProbe
    from appliance.site.plan import InstallOptions, InstallPlan
    if not args.yes:
        print("error: headless install needs --yes (or run appliance-installer for the "
              "screens)", file=sys.stderr)
        return 2
    if (args.tls_cert is None) != (args.tls_key is None):
        print("error: --tls-cert and --tls-key go together: give both, or neither for the "
              "site certificate", file=sys.stderr)
        return 2
    try:
        canary = parse_canary(args.canary) if args.canary else None
        bounds = parse_bounds(args.canary_bounds)
    except CanaryFlagError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    site = Site(args.root)
    out = ProgressPrinter(as_json=args.json, bar=False)
    if args.trust and not args.json:
        _print_trust(args.trust)
    try:
        probe: GpuProbe = RecordedProbe.from_file(args.gpu_state) if args.gpu_state \
            else NvmlProbe()
        plan = InstallPlan(InstallOptions(
            bundle=args.bundle, site=site, engine=_engine(args, site), gpu_probe=probe,
            trust=args.trust, allow_expired=args.allow_expired,
            max_expired=timedelta(days=args.expired_max_days),
            health_timeout_s=args.health_timeout, tls_cert=args.tls_cert,
            tls_key=args.tls_key, canary=canary, canary_bounds=bounds,
            unit_dir=args.unit_dir), progress=out)
        result = plan.run()
    except (ApplianceError, SigningError) as e:
        print(f"error: {e}", file=sys.stderr)
        return exit_code(e)
    if not args.json:
        print(f"release {result.sequence} is serving"
              + (f" (release {result.previous} stopped)" if result.previous
                 and result.previous != result.sequence else ""))
        if result.door is not None:
            for line in result.door.lines(plan.manifest or site.release(result.sequence)
                                          .manifest()):
                print(f"    {line}")
        else:
            for svc, url in sorted(result.endpoints.items()):
                print(f"    {svc}: {url}")
        for line in _device_summary(plan, result):
            print(f"    {line}")
        if result.token:
            print(f"    the site token (shown this once; kept in {site.root / 'token'}, 0600):\n"
                  f"        {result.token}")
        print(f"    roll back with: appliance rollback --root {site.root}")
        if result.watchdog is not None:
            print(f"    {result.watchdog.line}")
    return 0


def _print_trust(path: Path) -> None:
    """Show the root given with --trust, so the person compares it with the vendor's letter."""
    from signing import SigningError, TrustRoot
    try:
        root = TrustRoot.from_json(path.read_bytes())
    except (OSError, SigningError):
        return  # preflight says what is wrong with it
    print(f"trust root {path}: version {root.version}, {root.threshold} of {len(root.keys)} "
          "key(s) must sign; compare each fingerprint with the vendor's letter:")
    for kid in sorted(root.keys):
        name = root.names.get(kid, "")
        print(f"    {root.keys[kid].fingerprint}" + (f"  {name}" if name else ""))


def cmd_status(args: argparse.Namespace) -> int:
    from appliance.site.acceptance import is_ready
    site = Site(args.root)
    cur = site.current()
    if cur is None:
        print("no release is installed here" if not args.json else json.dumps({"current": None}))
        return 1
    rec = cur.record
    m = cur.manifest()
    health = {s.name: is_ready(rec.endpoints.get(s.name, "") + s.health) for s in m.services}
    door = DoorRecord.read(site)
    door = door if door is not None and door.sequence == cur.sequence else None
    warning = certificate_warning(site, datetime.now(UTC))
    dead = _dead_services(args, site, cur.sequence, [s for s, ok in health.items() if not ok])
    fallbacks = observe_fallbacks(site) if door else []
    devices = _devices(site, m, rec.endpoints, health)
    if args.json:
        print(json.dumps({"current": cur.sequence, "version": m.version, "name": m.name,
                          "engine": rec.engine, "status": rec.status,
                          "endpoints": rec.endpoints, "ready": health,
                          "urls": {s.name: door.url(s.name) for s in m.services} if door
                          else {}, "fingerprint": door.fingerprint if door else None,
                          "certificate_warning": warning,
                          "fallback_answers": {f.service: f.answered for f in fallbacks},
                          "fallbacks": [asdict(f) for f in fallbacks],
                          "highest_sequence": site.state().highest_sequence,
                          "not_running": dead,
                          "watchdog": watchdog_units.status_line(site.root),
                          "devices": {svc: [d.to_dict() for d in ds]
                                      for svc, ds in devices.items()}}, sort_keys=True))
    else:
        print(f"{m.name} {m.version}: release {cur.sequence} ({rec.status}, engine {rec.engine})")
        for s in m.services:
            url = rec.endpoints.get(s.name, "?")
            where = f"{door.url(s.name)} (runtime {url})" if door else url
            print(f"    {s.name}: {where} {'ready' if health[s.name] else 'NOT READY'}")
            for line in _device_lines(devices.get(s.name, [])):
                print(f"        {line}")
        if door is not None:
            for line in door.lines(m):
                print(f"    {line}")
            for f in fallbacks:
                print(f"    {fallback_line(f)}")
        if warning:
            print(f"warning: {warning}")
        print(f"    {watchdog_units.status_line(site.root)}")
        for svc in dead:
            print(f"    {svc} is not running (nothing supervises it: its supervisor was killed "
                  f"or the host rebooted without systemd); start it with: appliance rollback "
                  f"{cur.sequence} --root {site.root}")
    return 0 if all(health.values()) else 1


def _device_summary(plan: InstallPlan, result: InstallResult) -> list[str]:
    """Where each model runs after the install, and why a GPU-preferring one is on CPU."""
    if plan.manifest is None:
        return []
    return device_lines(result.devices) + cpu_lines(
        plan.manifest, result.placement, result.devices,
        container=plan.engine.name != "process")


def _devices(site: Site, manifest: Manifest, endpoints: dict[str, str],
             health: dict[str, bool]) -> dict[str, list[ModelDevice]]:
    """Each answering service's models and their devices, asked of its runtime."""
    token = site_token(site.root)
    return {s.name: ask_devices(endpoints[s.name], list(s.models), token)
            for s in manifest.services if health.get(s.name) and s.name in endpoints}


def _device_lines(devices: list[ModelDevice]) -> list[str]:
    """`model m on cpu (why)` for each model of one service."""
    out = []
    for d in devices:
        why = CAUSE_WORDS.get(d.cause, d.cause)
        out.append(f"model {d.model} on {d.device}" + (f" ({why}: {d.detail})" if why else ""))
    return out


def _dead_services(args: argparse.Namespace, site: Site, sequence: int,
                   not_ready: list[str]) -> list[str]:
    """Of the services that do not answer, those whose engine says nothing runs them."""
    if not not_ready:
        return []
    try:
        engine = _engine(args, site)
        return [s for s in not_ready if not engine.alive(sequence, s)]
    except Exception:  # the engine itself is down: status says NOT READY already
        return []


def cmd_rollback(args: argparse.Namespace) -> int:
    from appliance.site.rollback import rollback
    site = Site(args.root)
    try:
        seq = rollback(site, _engine(args, site), args.sequence,
                       progress=ProgressPrinter(bar=False), health_timeout_s=args.health_timeout)
    except ApplianceError as e:
        print(f"error: {e}", file=sys.stderr)
        return exit_code(e)
    print(f"release {seq} is serving")
    return 0


def cmd_releases(args: argparse.Namespace) -> int:
    site = Site(args.root)
    cur = site.current() if site.root.exists() else None
    rows = []
    for r in site.releases():
        rec = r.record
        try:
            version = r.manifest().version
        except ApplianceError:
            version = "?"
        rows.append({"sequence": r.sequence, "version": version, "status": rec.status,
                     "current": cur is not None and cur.sequence == r.sequence,
                     "engine": rec.engine, "updated": rec.updated, "reason": rec.reason})
    if args.json:
        print(json.dumps(rows, sort_keys=True))
        return 0
    if not rows:
        print("no releases installed")
    for row in rows:
        mark = "*" if row["current"] else " "
        extra = f"  ({row['reason']})" if row["reason"] else ""
        print(f"{mark} {row['sequence']:>5}  {row['version']:<12} {row['status']:<9} "
              f"{row['updated']}{extra}")
    return 0
