"""The stick a field engineer carries: installer executable, bundle, root.json, README, sums.

Layout (all plain files in one directory, so `sha256sum -c SHA256SUMS` run in
it checks everything with coreutils alone):

    appliance-installer     the self-contained installer (no Python on the host)
    <bundle>.tar | .NNN     the signed bundle, whole or in parts
    root.json               the vendor's trust root (first install)
    README.txt              what to compare and the one command to run
    SHA256SUMS              `sha256sum -c` format over every file above
    SHA256SUMS.dsse.json    a DSSE envelope over SHA256SUMS's bytes, vendor keys

Every file is written through a temp name and renamed, the checksum list and
its envelope last: a stick pulled out while it is written has no list that
looks whole.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from appliance.bundle import find_bundle_parts
from appliance.errors import StickError
from appliance.fsutil import atomic_write, fsync_dir
from signing import Envelope, PrivateKey, SigningError, TrustRoot, sign, verify

EXECUTABLE_NAME = "appliance-installer"
ROOT_NAME = "root.json"
README_NAME = "README.txt"
SUMS_NAME = "SHA256SUMS"
SUMS_ENVELOPE_NAME = "SHA256SUMS.dsse.json"
SUMS_PAYLOAD_TYPE = "application/vnd.appliance.sha256sums.v1+text"
MAX_SUMS_BYTES = 1 << 20
_CHUNK = 4 << 20
# A name on the stick is one plain path component: no directories, no `..`, no
# whitespace that would change what `sha256sum -c` reads.
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
_SUM_LINE_RE = re.compile(r"^(?P<hex>[0-9a-f]{64}) [ *](?P<name>.+)$")


@dataclass(frozen=True)
class StickCheck:
    """What `verify_stick` found: the files the signed list covers, and any it does not."""

    files: dict[str, str]  # name -> sha256 hex
    signed_by: list[str]  # key ids of the envelope
    uncovered: list[str]  # plain files on the stick that the list does not name


def sums_text(digests: dict[str, str]) -> bytes:
    """The `sha256sum` text for `digests` (name -> hex), sorted by name.

    Raises:
        StickError: a name is not a plain file name.
    """
    for name in digests:
        _check_name(name)
    return "".join(f"{digests[n]}  {n}\n" for n in sorted(digests)).encode()


def parse_sums(data: bytes) -> dict[str, str]:
    """The names and digests in a `sha256sum` list (the signed payload, so already trusted).

    Raises:
        StickError: a line is not `HEX  NAME`, a name repeats or is not a plain file name.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise StickError(f"{SUMS_NAME} is not UTF-8 text: the stick is damaged") from e
    out: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        m = _SUM_LINE_RE.match(line)
        if m is None:
            raise StickError(f"{SUMS_NAME} line {n} is not 'SHA256  NAME': the stick is damaged")
        name = m.group("name")
        _check_name(name)
        if name in out:
            raise StickError(f"{SUMS_NAME} names {name} twice: the stick is damaged")
        out[name] = m.group("hex")
    if not out:
        raise StickError(f"{SUMS_NAME} lists no file: the stick is damaged")
    return out


def readme_text(root: TrustRoot, bundle_names: Sequence[str]) -> str:
    """The stick's README: the root's fingerprints, the two checks and the one command."""
    keys = "\n".join(f"    {k.fingerprint}" for _, k in sorted(root.keys.items()))
    first = bundle_names[0]
    return (
        "Offline appliance installer stick\n"
        "=================================\n\n"
        f"Bundle: {', '.join(bundle_names)}\n"
        f"Trust root: {ROOT_NAME}, version {root.version}, threshold {root.threshold} "
        f"of {len(root.keys)}; key fingerprints:\n{keys}\n\n"
        "1. Compare the fingerprints above, and those the installer shows, with the\n"
        "   vendor's letter. Stop if any differs.\n"
        "2. Check every file on this stick (coreutils only), in this directory:\n\n"
        f"    sha256sum -c {SUMS_NAME}\n\n"
        "   Every line must say OK.\n"
        "3. Install (as root; finds the bundle beside itself, the engine on the host):\n\n"
        f"    ./{EXECUTABLE_NAME}\n\n"
        f"   Headless: ./{EXECUTABLE_NAME} install {first} --trust {ROOT_NAME} --yes\n"
        f"   Signed list: ./{EXECUTABLE_NAME} stick verify . --trust {ROOT_NAME}\n"
    )


def write_stick(
    dest: Path,
    *,
    bundle: Path,
    trust_root: Path,
    executable: Path,
    keys: Sequence[PrivateKey],
) -> StickCheck:
    """Lay out a stick in `dest` and sign its checksum list with `keys`.

    Raises:
        StickError: an input is missing or unreadable, the keys do not meet the root's
            threshold, or `dest` cannot be written.
        BundleFormatError / SplitPartError: `bundle` names no bundle or a part is missing.
        TrustRootFormatError: `trust_root` is not a trust root.
    """
    root_bytes = _read_input(trust_root, "trust root", "get root.json from the vendor")
    root = TrustRoot.from_json(root_bytes)
    _check_keys_meet_root(keys, root)
    if not executable.is_file():
        raise StickError(
            f"no installer executable at {executable}: run `make installer` or pass --executable"
        )
    parts = find_bundle_parts(bundle)
    reserved = {EXECUTABLE_NAME, ROOT_NAME, README_NAME, SUMS_NAME, SUMS_ENVELOPE_NAME}
    for p in parts:
        _check_name(p.name)
        if p.name in reserved:
            raise StickError(f"bundle file {p.name} clashes with a stick file: rename the bundle")
    try:
        dest.mkdir(parents=True, exist_ok=True)
        digests = {EXECUTABLE_NAME: _copy(executable, dest / EXECUTABLE_NAME, 0o755)}
        for p in parts:
            digests[p.name] = _copy(p, dest / p.name, 0o644)
        atomic_write(dest / ROOT_NAME, root_bytes)
        digests[ROOT_NAME] = hashlib.sha256(root_bytes).hexdigest()
        readme = readme_text(root, [p.name for p in parts]).encode()
        atomic_write(dest / README_NAME, readme)
        digests[README_NAME] = hashlib.sha256(readme).hexdigest()
        sums = sums_text(digests)
        envelope = sign(sums, SUMS_PAYLOAD_TYPE, keys)
        atomic_write(dest / SUMS_NAME, sums)
        atomic_write(dest / SUMS_ENVELOPE_NAME, envelope.to_json())
    except OSError as e:
        raise StickError(f"cannot write the stick at {dest}: {e.strerror or e}; "
                         "check the medium is mounted writable and has room") from e
    return StickCheck(digests, envelope.key_ids, _uncovered(dest, digests))


def verify_stick(stick: Path, root: TrustRoot) -> StickCheck:
    """Check the stick's signed checksum list against `root`, then every file it names.

    Raises:
        StickError: the list or its envelope is missing, the signature does not meet the
            root, or a file is missing or does not hash to its listed digest (named).
    """
    sums = _read_input(stick / SUMS_NAME, "checksum list", "copy the stick again from the "
                       "vendor's original", limit=MAX_SUMS_BYTES)
    env_bytes = _read_input(stick / SUMS_ENVELOPE_NAME, "checksum signature",
                            "copy the stick again from the vendor's original")
    try:
        envelope = Envelope.from_json(env_bytes)
        payload = verify(envelope, root, SUMS_PAYLOAD_TYPE)
    except SigningError as e:
        raise StickError(f"{SUMS_ENVELOPE_NAME} on {stick}: {e}; do not use this stick") from e
    if payload != sums:
        raise StickError(f"{SUMS_NAME} on {stick} differs from the signed copy in "
                         f"{SUMS_ENVELOPE_NAME}: do not use this stick")
    files = parse_sums(payload)
    for name, want in files.items():
        path = stick / name
        if not path.is_file() or path.is_symlink():
            raise StickError(f"{name} is missing from {stick} (listed in {SUMS_NAME}): "
                             "copy the stick again from the vendor's original")
        got = _hash_file(path)
        if got != want:
            raise StickError(f"{name} on {stick} does not match {SUMS_NAME} (sha256 {got[:16]}, "
                             f"signed {want[:16]}): do not run or install from this stick")
    return StickCheck(files, envelope.key_ids, _uncovered(stick, files))


def _check_keys_meet_root(keys: Sequence[PrivateKey], root: TrustRoot) -> None:
    if not keys:
        raise StickError("no signing key given: pass --key with a key of root.json")
    known = {k.key_id for k in keys if k.key_id in root.keys}
    stranger = [k.key_id[:16] for k in keys if k.key_id not in root.keys]
    if stranger:
        raise StickError(f"key {stranger[0]} is not in the trust root: sign with its keys")
    if len(known) < root.threshold:
        raise StickError(f"the trust root needs {root.threshold} distinct keys, {len(known)} "
                         "given: pass --key once for each")


def _check_name(name: str) -> None:
    if not _NAME_RE.match(name) or name in (".", ".."):
        raise StickError(f"{name!r} is not a plain file name; a stick holds plain files "
                         "in one directory")


def _read_input(path: Path, what: str, todo: str, limit: int | None = None) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read() if limit is None else f.read(limit + 1)
    except OSError as e:
        raise StickError(f"cannot read {what} {path}: {e.strerror}; {todo}") from e
    if limit is not None and len(data) > limit:
        raise StickError(f"{what} {path} is over {limit} bytes: {todo}")
    return data


def _copy(src: Path, dst: Path, mode: int) -> str:
    """Copy `src` to `dst` through a temp name, hashing as it goes; returns the sha256 hex."""
    if src.resolve() == dst.resolve():
        return _hash_file(src)  # already on the stick (re-signing in place)
    tmp = dst.with_name(f".{dst.name}.part")
    h = hashlib.sha256()
    try:
        with open(src, "rb") as fin, open(tmp, "wb") as fout:
            while chunk := fin.read(_CHUNK):
                h.update(chunk)
                fout.write(chunk)
            fout.flush()
            os.fsync(fout.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(dst.parent)
    return h.hexdigest()


def _hash_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _uncovered(stick: Path, covered: Iterable[str]) -> list[str]:
    known = set(covered) | {SUMS_NAME, SUMS_ENVELOPE_NAME}
    return sorted(p.name for p in stick.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.name not in known)


__all__ = [
    "EXECUTABLE_NAME",
    "README_NAME",
    "ROOT_NAME",
    "SUMS_ENVELOPE_NAME",
    "SUMS_NAME",
    "StickCheck",
    "parse_sums",
    "readme_text",
    "sums_text",
    "verify_stick",
    "write_stick",
]
