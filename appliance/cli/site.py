"""`appliance install|status|rollback|releases`: the site side, headless.

Exit codes scripts can use (also in docs/field-guide.md):
  0 installed / done            3 preflight failed, nothing changed
  4 bundle refused (signature, expiry, sequence, corrupted)
  5 placement refused (does not fit the GPUs)
  6 engine or image load failed before start, nothing changed
  7 new release failed after start; the previous release is serving
  8 failed and nothing earlier could be restored (see the message)
  9 another installer holds the site lock
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from appliance.errors import (
    ApplianceError,
    BundleError,
    EngineError,
    InstallLockedError,
    PlacementError,
    PreflightError,
    ReleaseFailedError,
    RestoreError,
    TrustError,
)
from appliance.progress import Progress
from appliance.site import DEFAULT_ROOT, Site
from signing import SigningError

EXIT_PREFLIGHT = 3
EXIT_BUNDLE = 4
EXIT_PLACEMENT = 5
EXIT_ENGINE = 6
EXIT_ROLLED_BACK = 7
EXIT_NOTHING_SERVING = 8
EXIT_LOCKED = 9
RUNTIME_COMMAND_ENV = "APPLIANCE_RUNTIME_COMMAND"  # process engine: command template


def register(sub: argparse._SubParsersAction) -> None:
    """Add this module's subcommands to the top-level parser."""
    p = sub.add_parser("install", help="verify a bundle and install it as the serving release")
    p.add_argument("bundle", type=Path, help="the bundle file (or the first of its parts)")
    p.add_argument("--yes", action="store_true", help="run without asking (required headless)")
    p.add_argument("--trust", type=Path, help="trust root to accept on a first install")
    p.add_argument("--allow-expired", action="store_true",
                   help="install a bundle past its expiry (logged); for a wrong site clock")
    p.add_argument("--health-timeout", type=float, default=300.0, metavar="SECONDS")
    p.add_argument("--gpu-state", type=Path, help="use a recorded GPU state instead of NVML")
    p.add_argument("--json", action="store_true", help="progress as JSON lines on stdout")
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


def _engine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--root", type=Path, default=_default_root(), help="site root directory")
    p.add_argument("--engine", choices=("docker", "process"), default=None,
                   help="docker (Docker or Podman socket) or process (no container engine); "
                        "default: the current release's, else docker")
    p.add_argument("--docker-host", help="engine socket URL, e.g. unix:///run/podman/podman.sock")
    p.add_argument("--unit-dir", type=Path, help="process engine: where to write systemd units")


def make_site_engine(args: argparse.Namespace, site: Site) -> Any:
    """The engine the arguments (or the current release) name."""
    from appliance.engines import make_engine
    kind = args.engine
    if kind is None:
        cur = site.current() if site.root.exists() else None
        kind = cur.record.engine if cur is not None and cur.record.engine else "docker"
    if kind == "process":
        from appliance.engines.process import DEFAULT_COMMAND, DEFAULT_UNIT_DIR, ProcessEngine
        template = os.environ.get(RUNTIME_COMMAND_ENV)
        return ProcessEngine(site, command=shlex.split(template) if template else DEFAULT_COMMAND,
                             unit_dir=args.unit_dir or DEFAULT_UNIT_DIR)
    if kind == "docker" and not args.docker_host:
        from appliance.engines.discover import find_docker_host
        return make_engine(kind, site, docker_host=find_docker_host())
    return make_engine(kind, site, docker_host=args.docker_host)


def exit_code(e: BaseException) -> int:
    """The documented exit code for an error."""
    if isinstance(e, InstallLockedError):
        return EXIT_LOCKED
    if isinstance(e, PreflightError):
        return EXIT_PREFLIGHT
    if isinstance(e, RestoreError):
        return EXIT_NOTHING_SERVING
    if isinstance(e, ReleaseFailedError):
        return EXIT_ROLLED_BACK if e.previous_serving else EXIT_NOTHING_SERVING
    if isinstance(e, BundleError | TrustError | SigningError):
        return EXIT_BUNDLE
    if isinstance(e, PlacementError):
        return EXIT_PLACEMENT
    if isinstance(e, EngineError):
        return EXIT_ENGINE
    return 1


class PlainProgress:
    """Renders plan events as plain lines (or JSON lines) for a terminal or a log."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self._last_pct: dict[str, int] = {}

    def __call__(self, ev: Progress) -> None:
        from appliance.plan import CheckEvent, StepEvent
        if self.as_json:
            doc: dict[str, Any] = {"step": ev.step, "done": ev.done, "total": ev.total,
                                   "message": ev.message, "kind": type(ev).__name__}
            if isinstance(ev, StepEvent):
                doc["status"] = ev.status
            if isinstance(ev, CheckEvent):
                doc["level"] = ev.level
            print(json.dumps(doc), flush=True)
            return
        if isinstance(ev, StepEvent):
            mark = {"running": "==>", "ok": " ok", "warn": "  !", "failed": "  X"}[ev.status]
            print(f"{mark} {ev.step}: {ev.message}", flush=True)
        elif isinstance(ev, CheckEvent):
            print(f"    {ev.message}", flush=True)
        elif ev.total:
            pct = ev.done * 100 // ev.total
            if pct // 10 != self._last_pct.get(ev.step, -1) // 10 or ev.done == ev.total:
                self._last_pct[ev.step] = pct
                print(f"    {ev.step}: {pct:3d}% of {ev.total / 1024**2:.1f} MiB", flush=True)
        elif ev.message:
            print(f"    {ev.message}", flush=True)


def cmd_install(args: argparse.Namespace) -> int:
    from appliance.gpu import GpuProbe, NvmlProbe, RecordedProbe
    from appliance.plan import InstallOptions, InstallPlan
    if not args.yes:
        print("error: headless install needs --yes (or run appliance-installer for the "
              "screens)", file=sys.stderr)
        return 2
    site = Site(args.root)
    out = PlainProgress(args.json)
    try:
        probe: GpuProbe = RecordedProbe.from_file(args.gpu_state) if args.gpu_state \
            else NvmlProbe()
        plan = InstallPlan(InstallOptions(
            bundle=args.bundle, site=site, engine=make_site_engine(args, site), gpu_probe=probe,
            trust=args.trust, allow_expired=args.allow_expired,
            health_timeout_s=args.health_timeout), progress=out)
        result = plan.run()
    except (ApplianceError, SigningError) as e:
        print(f"error: {e}", file=sys.stderr)
        return exit_code(e)
    if not args.json:
        print(f"release {result.sequence} is serving"
              + (f" (release {result.previous} stopped)" if result.previous
                 and result.previous != result.sequence else ""))
        for svc, url in sorted(result.endpoints.items()):
            print(f"    {svc}: {url}")
        print(f"    roll back with: appliance rollback --root {site.root}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from appliance.acceptance import is_ready
    site = Site(args.root)
    cur = site.current()
    if cur is None:
        print("no release is installed here" if not args.json else json.dumps({"current": None}))
        return 1
    rec = cur.record
    m = cur.manifest()
    health = {s.name: is_ready(rec.endpoints.get(s.name, "") + s.health) for s in m.services}
    if args.json:
        print(json.dumps({"current": cur.sequence, "version": m.version, "name": m.name,
                          "engine": rec.engine, "status": rec.status,
                          "endpoints": rec.endpoints, "ready": health,
                          "highest_sequence": site.state().highest_sequence}, sort_keys=True))
    else:
        print(f"{m.name} {m.version}: release {cur.sequence} ({rec.status}, engine {rec.engine})")
        for s in m.services:
            url = rec.endpoints.get(s.name, "?")
            print(f"    {s.name}: {url} {'ready' if health[s.name] else 'NOT READY'}")
    return 0 if all(health.values()) else 1


def cmd_rollback(args: argparse.Namespace) -> int:
    from appliance.rollback import rollback
    site = Site(args.root)
    try:
        seq = rollback(site, make_site_engine(args, site), args.sequence,
                       progress=PlainProgress(False), health_timeout_s=args.health_timeout)
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
