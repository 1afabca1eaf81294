"""The site layout on disk: content store, releases, the `current` pointer, state.

```
<root>/blobs/sha256/...        verified content store, shared by releases
<root>/releases/<seq>/         manifest, envelope, release.json, install.log,
                               placement.json, models/ (process engine)
<root>/current -> releases/<n> switched atomically (rename of a symlink)
<root>/state.json              highest accepted sequence, trust root version
<root>/logs/                   the appliance's own JSON logs
```

Every write is a temp file and a rename, then an fsync of the directory, so a
crash at any instant leaves either the old or the new file.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from appliance.bundle.manifest import Manifest
from appliance.bundle.store import ContentStore
from appliance.errors import ManifestError, SiteError
from appliance.fsutil import atomic_write, fsync_dir
from appliance.site.state import SiteState
from signing import jsonbound

DEFAULT_ROOT = Path("/var/lib/appliance")
MANIFEST_FILE = "manifest.json"
ENVELOPE_FILE = "manifest.dsse.json"
RECORD_FILE = "release.json"
PLACEMENT_FILE = "placement.json"
LOG_FILE = "install.log"
TRUST_FILE = "root.json"
# A new release starts beside the serving one; its ports are the declared
# ones shifted by one slot so both can answer during the handover.
SLOT_PORT_STEP = 100
RUNTIME_PORT_BASE = 20000  # behind the front door: see runtime_port
RUNTIME_PORT_SPAN = 6000


@dataclass(frozen=True)
class ReleaseRecord:
    """What the site knows about one installed release (release.json)."""

    sequence: int
    manifest_digest: str
    engine: str = ""
    slot: int = 0
    status: str = "staged"  # staged, loaded, started, ready, serving, failed, stopped
    reason: str = ""
    endpoints: dict[str, str] = field(default_factory=dict)  # service -> base URL
    updated: str = ""

    @classmethod
    def from_dict(cls, doc: Any) -> ReleaseRecord:
        return cls(int(doc["sequence"]), str(doc["manifest_digest"]), str(doc.get("engine", "")),
                   int(doc.get("slot", 0)), str(doc.get("status", "staged")),
                   str(doc.get("reason", "")), dict(doc.get("endpoints", {})),
                   str(doc.get("updated", "")))


@dataclass(frozen=True)
class Release:
    """One release directory under `releases/`."""

    sequence: int
    path: Path

    @property
    def record(self) -> ReleaseRecord:
        """The release's record.

        Raises:
            SiteError: release.json is missing or unreadable.
        """
        p = self.path / RECORD_FILE
        try:
            return ReleaseRecord.from_dict(jsonbound.loads(p.read_bytes()))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise SiteError(f"release record {p} is unreadable ({e}); reinstall the bundle") from e

    def manifest(self) -> Manifest:
        """The release's manifest (verified when it was installed).

        Raises:
            SiteError: the file is missing or no longer parses.
        """
        p = self.path / MANIFEST_FILE
        try:
            return Manifest.from_json(p.read_bytes())
        except (OSError, ManifestError) as e:
            raise SiteError(f"release manifest {p} is unreadable ({e}); reinstall it") from e

    @property
    def models_dir(self) -> Path:
        return self.path / "models"

    def log(self, event: str, **fields: Any) -> None:
        """Append one JSON line to the release's install log (flushed and fsync'd)."""
        line = {"time": _now(), "event": event, **fields}
        with open(self.path / LOG_FILE, "a", encoding="utf-8") as f:
            f.write(json.dumps(line, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def log_lines(self) -> list[dict[str, Any]]:
        p = self.path / LOG_FILE
        if not p.exists():
            return []
        return [jsonbound.loads(x) for x in p.read_text().splitlines() if x.strip()]


class Site:
    """A site root: the store, releases, `current` and state, all under one directory."""

    def __init__(self, root: Path = DEFAULT_ROOT) -> None:
        self.root = Path(root)
        self.releases_dir = self.root / "releases"
        self.current_link = self.root / "current"
        self.logs_dir = self.root / "logs"
        self.store = ContentStore(self.root)

    def ensure(self) -> None:
        """Create the layout (idempotent).

        Raises:
            SiteError: the root cannot be created or written.
        """
        try:
            for d in (self.root, self.releases_dir, self.logs_dir):
                d.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise SiteError(f"cannot create the site at {self.root}: {e.strerror}; "
                            "choose a writable --root or run as root") from e

    def directories(self) -> list[Path]:
        """Every directory the installer writes into or cleans (root first)."""
        return [self.root, self.root / "blobs", self.store.blobs, self.store.tmp,
                self.releases_dir, self.logs_dir, self.root / "audit"]

    # -- state ----------------------------------------------------------------
    def state(self) -> SiteState:
        return SiteState.load(self.root)

    def accept_sequence(self, sequence: int, trust_root_version: int | None = None) -> None:
        """Record `sequence` as accepted (never lowers the highest); fsync'd."""
        s = self.state()
        new = SiteState(max(s.highest_sequence, sequence),
                        max(s.trust_root_version, trust_root_version or 0))
        if new != s:
            new.save(self.root)

    @property
    def trust_path(self) -> Path:
        return self.root / TRUST_FILE

    # -- releases -------------------------------------------------------------
    def release(self, sequence: int) -> Release:
        """The installed release `sequence`.

        Raises:
            SiteError: it is not installed here.
        """
        p = self.releases_dir / str(sequence)
        if not (p / RECORD_FILE).is_file():
            have = ", ".join(str(r.sequence) for r in self.releases()) or "none"
            raise SiteError(f"release {sequence} is not installed at {self.root} "
                            f"(installed: {have}); see `appliance releases`")
        return Release(sequence, p)

    def releases(self) -> list[Release]:
        """Installed releases, oldest first."""
        if not self.releases_dir.is_dir():
            return []
        out = [Release(int(p.name), p) for p in self.releases_dir.iterdir()
               if p.name.isdigit() and (p / RECORD_FILE).is_file()]
        return sorted(out, key=lambda r: r.sequence)

    def stage_release(self, manifest_bytes: bytes, envelope_bytes: bytes, sequence: int,
                      engine: str) -> Release:
        """Create (or reuse, for the same manifest) `releases/<seq>` with the signed files.

        Raises:
            SiteError: a different manifest already holds that sequence here.
        """
        digest = "sha256:" + hashlib.sha256(manifest_bytes).hexdigest()
        self.ensure()
        path = self.releases_dir / str(sequence)
        rec_path = path / RECORD_FILE
        if rec_path.is_file():
            old = Release(sequence, path).record
            if old.manifest_digest != digest:
                raise SiteError(
                    f"release {sequence} is already installed from a different manifest "
                    f"({old.manifest_digest[:19]}); a new bundle needs a higher sequence")
        path.mkdir(parents=True, exist_ok=True)
        atomic_write(path / MANIFEST_FILE, manifest_bytes)
        atomic_write(path / ENVELOPE_FILE, envelope_bytes)
        rel = Release(sequence, path)
        if not rec_path.is_file():
            self.write_record(rel, ReleaseRecord(sequence, digest, engine))
        fsync_dir(self.releases_dir)
        return rel

    def write_record(self, release: Release, record: ReleaseRecord) -> ReleaseRecord:
        """Write release.json atomically, stamped with the time."""
        record = replace(record, updated=_now())
        atomic_write(release.path / RECORD_FILE,
                     json.dumps(asdict(record), indent=2, sort_keys=True).encode() + b"\n")
        return record

    def update_record(self, release: Release, **changes: Any) -> ReleaseRecord:
        """Change fields of a release's record and write it."""
        return self.write_record(release, replace(release.record, **changes))

    def manifest_digest_of(self, sequence: int) -> str | None:
        """The manifest digest installed under `sequence`, or None."""
        try:
            return self.release(sequence).record.manifest_digest
        except SiteError:
            return None

    # -- current ----------------------------------------------------------------
    def current(self) -> Release | None:
        """The release `current` points at, or None on a fresh site.

        Raises:
            SiteError: `current` exists but does not point at an installed release.
        """
        try:
            target = os.readlink(self.current_link)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise SiteError(f"{self.current_link} is not a symlink ({e.strerror}); "
                            "remove it and run `appliance rollback SEQ`") from e
        name = Path(target).name
        if not name.isdigit():
            raise SiteError(f"{self.current_link} points at {target!r}, not a release; "
                            "run `appliance rollback SEQ`")
        return self.release(int(name))

    def switch_current(self, sequence: int) -> None:
        """Point `current` at `releases/<sequence>` atomically (new symlink, rename, fsync)."""
        self.release(sequence)  # must exist
        for stale in self.root.glob(".current.*.tmp"):  # left by an installer that was killed
            stale.unlink(missing_ok=True)
        tmp = self.root / f".current.{os.getpid()}.tmp"
        os.symlink(f"releases/{sequence}", tmp)
        os.replace(tmp, self.current_link)
        fsync_dir(self.root)


def slot_port(port: int, slot: int) -> int:
    """The host port a service declared on `port` uses in `slot` (0 or 1), with no front door."""
    return port + slot * SLOT_PORT_STEP


def runtime_port(port: int, slot: int) -> int:
    """The loopback port a release's runtime listens on in `slot` behind the front door,
    which itself owns the declared `port`: 20000-25999 for slot 0, 26000-31999 for slot 1,
    below the kernel's ephemeral range (32768 up), whose ports outgoing connections take."""
    return RUNTIME_PORT_BASE + slot * RUNTIME_PORT_SPAN + port % RUNTIME_PORT_SPAN


def _now() -> str:
    return datetime.fromtimestamp(time.time(), UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
