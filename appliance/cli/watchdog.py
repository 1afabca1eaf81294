"""`appliance watchdog`: restart serving services that stopped answering (hung runtimes)."""

from __future__ import annotations

import argparse
import signal
import threading
import time

from appliance.cli.site import _engine, _engine_args
from appliance.cli.types import SubParsers
from appliance.site import watchdog_units
from appliance.site.layout import Site
from appliance.site.watchdog import CHECK_EVERY_S, UNHEALTHY_S, Watchdog


def register(sub: SubParsers) -> None:
    """Add this module's subcommands to the top-level parser."""
    p = sub.add_parser("watchdog", help="restart serving services that answer nothing "
                                        f"for --unhealthy seconds (default {UNHEALTHY_S:.0f})")
    p.add_argument("--unhealthy", type=float, default=UNHEALTHY_S, metavar="SECONDS",
                   help="restart a service not ready this long")
    p.add_argument("--once", action="store_true",
                   help="probe once and exit (from a timer or cron: the unready time "
                        "carries over between runs in the site)")
    p.add_argument("--write-unit", action="store_true",
                   help="set up the watchdog as the install does: a systemd service and "
                        "timer (enabled) where systemd is PID 1, else print a cron line")
    p.add_argument("--remove", action="store_true",
                   help="disable and delete this site's watchdog units (removing a site)")
    _engine_args(p)
    p.set_defaults(func=cmd_watchdog)


def cmd_watchdog(args: argparse.Namespace) -> int:
    site = Site(args.root)
    if args.remove:
        for path in watchdog_units.remove(site.root):
            print(f"removed {path}")
        return 0
    if args.write_unit:
        kind = args.engine or _current_engine(site)
        setup = watchdog_units.set_up(
            site.root, kind, unit_dir=args.unit_dir, docker_host=args.docker_host,
            engine_unit_dir=args.unit_dir if kind == "process" else None,
            unhealthy_s=args.unhealthy)
        for unit in setup.units:
            print(f"wrote {unit}")
        print(setup.line)
        return 0
    if args.once:
        Watchdog(site, _engine(args, site), unhealthy_s=args.unhealthy,
                 clock=time.time).check_once()
        return 0
    dog = Watchdog(site, _engine(args, site), unhealthy_s=args.unhealthy)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_a: stop.set())
    dog.run(stop, CHECK_EVERY_S)
    return 0


def _current_engine(site: Site) -> str:
    """The engine the serving release runs on (docker where nothing is installed yet)."""
    cur = site.current() if site.root.exists() else None
    return cur.record.engine if cur is not None and cur.record.engine else "docker"
