"""`appliance keys`: generate signing keys, build trust roots, show fingerprints."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from appliance.cli.types import SubParsers
from appliance.errors import TrustError
from appliance.fsutil import atomic_write
from signing import PrivateKey, PublicKey, TrustRoot, rotate_root, sign_root
from signing.errors import KeyFormatError

PASSPHRASE_ENV = "APPLIANCE_KEY_PASSPHRASE"  # noqa: S105 - a variable name, not a secret


def read_passphrase(passphrase_file: str | None) -> bytes | None:
    """The key passphrase from a file or $APPLIANCE_KEY_PASSPHRASE (never from a flag)."""
    if passphrase_file:
        return Path(passphrase_file).read_bytes().rstrip(b"\r\n")
    env = os.environ.get(PASSPHRASE_ENV)
    return env.encode() if env else None


def load_private_key(path: str, passphrase_file: str | None = None) -> PrivateKey:
    """Load a signing key file.

    Raises:
        TrustError: unreadable file.
        KeyFormatError / PassphraseError: not a key or the passphrase is wrong.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise TrustError(f"cannot read signing key {path}: {e.strerror}") from e
    return PrivateKey.from_pem(data, read_passphrase(passphrase_file))


def load_public_key(path: str) -> PublicKey:
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise TrustError(f"cannot read public key {path}: {e.strerror}") from e
    return PublicKey.from_pem(data)


def load_trust_root(path: str) -> TrustRoot:
    """Load a trust root file (plain or self-signed).

    Raises:
        TrustError: missing or unreadable; TrustRootFormatError when malformed.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise TrustError(
            f"cannot read trust root {path}: {e.strerror}; get root.json from the vendor"
        ) from e
    return TrustRoot.from_json(data)


def _generate(args: argparse.Namespace) -> int:
    out = Path(args.out)
    key_path, pub_path = out.with_suffix(".key"), out.with_suffix(".pub")
    for p in (key_path, pub_path):
        if p.exists() and not args.force:
            raise TrustError(f"{p} exists; pick another name or pass --force to overwrite it")
    key = PrivateKey.generate()
    atomic_write(key_path, key.to_pem(read_passphrase(args.passphrase_file)), mode=0o600)
    atomic_write(pub_path, key.public_key.to_pem())
    print(f"private key: {key_path}")
    print(f"public key:  {pub_path}")
    print(f"key id:      {key.key_id}")
    print(f"fingerprint: {key.public_key.fingerprint}")
    return 0


def _root(args: argparse.Namespace) -> int:
    pubs = [load_public_key(p) for p in args.pub]
    names = args.name or []
    if len(names) > len(pubs):
        print("error: more --name than --pub; give one name per key, in the same order",
              file=sys.stderr)
        return 2
    root = TrustRoot.create(pubs, threshold=args.threshold, version=args.root_version,
                            names={p.key_id: n for p, n in zip(pubs, names, strict=False)})
    if args.sign_with:
        keys = [load_private_key(k, args.passphrase_file) for k in args.sign_with]
        data = sign_root(root, keys)
        if args.previous:
            rotate_root(load_trust_root(args.previous), data)  # check before writing
    else:
        data = root.to_json()
    atomic_write(Path(args.out), data)
    print(f"trust root v{root.version}, threshold {root.threshold} of {len(root.keys)}: {args.out}")
    for kid in sorted(root.keys):
        name = root.names.get(kid, "")
        print(f"  {root.keys[kid].fingerprint}" + (f"  {name}" if name else ""))
    return 0


def _fingerprint(args: argparse.Namespace) -> int:
    data = Path(args.file).read_bytes()
    try:
        keys = [PublicKey.from_pem(data)]
    except KeyFormatError:
        root = TrustRoot.from_json(data)
        keys = list(root.keys.values())
        print(f"trust root v{root.version}, threshold {root.threshold} of {len(keys)}")
    for k in keys:
        print(f"{k.fingerprint}  {k.key_id}")
    return 0


def register(sub: SubParsers) -> None:
    p = sub.add_parser("keys", help="signing keys and trust roots")
    ks = p.add_subparsers(dest="keys_command", metavar="ACTION", required=True)

    g = ks.add_parser("generate", help="a new Ed25519 key pair (NAME.key, NAME.pub)")
    g.add_argument("--out", required=True, help="path without suffix, e.g. keys/vendor")
    g.add_argument("--passphrase-file", help=f"encrypt with this passphrase (or ${PASSPHRASE_ENV})")
    g.add_argument("--force", action="store_true", help="overwrite existing files")
    g.set_defaults(func=_generate)

    r = ks.add_parser("root", help="a trust root from public keys and a threshold")
    r.add_argument("--pub", action="append", required=True, help="public key PEM (repeat)")
    r.add_argument("--name", action="append",
                   help="the signer's name shown beside its key (repeat, one per --pub, "
                        "in order), e.g. 'Acme Imaging release key'")
    r.add_argument("--threshold", type=int, default=1)
    r.add_argument("--root-version", type=int, default=1)
    r.add_argument("--sign-with", action="append", help="private key to sign the root (repeat)")
    r.add_argument("--previous", help="the root this one rotates from (checked before writing)")
    r.add_argument("--passphrase-file")
    r.add_argument("-o", "--out", required=True)
    r.set_defaults(func=_root)

    f = ks.add_parser("fingerprint", help="fingerprints of a public key or trust root")
    f.add_argument("file")
    f.set_defaults(func=_fingerprint)


