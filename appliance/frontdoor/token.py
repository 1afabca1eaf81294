"""The site token: made at first install, kept 0600 in the site root, rotated with no downtime.

The proxy never sees the token itself, only its SHA-256 (hex) in a map file, so
neither the rendered configuration nor the runtime API holds a usable secret.
"""

from __future__ import annotations

import hashlib
import secrets
import stat
from pathlib import Path

from appliance.errors import TokenError
from appliance.fsutil import atomic_write

TOKEN_FILE = "token"  # noqa: S105 - the file name, not a token
TOKEN_BYTES = 32
SECRET_MODE = 0o600


def new_token() -> str:
    """A fresh random token (256 bits, URL-safe text)."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def token_digest(token: str) -> str:
    """The key the proxy's map holds for a token: lower-case hex SHA-256 of its UTF-8 bytes."""
    return hashlib.sha256(token.encode()).hexdigest()


def ensure_token(site_root: Path) -> tuple[str, bool]:
    """The site's token and whether it was made now (first install: show it once).

    Raises:
        TokenError: the token file exists but is unreadable or readable by others.
    """
    path = site_root / TOKEN_FILE
    if not path.exists():
        token = new_token()
        atomic_write(path, (token + "\n").encode(), SECRET_MODE)
        return token, True
    return read_token(path), False


def read_token(path: Path) -> str:
    """Read a token file, refusing one that group or others may read.

    Raises:
        TokenError: missing, empty, unreadable, or mode looser than 0600.
    """
    try:
        st = path.stat()
        text = path.read_text().strip()
    except OSError as e:
        raise TokenError(f"cannot read the token file {path}: {e.strerror}") from e
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise TokenError(f"{path} is readable by others (mode {stat.S_IMODE(st.st_mode):o}): "
                         f"run `chmod 600 {path}` and rotate the token")
    if not text:
        raise TokenError(f"{path} is empty: run `appliance token rotate` to make a new token")
    return text


MAP_MODE = 0o644  # digests only: the proxy's own user must read it, nothing in it is secret


def render_token_map(tokens: list[str]) -> str:
    """The proxy's token map: one `<sha256 hex> 1` line per valid token."""
    return "".join(f"{token_digest(t)} 1\n" for t in tokens)
