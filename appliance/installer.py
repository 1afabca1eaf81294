"""`appliance-installer`: the installer TUI with no command, the `appliance` CLI with one.

The self-contained executable on a stick is this entry point, so one file
serves both the engineer who types nothing (the TUI finds the bundle beside
the executable) and a headless `appliance-installer install ...`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from appliance.engines.supervise import CONFINE_ARG, SUPERVISE_ARG, host_library_path
from installer_tui.media import executable_dir, find_bundles

TUI_COMMAND = "tui"
_CLI_FLAGS = ("-h", "--help", "--version", "-v", "--verbose")
HELP_HEAD = (
    "appliance-installer: with no arguments, the installer TUI (it finds a bundle beside "
    "this executable or on mounted media);\n"
    "`appliance-installer tui --help` for the TUI's options; with a COMMAND below it is "
    "the `appliance` command line.\n"
)


def cli_commands() -> set[str]:
    """The `appliance` CLI's subcommand names."""
    from appliance.cli import build_parser

    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            return set(action.choices)
    return set()


def stick_bundle() -> Path | None:
    """The one bundle beside the executable (a stick), or None when there is none or several."""
    here = executable_dir()
    if here is None:
        return None
    found = find_bundles([here], max_depth=1)
    return found[0].path if len(found) == 1 else None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the TUI (no arguments, or `tui ...`) or the `appliance` CLI (a command)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if getattr(sys, "frozen", False):
        host_library_path(os.environ)  # every host program we start loads its own libraries
    if args[:1] == [SUPERVISE_ARG]:  # the process engine's supervisor: a frozen program has no -m
        from appliance.engines.supervise import main as supervise_main
        return supervise_main(args[1:])
    if args[:1] == [CONFINE_ARG]:  # one confined command (the front door's config check)
        from appliance.engines.confine import main as confine_main
        return confine_main(args[1:])
    if args and (args[0] in _CLI_FLAGS or args[0] in cli_commands()):
        from appliance.cli import main as cli_main

        if args[0] in ("-h", "--help"):
            print(HELP_HEAD)
        return cli_main(args)
    from installer_tui.app import main as tui_main
    from installer_tui.app import opens_nothing

    if args[:1] == [TUI_COMMAND]:
        args = args[1:]
    if opens_nothing(args):  # no bundle named (`tui --engine process` too): the stick's
        bundle = stick_bundle()
        if bundle is not None:
            args = [*args, str(bundle)]
    return tui_main(args)


if __name__ == "__main__":
    sys.exit(main())
