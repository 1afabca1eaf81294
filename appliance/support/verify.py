"""The vendor side: read a support export member by member and prove it whole and untouched.

Never `extractall`: every member must be a regular file under the export's one top
directory, bounded in size, listed in the signed `SHA256SUMS` and hash to it; the list's
DSSE signature must verify with the site key inside. A vendor who kept the key id of a
site's earlier export passes it as `expect_key_id`, so a re-signed forgery is caught too.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.errors import ExportIntegrityError
from appliance.support.export import PUBKEY, SUMS, SUMS_ENVELOPE, SUMS_PAYLOAD_TYPE
from signing import Envelope, PublicKey, SigningError, TrustRoot
from signing import verify as dsse_verify

MAX_MEMBER_BYTES = 512 * 1024**2
MAX_MEMBERS = 100_000
MAX_TOTAL_BYTES = 4 * 1024**3  # far above the default --max-size of 1 GiB


@dataclass(frozen=True)
class VerifiedExport:
    """An export whose every member is listed, hashes right, and whose list is signed."""

    path: Path
    top: str
    key_id: str
    files: dict[str, bytes]  # name inside the export -> bytes (.gz members decompressed)

    def json(self, name: str, default: Any = None) -> Any:
        """A JSON member, or `default` when it is absent or unreadable."""
        data = self.files.get(name)
        if data is None:
            return default
        try:
            return json.loads(data)
        except ValueError:
            return default

    def jsonl(self, prefix: str) -> list[dict[str, Any]]:
        """Every JSON line of the members under `prefix`, in member order."""
        out: list[dict[str, Any]] = []
        for name in sorted(self.files):
            if not name.startswith(prefix):
                continue
            for line in self.files[name].splitlines():
                if line.startswith(b"{"):
                    try:
                        doc = _loads(line)
                    except ValueError:
                        continue
                    if isinstance(doc, dict):
                        doc.setdefault("_file", name)
                        out.append(doc)
        return out


def _gunzip(path: Path, name: str, data: bytes) -> bytes:
    """A gzip member's bytes, refusing one that inflates past the member cap (a bomb).

    Raises:
        ExportIntegrityError: not gzip, cut short, or too large once inflated.
    """
    d = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        out = d.decompress(data, MAX_MEMBER_BYTES + 1)
    except zlib.error as e:
        raise _bad(path, f"member {name} does not decompress ({e})") from e
    if len(out) > MAX_MEMBER_BYTES or d.unconsumed_tail:
        raise _bad(path, f"member {name} inflates past {MAX_MEMBER_BYTES} bytes")
    if not d.eof:
        raise _bad(path, f"member {name} is a cut gzip stream")
    return out


def _loads(data: bytes) -> Any:
    """JSON from bytes; orjson (the runtime's own dependency) when present: a week of
    history is 10^5 lines."""
    try:
        import orjson
    except ImportError:
        return json.loads(data)
    return orjson.loads(data)


def _bad(path: Path, why: str) -> ExportIntegrityError:
    return ExportIntegrityError(f"{path.name} is not a whole, untouched support export: {why}; "
                                "ask the site for a new export")


def verify_export(path: Path, expect_key_id: str | None = None) -> VerifiedExport:
    """Read and check one export archive.

    Raises:
        ExportIntegrityError: cut short, edited, unsigned, signed by another key, or
            holding a member that is not a plain listed file.
    """
    raw: dict[str, bytes] = {}
    top = ""
    total = 0
    try:
        with tarfile.open(path, mode="r:") as tar:
            for i, m in enumerate(tar):
                if i >= MAX_MEMBERS:
                    raise _bad(path, f"over {MAX_MEMBERS} members")
                if not m.isreg():
                    raise _bad(path, f"member {m.name!r} is not a regular file")
                head, _, name = m.name.partition("/")
                top = top or head
                if head != top or not name or ".." in name.split("/") or name.startswith("/"):
                    raise _bad(path, f"member {m.name!r} lies outside {top}/")
                total += m.size
                if m.size > MAX_MEMBER_BYTES or total > MAX_TOTAL_BYTES:
                    raise _bad(path, f"member {name} is {m.size} bytes, over the cap")
                if name in raw:
                    raise _bad(path, f"member {name} appears twice")
                f = tar.extractfile(m)
                assert f is not None  # a regular file always has contents
                raw[name] = f.read()
    except (tarfile.TarError, OSError, EOFError) as e:
        raise _bad(path, f"the archive is unreadable or cut short ({e})") from e
    for need in (SUMS, SUMS_ENVELOPE, PUBKEY):
        if need not in raw:
            raise _bad(path, f"{need} is missing (the write was cut short or it was removed)")
    try:
        pub = PublicKey.from_pem(raw[PUBKEY])
        env = Envelope.from_json(raw[SUMS_ENVELOPE])
        payload = dsse_verify(env, TrustRoot.create([pub]), SUMS_PAYLOAD_TYPE)
    except SigningError as e:
        raise _bad(path, f"the checksum list's signature does not verify ({e})") from e
    if expect_key_id is not None and pub.key_id != expect_key_id:
        raise _bad(path, f"signed by site key {pub.key_id[:16]}, not the expected "
                         f"{expect_key_id[:16]}")
    if payload != raw[SUMS]:
        raise _bad(path, f"{SUMS} differs from the list its signature covers")
    listed: dict[str, str] = {}
    for line in payload.decode("utf-8", errors="replace").splitlines():
        digest, _, name = line.partition("  ")
        listed[name] = digest
    for name, data in raw.items():
        if name in (SUMS, SUMS_ENVELOPE):
            continue
        if name not in listed:
            raise _bad(path, f"member {name} is not in {SUMS} (added after signing)")
        if hashlib.sha256(data).hexdigest() != listed[name]:
            raise _bad(path, f"member {name} was changed after signing (sha256 mismatch)")
    missing = sorted(set(listed) - set(raw))
    if missing:
        raise _bad(path, f"{len(missing)} listed member(s) are missing, first {missing[0]}")
    files: dict[str, bytes] = {}
    for name, data in raw.items():
        files[name[:-3] if name.endswith(".gz") else name] = \
            _gunzip(path, name, data) if name.endswith(".gz") else data
    return VerifiedExport(path, top, pub.key_id, files)
