"""`appliance token rotate` and `appliance tls replace`: the front door's secrets, changed
while it serves (no request fails, no connection closes)."""

from __future__ import annotations

import argparse
import os
from datetime import UTC, datetime
from pathlib import Path

from appliance.cli.types import SubParsers
from appliance.site.canarywatch import guard_canary
from appliance.site.doorops import replace_certificate, rotate_token
from appliance.site.layout import DEFAULT_ROOT, Site


def register(sub: SubParsers) -> None:
    """Add `token rotate` and `tls replace` to the top-level parser."""
    root = Path(os.environ.get("APPLIANCE_ROOT", str(DEFAULT_ROOT)))
    p = sub.add_parser("token", help="the front door's token")
    tsub = p.add_subparsers(dest="token_command", metavar="ACTION", required=True)
    r = tsub.add_parser("rotate", help="accept a new token beside the old one (then --finish)")
    r.add_argument("--finish", action="store_true",
                   help="stop accepting the old token, once every client has the new one")
    r.add_argument("--root", type=Path, default=root, help="site root directory")
    r.set_defaults(func=cmd_token_rotate)

    # started by the installer during a canary (appliance.site.door.start_guard)
    p = sub.add_parser("frontdoor-guard")
    p.add_argument("--root", type=Path, required=True)
    p.add_argument("--pid", type=int, required=True)
    p.set_defaults(func=cmd_guard)

    p = sub.add_parser("tls", help="the front door's certificate")
    tsub = p.add_subparsers(dest="tls_command", metavar="ACTION", required=True)
    r = tsub.add_parser("replace", help="serve the hospital's certificate from now on")
    r.add_argument("--cert", type=Path, required=True, help="certificate with its chain (PEM)")
    r.add_argument("--key", type=Path, required=True, help="its private key (PEM)")
    r.add_argument("--root", type=Path, default=root, help="site root directory")
    r.set_defaults(func=cmd_tls_replace)


def cmd_token_rotate(args: argparse.Namespace) -> int:
    site = Site(args.root)
    token = rotate_token(site, finish=args.finish)
    if args.finish:
        print("the old token is no longer accepted; the front door takes only the one in "
              f"{site.root / 'token'}")
    else:
        print(f"new token (also in {site.root / 'token'}, 0600); the old one keeps working "
              f"until `appliance token rotate --finish`:\n    {token}")
    return 0


def cmd_guard(args: argparse.Namespace) -> int:
    guard_canary(Site(args.root), args.pid)
    return 0


def cmd_tls_replace(args: argparse.Namespace) -> int:
    fp = replace_certificate(Site(args.root), args.cert, args.key, datetime.now(UTC))
    print(f"the front door now serves the certificate with SHA-256 {fp}")
    return 0
