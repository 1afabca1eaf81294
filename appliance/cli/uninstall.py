"""`appliance uninstall`: remove a whole site, everything it runs and keeps."""

from __future__ import annotations

import argparse
import sys

from appliance.cli.site import _engine, _engine_args
from appliance.cli.types import SubParsers
from appliance.site import removal
from appliance.site.layout import Site


def register(sub: SubParsers) -> None:
    """Add this module's subcommands to the top-level parser."""
    p = sub.add_parser("uninstall", help="stop and remove a site: every release, its front "
                       "door, watchdog, units, data volumes, images and the site root")
    p.add_argument("--yes", action="store_true", help="remove without asking")
    _engine_args(p)
    p.set_defaults(func=cmd_uninstall)


def cmd_uninstall(args: argparse.Namespace) -> int:
    site = Site(args.root)
    if removal.finish_interrupted(site.root, print) and not site.root.exists():
        return 0
    removal.check_site(site.root)
    if not args.yes:
        question = removal.summary(site).line(site.root)
        try:
            answer = input(f"{question}. This cannot be undone. Remove? [y/N] ")
        except EOFError:
            answer = ""
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing was removed (answer y, or pass --yes)", file=sys.stderr)
            return 1
    removal.remove_site(site, _engine(args, site), print)
    return 0
