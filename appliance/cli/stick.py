"""`appliance stick`: lay out a field engineer's stick and check one on site."""

from __future__ import annotations

import argparse
from pathlib import Path

from appliance.cli.keys import PASSPHRASE_ENV, load_private_key, load_trust_root
from appliance.cli.types import SubParsers

DEFAULT_EXECUTABLE = Path("out/appliance-installer")


def _write(args: argparse.Namespace) -> int:
    from bundler.stick import write_stick

    keys = [load_private_key(k, args.passphrase_file) for k in args.key]
    check = write_stick(Path(args.dir), bundle=Path(args.bundle), trust_root=Path(args.trust),
                        executable=Path(args.executable), keys=keys)
    print(f"stick written: {args.dir} ({len(check.files)} files, checksum list signed by "
          f"{', '.join(k[:16] for k in check.signed_by)})")
    for name in check.uncovered:
        print(f"note: {name} was already there and is not in the signed list")
    print(f"check on site: cd {args.dir} && sha256sum -c SHA256SUMS")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from bundler.stick import verify_stick

    check = verify_stick(Path(args.dir), load_trust_root(args.trust))
    print(f"stick OK: {len(check.files)} files match the list signed by "
          f"{', '.join(k[:16] for k in check.signed_by)}")
    for name in check.uncovered:
        print(f"note: {name} is not in the signed list (not checked; not from the vendor)")
    return 0


def register(sub: SubParsers) -> None:
    p = sub.add_parser("stick", help="lay out or check a stick (installer, bundle, root, sums)")
    ss = p.add_subparsers(dest="stick_command", metavar="ACTION", required=True)

    w = ss.add_parser("write", help="copy installer, bundle and root.json to DIR, sign the sums")
    w.add_argument("dir", help="the stick's directory (a mounted USB stick or a folder)")
    w.add_argument("--bundle", required=True, help="the bundle, or the first part NAME.001")
    w.add_argument("--trust", required=True, help="the trust root (root.json) to put on it")
    w.add_argument("--key", action="append", required=True,
                   help="vendor key of that root to sign the checksum list (repeat)")
    w.add_argument("--executable", default=str(DEFAULT_EXECUTABLE),
                   help=f"the installer executable (default {DEFAULT_EXECUTABLE}, "
                        "from `make installer`)")
    w.add_argument("--passphrase-file", help=f"key passphrase (or ${PASSPHRASE_ENV})")
    w.set_defaults(func=_write)

    v = ss.add_parser("verify", help="check a stick's signed checksum list and every file")
    v.add_argument("dir", help="the stick's directory")
    v.add_argument("--trust", required=True,
                   help="the vendor's root.json (its fingerprint compared with the letter)")
    v.set_defaults(func=_verify)
