"""`appliance bundle build|verify|inspect`: make, check and look inside signed bundles."""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from appliance.bundle import find_bundle_parts, read_manifest_unverified, verify_bundle
from appliance.bundle.manifest import Manifest, parse_time
from appliance.bundle.store import ContentStore
from appliance.cli.progress import ProgressPrinter
from appliance.cli.types import SubParsers
from appliance.errors import BundleWriteError, SpecError
from appliance.progress import ProgressFn, no_progress
from appliance.site.state import SiteState
from appliance.units import human, parse_size
from signing import fingerprint


def _progress(args: argparse.Namespace) -> tuple[ProgressFn, ProgressPrinter | None]:
    if getattr(args, "quiet", False) or not sys.stderr.isatty():
        return no_progress, None
    bar = ProgressPrinter(sys.stderr, bar=True)
    return bar, bar


def load_base(path: str) -> Manifest:
    """The manifest a delta builds on: from a previous bundle (or its first part) or a
    manifest JSON file.

    Raises:
        BundleError: neither a bundle nor a manifest.
    """
    p = Path(path)
    if p.suffix == ".json":
        try:
            return Manifest.from_json(p.read_bytes())
        except OSError as e:
            raise SpecError(f"cannot read base manifest {p}: {e.strerror}") from e
    manifest, _ = read_manifest_unverified(find_bundle_parts(p))
    return manifest


def _build(args: argparse.Namespace) -> int:
    from appliance.cli.keys import load_private_key
    from bundler.build import build_bundle
    from bundler.spec import load_spec

    split = parse_size(args.split) if args.split else None
    spec = load_spec(Path(args.file))
    base = load_base(args.base) if args.base else None
    keys = [load_private_key(k, args.passphrase_file) for k in args.key]
    progress, bar = _progress(args)
    started = time.monotonic()
    try:
        manifest = build_bundle(spec, Path(args.out), keys, base=base, split_bytes=split,
                                progress=progress)
    except OSError as e:
        raise BundleWriteError(f"cannot write bundle {args.out}: {e.strerror or e}; free disk "
                               "space or pick another place") from e
    finally:
        if bar:
            bar.close()
    parts = find_bundle_parts(Path(args.out) if split is None else Path(f"{args.out}.001"))
    size = sum(p.stat().st_size for p in parts)
    kind = f"delta on sequence {manifest.base.sequence}" if manifest.base else "full"
    print(f"bundle {manifest.name} {manifest.version} (sequence {manifest.sequence}, {kind}): "
          f"{human(size)} in {len(parts)} file(s), {time.monotonic() - started:.1f} s")
    for p in parts:
        print(f"  {p}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from appliance.cli.keys import load_trust_root

    root = load_trust_root(args.trust)
    now = parse_time(args.now, "--now") if args.now else datetime.now(UTC)
    last = args.last_sequence
    if args.site:
        last = max(last, SiteState.load(Path(args.site)).highest_sequence)
    store = ContentStore(Path(args.store)) if args.store else None
    progress, bar = _progress(args)
    started = time.monotonic()
    try:
        v = verify_bundle(find_bundle_parts(Path(args.bundle)), root, now=now,
                          last_sequence=last, store=store, allow_expired=args.allow_expired,
                          max_expired=timedelta(days=args.expired_max_days), progress=progress)
    finally:
        if bar:
            bar.close()
    m = v.manifest
    print(f"verified {m.name} {m.version} sequence {m.sequence}: {len(m.members)} members, "
          f"{human(m.total_size)}, {time.monotonic() - started:.1f} s")
    print(f"  manifest {v.manifest_digest}")
    for kid in v.signers:
        print(f"  signed by {fingerprint(kid)}")
    door = m.frontdoor_image()
    if door is not None:
        print(f"  front door {door.reference} {door.manifest_digest[:19]}")
    if store is not None:
        print(f"  blobs in {store.root}")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    manifest, env = read_manifest_unverified(find_bundle_parts(Path(args.bundle)))
    if args.json:
        doc = {"manifest": manifest.to_dict(), "claimed_signers": env.key_ids,
               "verified": False}
        print(json.dumps(doc, indent=2, sort_keys=True))
        return 0
    m = manifest
    print("UNVERIFIED: nothing below is trusted until `appliance bundle verify` passes")
    print(f"bundle   {m.name} {m.version}  sequence {m.sequence}  platform {m.platform}")
    print(f"created  {m.created}  expires {m.expires}")
    if m.base:
        print(f"delta    on sequence {m.base.sequence} ({m.base.manifest_digest[:19]})")
    print(f"size     {human(m.total_size)} in {len(m.members)} members")
    print("signers  " + (", ".join(fingerprint(k) for k in env.key_ids) or "(none: unsigned)"))
    door = m.frontdoor_image()
    print("frontdoor " + (f"the bundle carries the front door's proxy image {door.reference} "
                          f"({door.manifest_digest[:19]}, {len(door.layers)} layers)"
                          if door else "none (no proxy image in this bundle)"))
    print("models")
    for mod in m.models:
        print(f"  {mod.name:<16} v{mod.version:<6} {mod.framework:<13} "
              f"{human(mod.weights_size):>10}  {mod.weights_digest[:19]}  image {mod.image}")
    print("images")
    for img in m.images:
        print(f"  {img.reference:<40} {img.manifest_digest[:19]}  {len(img.layers)} layers  "
              f"{img.variant}")
    print("services")
    for s in m.services:
        print(f"  {s.name:<16} port {s.port:<5} gpu {s.gpu:<9} runtime "
              f"{m.image(s.image).variant:<10} models {', '.join(s.models)}")
    return 0


def register(sub: SubParsers) -> None:
    """Add `appliance bundle ...` to the top-level parser."""
    p = sub.add_parser("bundle", help="build, verify and inspect signed bundles")
    bs = p.add_subparsers(dest="bundle_command", metavar="ACTION", required=True)

    b = bs.add_parser("build", help="compose images and write a signed bundle")
    b.add_argument("-f", "--file", default="appliance.yaml", help="the spec (appliance.yaml)")
    b.add_argument("-o", "--out", required=True, help="bundle file to write")
    b.add_argument("--key", action="append", required=True, help="signing key PEM (repeat)")
    b.add_argument("--passphrase-file", help="passphrase of encrypted keys")
    b.add_argument("--base", help="previous bundle or manifest.json: write a delta on it")
    b.add_argument("--split", help="write numbered parts of this size, e.g. 3900MiB")
    b.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    b.set_defaults(func=_build)

    v = bs.add_parser("verify", help="check signature, freshness and every member")
    v.add_argument("bundle", help="the bundle, or the first of its parts (NAME.001)")
    v.add_argument("--trust", required=True, help="trust root (root.json)")
    v.add_argument("--store", help="copy verified blobs into this content store")
    v.add_argument("--site", help="site directory whose state.json holds the last sequence")
    v.add_argument("--last-sequence", type=int, default=0, help="refuse sequences <= this")
    v.add_argument("--allow-expired", action="store_true",
                   help="accept a bundle past its expiry (the site clock may be wrong); logged")
    v.add_argument("--expired-max-days", type=int, default=30, metavar="DAYS",
                   help="with --allow-expired: refuse a bundle expired longer ago than this "
                        "(default 30)")
    v.add_argument("--now", help="check expiry against this RFC 3339 time instead of the clock")
    v.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    v.set_defaults(func=_verify)

    i = bs.add_parser("inspect", help="show what a bundle claims to hold (not verified)")
    i.add_argument("bundle")
    i.add_argument("--json", action="store_true", help="the manifest as JSON")
    i.set_defaults(func=_inspect)

