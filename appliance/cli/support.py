"""`appliance support export|verify|report` and `appliance audit`.

`appliance logs export` (in `appliance.cli.serve`) is the same export under its old name.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

from appliance.cli.types import SubParsers
from appliance.errors import ApplianceError
from appliance.site.layout import DEFAULT_ROOT

UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2, "mb": 1000**2,
         "mib": 1024**2, "g": 1000**3, "gb": 1000**3, "gib": 1024**3}
SPANS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_size(text: str) -> int:
    """`1GiB`, `500MB`, `4096` -> bytes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in UNITS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size; use e.g. 900MiB or 4GB")
    return int(float(m.group(1)) * UNITS[m.group(2).lower()])


def parse_span(text: str) -> float:
    """`7d`, `12h`, `30m`, `90s` -> seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a time span; use e.g. 7d or 12h")
    return float(m.group(1)) * SPANS[m.group(2) or "s"]


def _default_root() -> Path:
    return Path(os.environ.get("APPLIANCE_ROOT", str(DEFAULT_ROOT)))


def add_export_arguments(p: argparse.ArgumentParser) -> None:
    """The export's options (shared with `appliance logs export`)."""
    p.add_argument("--to", type=Path, required=True, help="directory to write into (the stick)")
    p.add_argument("--root", type=Path, default=_default_root(), help="site root directory")
    p.add_argument("--since", type=parse_span, default=7 * 86400.0, metavar="SPAN",
                   help="logs and history this far back (default 7d)")
    p.add_argument("--max-size", type=parse_size, default=None, metavar="SIZE",
                   help="largest archive; the oldest logs are left out to fit (default 1GiB)")
    p.add_argument("--engine", choices=("docker", "process", "none"), default=None,
                   help="the engine to ask for its version and (docker) the running "
                        "containers' output; default: the current release's; none: ask none")
    p.add_argument("--docker-host", help="engine socket URL")
    p.add_argument("--unit-dir", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--gpu-state", type=Path, help="a recorded GPU state instead of NVML")


def register(sub: SubParsers) -> None:
    """Add this module's subcommands to the top-level parser."""
    sup = sub.add_parser("support", help="support export for the vendor, and its report")
    ssub = sup.add_subparsers(dest="support_command", metavar="ACTION", required=True)
    p = ssub.add_parser("export", help="one bounded, redacted, signed archive of the site")
    add_export_arguments(p)
    p.set_defaults(func=cmd_export)

    p = ssub.add_parser("verify", help="check that an export is whole and untouched")
    p.add_argument("export", type=Path)
    p.add_argument("--key-id", help="the site key id this export must be signed with")
    p.set_defaults(func=cmd_verify)

    p = ssub.add_parser("report", help="one offline HTML report over one or many exports")
    p.add_argument("exports", type=Path, nargs="+", metavar="EXPORT")
    p.add_argument("-o", "--output", type=Path, required=True, help="the HTML file to write")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("audit", help="the site's audit trail, its hash chain checked")
    p.add_argument("--root", type=Path, default=_default_root(), help="site root directory")
    p.add_argument("--json", action="store_true", help="one JSON object per entry")
    p.set_defaults(func=cmd_audit)


def cmd_export(args: argparse.Namespace) -> int:
    """Write the support export and say where, how big, and what was trimmed."""
    from appliance.site.gpu import GpuProbe, RecordedProbe
    from appliance.site.layout import Site
    from appliance.support.export import DEFAULT_MAX_BYTES, write_support_export
    site = Site(args.root)
    engine = None
    if args.engine != "none" and site.root.is_dir():
        from appliance.engines import make_engine
        try:
            engine = make_engine(args.engine, site, docker_host=args.docker_host,
                                 unit_dir=args.unit_dir)
        except ApplianceError as e:  # the export matters more than the engine's answer
            print(f"warning: not asking the engine: {e}", file=sys.stderr)
    probe: GpuProbe | None = RecordedProbe.from_file(args.gpu_state) if args.gpu_state else None
    r = write_support_export(site, args.to, since_s=args.since,
                             max_bytes=args.max_size or DEFAULT_MAX_BYTES, engine=engine,
                             gpu_probe=probe)
    print(r.path)
    print(f"    {r.size / 1024**2:.1f} MiB, {r.members} files, {r.redactions} redaction(s) "
          "(see redaction.json inside)")
    if r.trimmed:
        oldest = r.trimmed[-1]["modified"][:19]
        print(f"    left out {len(r.trimmed)} oldest log/history file(s) to fit --max-size "
              f"(up to {oldest}); listed in export.json")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    """Check one export; print its site key id."""
    from appliance.support.verify import verify_export
    v = verify_export(args.export, args.key_id)
    print(f"{args.export}: whole and untouched, {len(v.files)} files, signed by site key "
          f"{v.key_id}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Write the HTML report."""
    from appliance.support.report import write_report
    path = write_report(args.exports, args.output)
    print(path)
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    """Print the trail after checking its chain; a broken chain is an error."""
    from appliance.site.audit import verify
    entries = verify(args.root)
    for e in entries:
        if args.json:
            print(json.dumps({"n": e.n, "time": e.time, "user": e.user, "event": e.event,
                              **e.fields}, sort_keys=True))
        else:
            detail = " ".join(f"{k}={v}" for k, v in sorted(e.fields.items())
                              if v not in (None, "", [], False))
            print(f"{e.n:>5}  {e.time[:19]}  {e.user:<12} {e.event:<15} {detail}")
    if not args.json:
        print(f"{len(entries)} entries, hash chain intact", file=sys.stderr)
    return 0
