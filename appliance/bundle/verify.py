"""Verify a bundle and ingest its blobs, in the order docs/bundle-format.md gives.

1. Read members 1 and 2 (manifest, envelope), each under a size cap.
2. Check the signature against the trust root (threshold of distinct keys),
   and that the envelope signs exactly the manifest's bytes.
3. Only then parse the manifest; check expiry (`now` is a parameter) and that
   its sequence is newer than the site's.
4. For a delta, check the base's blobs are in the store before reading on.
5. One streaming pass over every other member, in the manifest's order:
   type, name, size and digest checked; blobs copied into the content store
   through a temp file that is renamed only when its digest matches.
6. The end-of-archive marker, and nothing after it.

The trust decisions (steps 2-4) are pure functions over bytes and the manifest;
the IO is the reader in `stream.py`.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from appliance.bundle.manifest import (
    ENVELOPE_PATH,
    MANIFEST_PATH,
    MAX_MANIFEST_BYTES,
    PAYLOAD_TYPE,
    Manifest,
    Member,
    format_time,
    image_blobs,
)
from appliance.bundle.store import ContentStore
from appliance.bundle.stream import PartStream, TarReader, find_bundle_parts
from appliance.bundle.tarfmt import BLOCK, check_name, member_span
from appliance.errors import (
    BundleFormatError,
    DeltaBaseError,
    DigestMismatchError,
    ExpiredBundleError,
    ManifestError,
    MemberError,
    RollbackError,
    SignatureError,
    SplitPartError,
)
from appliance.progress import Progress, ProgressFn, no_progress
from signing import Envelope, SigningError, TrustRoot, rotate_root
from signing import verify as verify_envelope
from signing.dsse import MAX_ENVELOPE_BYTES, verified_key_ids

log = logging.getLogger(__name__)
PROGRESS_EVERY = 16 * 1024 * 1024
# How long past its expiry `--allow-expired` accepts a bundle unless told a number of days:
# long enough for a site whose update was delayed, short enough that a years-old bundle
# with a known flaw cannot be replayed under the override.
DEFAULT_MAX_EXPIRED = timedelta(days=30)


@dataclass(frozen=True)
class VerifiedBundle:
    """A bundle whose signature, freshness and every member checked out."""

    manifest: Manifest
    manifest_bytes: bytes
    envelope_bytes: bytes
    manifest_digest: str
    signers: list[str]


def _parts(paths: Path | Sequence[Path]) -> list[Path]:
    if isinstance(paths, (str, Path)):
        return find_bundle_parts(Path(paths))
    return [Path(p) for p in paths]


def _read_front(reader: TarReader) -> tuple[bytes, bytes]:
    """Members 1 and 2, checked by name, type and size cap before their bytes are read."""
    front = []
    for path, cap, error in ((MANIFEST_PATH, MAX_MANIFEST_BYTES, ManifestError),
                             (ENVELOPE_PATH, MAX_ENVELOPE_BYTES, SignatureError)):
        at = reader.where()
        try:
            header = reader.next_header(path)
        except BundleFormatError as e:
            if reader.s.offset <= BLOCK and "checksum" in str(e):
                raise BundleFormatError(
                    "not a bundle: the file does not start with a tar header "
                    "(random or foreign data)") from e
            raise
        if header is None or header.name != path:
            found = "the end of the archive" if header is None else repr(header.name)
            if header is None or path == MANIFEST_PATH:
                raise SignatureError(f"bundle is unsigned or not a bundle: expected {path} at "
                                     f"{at}, found {found}")
            raise SignatureError(f"bundle is unsigned: expected {path} at {at}, found {found}")
        if header.size > cap:
            raise error(f"{path} is {header.size} bytes, over the {cap}-byte cap; "
                        "the bundle is malformed or hostile")
        front.append(reader.read_small(header.size, path))
    return front[0], front[1]


def check_signature(manifest_bytes: bytes, envelope_bytes: bytes,
                    root: TrustRoot) -> list[str]:
    """The key ids whose signatures over the manifest meet the root's threshold.

    Raises:
        SignatureError: malformed envelope, unsigned, untrusted key, below
            threshold, or the envelope signs other bytes than the manifest member.
    """
    try:
        env = Envelope.from_json(envelope_bytes)
        payload = verify_envelope(env, root, PAYLOAD_TYPE)
    except SigningError as e:
        raise SignatureError(f"bundle signature refused: {e}") from e
    if payload != manifest_bytes:
        raise SignatureError(f"the signed payload differs from {MANIFEST_PATH}: the manifest "
                             "was replaced after signing")
    return sorted(verified_key_ids(env, root))


def check_freshness(manifest: Manifest, *, now: datetime, last_sequence: int,
                    allow_expired: bool, max_expired: timedelta = DEFAULT_MAX_EXPIRED) -> None:
    """Refuse an expired manifest (unless overridden, up to `max_expired` past its expiry)
    or one not newer than the site's.

    Raises:
        ExpiredBundleError: expired and `allow_expired` is false, or expired longer ago
            than `max_expired`.
        RollbackError: sequence <= `last_sequence`.
    """
    if manifest.expires_at <= now:
        if not allow_expired:
            raise ExpiredBundleError(
                f"bundle {manifest.name} {manifest.version} expired at {manifest.expires} and "
                f"the site clock says {format_time(now)}; if the clock is wrong, set it, or "
                "accept it knowingly with --allow-expired (logged)")
        if now - manifest.expires_at > max_expired:
            raise ExpiredBundleError(expired_too_long(manifest, now, max_expired))
        log.warning("accepting expired bundle %s (expired %s, clock %s): override given",
                    manifest.name, manifest.expires, format_time(now))
    if manifest.sequence <= last_sequence:
        raise RollbackError(
            f"bundle {manifest.name} has sequence {manifest.sequence}, not newer than "
            f"{last_sequence} already accepted here; to go back use `appliance rollback`")


def expired_too_long(manifest: Manifest, now: datetime, max_expired: timedelta) -> str:
    """The one-line refusal of a bundle expired longer ago than the override allows."""
    days = (now - manifest.expires_at).days
    return (f"bundle {manifest.name} {manifest.version} expired {days} days ago "
            f"({manifest.expires}), more than the {max_expired.days} days --allow-expired "
            "accepts; if the clock is wrong, set it, else get a current bundle from the vendor "
            "(or pass --expired-max-days with a larger number; logged)")


def check_members(manifest: Manifest) -> None:
    """Every listed member has a safe name; blobs are named by their digest; no image
    needs a blob the bundle lacks unless it is a delta.

    Raises:
        ManifestError: a member name or blob reference is inconsistent.
    """
    carried = set()
    for m in manifest.members:
        try:
            check_name(m.path, "the manifest")
        except MemberError as e:
            raise ManifestError(f"manifest lists an unsafe member: {e}") from e
        if m.path in (MANIFEST_PATH, ENVELOPE_PATH):
            raise ManifestError(f"manifest lists {m.path} as a member")
        if m.path.startswith("blobs/"):
            if m.path != f"blobs/sha256/{m.sha256}":
                raise ManifestError(f"manifest member {m.path} is not named by its sha256")
            carried.add("sha256:" + m.sha256)
    if manifest.base is None:
        absent = [d for d in image_blobs(manifest.images) if d not in carried]
        if absent:
            raise ManifestError(f"manifest's images need blob {absent[0][:19]} which the "
                                "bundle does not carry, and it is not a delta")


def check_new_root(manifest: Manifest, root: TrustRoot) -> None:
    """A successor trust root riding in the bundle must be a valid rotation of `root`.

    The installer applies it (and records its version); verify refuses a bundle whose
    rotation would fail, before any blob is read.

    Raises:
        SignatureError: the new root is not version N+1 signed by both thresholds.
    """
    if manifest.trust_root is None:
        return
    try:
        rotate_root(root, manifest.trust_root.encode("utf-8"))
    except SigningError as e:
        raise SignatureError(f"bundle carries a trust root rotation that is refused: {e}") from e


def check_delta_base(manifest: Manifest, store: ContentStore) -> None:
    """For a delta, every blob its images need but it omits is already in the store.

    Raises:
        DeltaBaseError: naming the first absent blob and the base release.
    """
    if manifest.base is None:
        return
    carried = {"sha256:" + m.sha256 for m in manifest.members if m.path.startswith("blobs/")}
    absent = [d for d in image_blobs(manifest.images) if d not in carried and not store.has(d)]
    if absent:
        raise DeltaBaseError(
            f"delta bundle builds on release sequence {manifest.base.sequence} "
            f"({manifest.base.manifest_digest[:19]}), but {len(absent)} of its blobs "
            f"(first {absent[0][:19]}) are not in the store {store.root}; install the base "
            "release first, or use a full bundle")


def verify_bundle(
    paths: Path | Sequence[Path], root: TrustRoot, *, now: datetime, last_sequence: int = 0,
    store: ContentStore | None = None, allow_expired: bool = False,
    max_expired: timedelta = DEFAULT_MAX_EXPIRED,
    progress: ProgressFn = no_progress, progress_every: int = PROGRESS_EVERY,
) -> VerifiedBundle:
    """Check a bundle's signature, freshness and every member; copy blobs into `store`.

    `progress` hears bytes done of the whole file after each member and every
    `progress_every` bytes within one, and last once at the end, with done == total.

    Raises:
        BundleError: one of its subclasses, naming the member and the problem; the
            store then holds only blobs that matched their pinned digests.
    """
    stream = PartStream(_parts(paths))
    reader = TarReader(stream)
    try:
        manifest_bytes, envelope_bytes = _read_front(reader)
        signers = check_signature(manifest_bytes, envelope_bytes, root)
        manifest = Manifest.from_json(manifest_bytes)
        check_freshness(manifest, now=now, last_sequence=last_sequence,
                        allow_expired=allow_expired, max_expired=max_expired)
        check_members(manifest)
        check_new_root(manifest, root)
        if store is not None:
            check_delta_base(manifest, store)
        total = stream.offset + sum(member_span(m.size) for m in manifest.members) + 2 * BLOCK
        ticker = _Ticker(progress, total, progress_every)
        for member in manifest.members:
            _verify_member(reader, member, manifest, store, ticker)
            ticker(stream.offset, member.path, force=True)
        header = reader.next_header("the end-of-archive marker")
        if header is not None:
            raise MemberError(f"member {header.name!r} at {reader.where()} is not listed in "
                              "the signed manifest")
        reader.expect_end()
        ticker(stream.offset, "end of the bundle", force=True)
    finally:
        stream.close()
    return VerifiedBundle(manifest, manifest_bytes, envelope_bytes,
                          "sha256:" + hashlib.sha256(manifest_bytes).hexdigest(), signers)


class _Ticker:
    """Verify's progress events: when asked to (between members), and otherwise at most
    one per `every` bytes, so a multi-GB layer moves the bar while it is hashed."""

    def __init__(self, progress: ProgressFn, total: int, every: int) -> None:
        self.progress, self.total, self.every = progress, total, max(1, every)
        self.last = 0

    def __call__(self, done: int, message: str, *, force: bool = False) -> None:
        if force or done - self.last >= self.every:
            self.last = done
            self.progress(Progress("verify", done, self.total, message))

    def counting(self, sink: Callable[[memoryview], object], start: int,
                 what: str) -> Callable[[memoryview], None]:
        """`sink`, reporting the byte position (`start` + bytes passed) as data flows."""
        passed = 0

        def counted(view: memoryview) -> None:
            nonlocal passed
            sink(view)
            passed += len(view)
            self(start + passed, what)

        return counted


def _verify_member(reader: TarReader, member: Member, manifest: Manifest,
                   store: ContentStore | None, ticker: _Ticker) -> None:
    at = reader.s.offset
    header = reader.next_header(member.path)
    if header is None:
        raise MemberError(f"member {member.path} is missing: the archive ends at "
                          f"{reader.where(at)} before it")
    if header.name != member.path:
        listed = manifest.member(header.name)
        if header.name in (MANIFEST_PATH, ENVELOPE_PATH):
            problem = "appears twice"
        elif listed is None:
            problem = "is not listed in the signed manifest"
        elif manifest.members.index(listed) < manifest.members.index(member):
            problem = "appears twice"
        else:
            problem = f"is out of order: {member.path} is missing before it"
        raise MemberError(f"member {header.name!r} at {reader.where(at)} {problem}")
    if header.size != member.size:
        kind = "oversized" if header.size > member.size else "short"
        raise MemberError(f"member {member.path} is {kind}: {header.size} bytes, the signed "
                          f"manifest pins {member.size}")
    span = reader.s.parts_between(at, at + member_span(member.size)) if reader.s.split else ""
    digest = "sha256:" + member.sha256
    blob = member.path.startswith("blobs/")
    data_at = at + BLOCK
    if store is None or not blob or store.has(digest):
        h = hashlib.sha256()
        reader.stream(member.size, ticker.counting(h.update, data_at, member.path), member.path)
        _check(h.hexdigest(), member, span)
        return
    with store.ingest(digest, member.size, overlap=reader.read_ahead) as w:
        reader.stream(member.size, ticker.counting(w.write, data_at, member.path), member.path)
        _check(w.hasher.hexdigest(), member, span)


def _check(hexdigest: str, member: Member, parts: str) -> None:
    if hexdigest == member.sha256:
        return
    if parts:
        raise SplitPartError(f"member {member.path} in {parts} does not match its signed "
                             f"sha256: one of these parts is out of order, damaged, or from "
                             "another bundle; copy the parts again")
    raise DigestMismatchError(f"member {member.path} does not match its signed sha256 "
                              f"(got {hexdigest[:12]}, pinned {member.sha256[:12]}): the "
                              "bundle was altered or damaged; get a fresh copy")


def read_manifest_unverified(paths: Path | Sequence[Path]) -> tuple[Manifest, Envelope]:
    """The manifest and envelope of a bundle, parsed but NOT trusted (for `inspect`).

    Raises:
        BundleError: not a bundle, or its front members are malformed.
    """
    stream = PartStream(_parts(paths))
    try:
        manifest_bytes, envelope_bytes = _read_front(TarReader(stream))
    finally:
        stream.close()
    try:
        env = Envelope.from_json(envelope_bytes)
    except SigningError as e:
        raise SignatureError(f"bundle signature envelope is malformed: {e}") from e
    return Manifest.from_json(manifest_bytes), env



def read_manifest_signed(paths: Path | Sequence[Path], root: TrustRoot) -> Manifest:
    """The manifest of a bundle, parsed only after its signature checked out (preflight).

    Reads members 1 and 2 only; the blobs are checked later by `verify_bundle`.

    Raises:
        BundleError: not a bundle, the signature is refused, or the manifest is malformed.
    """
    stream = PartStream(_parts(paths))
    try:
        manifest_bytes, envelope_bytes = _read_front(TarReader(stream))
    finally:
        stream.close()
    check_signature(manifest_bytes, envelope_bytes, root)
    return Manifest.from_json(manifest_bytes)
