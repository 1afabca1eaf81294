"""The per-site Ed25519 key that signs support exports, made at first use.

`<root>/support/site.key` (PEM, 0600) and `site.pub`. The public half travels in every
export; a vendor who keeps the key id from the site's first export can tell later exports
from that site apart from edited or forged ones.
"""

from __future__ import annotations

import os
from pathlib import Path

from appliance.errors import SupportError
from appliance.fsutil import atomic_write
from signing import PrivateKey, PublicKey, SigningError

KEY_DIR = "support"
KEY_FILE = "site.key"
PUB_FILE = "site.pub"


def site_key(root: Path) -> PrivateKey:
    """The site's signing key, made (0600, in the site root) the first time it is asked for.

    Raises:
        SupportError: the key exists but cannot be read, or cannot be written.
    """
    d = Path(root) / KEY_DIR
    key_path = d / KEY_FILE
    try:
        if key_path.is_file():
            return PrivateKey.from_pem(key_path.read_bytes())
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = PrivateKey.generate()
        atomic_write(key_path, key.to_pem(), mode=0o600)
        atomic_write(d / PUB_FILE, key.public_key.to_pem(), mode=0o644)
        return key
    except PermissionError as e:
        raise SupportError(f"cannot read or make the site's support key {key_path} "
                           f"({e.strerror}); run as root (sudo)") from e
    except (OSError, SigningError) as e:
        raise SupportError(f"the site's support key {key_path} is unusable ({e}); move it "
                           "aside and run again to make a new one") from e


def site_public_key(root: Path) -> PublicKey:
    """The public half of the site's key (making the key when there is none).

    Raises:
        SupportError: see `site_key`.
    """
    return site_key(root).public_key


def key_mode_ok(root: Path) -> bool:
    """Whether the private key is readable by its owner only."""
    st = os.stat(Path(root) / KEY_DIR / KEY_FILE)
    return st.st_mode & 0o077 == 0
