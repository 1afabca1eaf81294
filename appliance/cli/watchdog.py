"""`appliance watchdog`: restart serving services that stopped answering (hung runtimes)."""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import threading
from pathlib import Path

from appliance.cli.site import _engine, _engine_args
from appliance.cli.types import SubParsers
from appliance.engines.process import DEFAULT_UNIT_DIR
from appliance.fsutil import atomic_write
from appliance.site.engine import site_id
from appliance.site.layout import Site
from appliance.site.watchdog import CHECK_EVERY_S, UNHEALTHY_S, Watchdog


def register(sub: SubParsers) -> None:
    """Add this module's subcommands to the top-level parser."""
    p = sub.add_parser("watchdog", help="restart serving services that answer nothing "
                                        f"for --unhealthy seconds (default {UNHEALTHY_S:.0f})")
    p.add_argument("--unhealthy", type=float, default=UNHEALTHY_S, metavar="SECONDS",
                   help="restart a service not ready this long")
    p.add_argument("--once", action="store_true", help="probe once and exit")
    p.add_argument("--write-unit", action="store_true",
                   help="write (not start) a systemd unit that runs this watchdog")
    _engine_args(p)
    p.set_defaults(func=cmd_watchdog)


def cmd_watchdog(args: argparse.Namespace) -> int:
    site = Site(args.root)
    if args.write_unit:
        path = write_unit(site, args)
        print(f"wrote {path}; enable it with: systemctl daemon-reload && "
              f"systemctl enable --now {path.name}")
        return 0
    dog = Watchdog(site, _engine(args, site), unhealthy_s=args.unhealthy)
    if args.once:
        dog.check()
        return 0
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_a: stop.set())
    dog.run(stop, CHECK_EVERY_S)
    return 0


def write_unit(site: Site, args: argparse.Namespace) -> Path:
    """The watchdog's systemd unit for this site (named by the site id)."""
    cmd = [sys.executable, "-m", "appliance", "watchdog", "--root", str(site.root),
           "--unhealthy", str(args.unhealthy)]
    if args.engine:
        cmd += ["--engine", args.engine]
    if args.docker_host:
        cmd += ["--docker-host", args.docker_host]
    if args.unit_dir:
        cmd += ["--unit-dir", str(args.unit_dir)]
    unit_dir = args.unit_dir or DEFAULT_UNIT_DIR
    path = Path(unit_dir) / f"appliance-{site_id(site.root)}-watchdog.service"
    atomic_write(path, "\n".join([
        "[Unit]", f"Description=Offline appliance watchdog for {site.root}",
        "After=network.target docker.service podman.socket", "",
        "[Service]", "Type=simple", f"ExecStart={shlex.join(cmd)}", "Restart=always",
        "RestartSec=5", "NoNewPrivileges=yes", "",
        "[Install]", "WantedBy=multi-user.target", ""]).encode())
    return path
