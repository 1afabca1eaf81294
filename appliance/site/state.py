"""The site's durable record: highest accepted sequence and trust root version."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from appliance.errors import SiteError
from appliance.fsutil import atomic_write
from signing import jsonbound

STATE_FILE = "state.json"


@dataclass(frozen=True)
class SiteState:
    highest_sequence: int = 0
    trust_root_version: int = 0

    @classmethod
    def load(cls, root: Path) -> SiteState:
        """Read `root/state.json`; a site with none has accepted nothing yet.

        Raises:
            SiteError: the file exists but is not valid state.
        """
        path = Path(root) / STATE_FILE
        try:
            doc = jsonbound.loads(path.read_bytes())
        except FileNotFoundError:
            return cls()
        except (OSError, ValueError) as e:
            raise SiteError(f"site state {path} is unreadable ({e}); restore it from backup") from e
        try:
            return cls(int(doc["highest_sequence"]), int(doc["trust_root_version"]))
        except (KeyError, TypeError, ValueError) as e:
            raise SiteError(f"site state {path} lacks {e}; restore it from backup") from e

    def save(self, root: Path) -> None:
        """Write state durably (fsync'd file and directory)."""
        atomic_write(Path(root) / STATE_FILE,
                     json.dumps(asdict(self), indent=2, sort_keys=True).encode() + b"\n")
