"""The `appliance` command: one entry point, a module per subcommand group."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from appliance import __version__
from appliance.errors import ApplianceError
from signing import SigningError

# Exit codes scripts can rely on.
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

# Each module defines register(subparsers); handlers set `func(args) -> int`.
COMMAND_MODULES = (
    "appliance.cli.keys",
    "appliance.cli.bundle",
    "appliance.cli.site",
    "appliance.cli.serve",
    "appliance.cli.k8s",
    "appliance.cli.watchdog",
    "appliance.cli.uninstall",
    "appliance.cli.demo",
    "appliance.cli.frontdoor",
    "appliance.cli.support",
    "appliance.cli.stick",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="appliance", description="Signed offline ML appliance: build, verify, install, serve."
    )
    parser.add_argument("--version", action="version", version=f"appliance {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging to stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; errors a person reads are one line on stderr."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or EXIT_OK)
    except (ApplianceError, SigningError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("error: interrupted; nothing was switched, run the command again", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
