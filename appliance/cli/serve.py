"""`appliance serve` (run the runtime over a models directory) and `appliance logs export`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from appliance.cli.types import SubParsers


def register(sub: SubParsers) -> None:
    """Add this module's subcommands to the top-level parser."""
    from runtime.settings import add_arguments

    serve = sub.add_parser("serve", help="serve a directory of models over the V2 REST API")
    add_arguments(serve)
    serve.set_defaults(func=_serve)

    logs = sub.add_parser("logs", help="the runtime's logs and metrics history")
    logs_sub = logs.add_subparsers(dest="logs_command", metavar="ACTION", required=True)
    export = logs_sub.add_parser(
        "export", help="the site's support export (as `appliance support export`); with "
                       "--data-dir, only one runtime's logs and history")
    from appliance.cli.support import add_export_arguments
    add_export_arguments(export)
    export.add_argument("--data-dir", type=Path,
                        help="export only this runtime data directory (the runtime's own "
                             "archive, as `python -m runtime` writes it)")
    export.add_argument("--models", type=Path, help="with --data-dir: models directory to "
                                                    "describe")
    export.set_defaults(func=_export)


def _serve(args: argparse.Namespace) -> int:
    from runtime.errors import ServeError
    from runtime.settings import from_args

    try:
        from runtime.server import serve
    except ImportError as e:  # the self-contained installer carries no numpy/onnxruntime
        print(f"error: `appliance serve` needs the runtime's packages ({e.name} is missing): "
              "serve from the runtime image, or pip install 'offline-appliance[runtime]'",
              file=sys.stderr)
        return 1

    try:
        return serve(from_args(args))
    except ServeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def _export(args: argparse.Namespace) -> int:
    from runtime.errors import ServeError
    from runtime.export import write_export

    if args.data_dir is None:  # the whole site: the same as `appliance support export`
        from appliance.cli.support import cmd_export
        return cmd_export(args)
    data_dir = args.data_dir
    if not data_dir.is_dir():
        print(f"error: runtime data directory {data_dir} does not exist; pass --data-dir",
              file=sys.stderr)
        return 1
    try:
        path = write_export(data_dir, args.to, models_dir=args.models)
    except ServeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(path)
    return 0
