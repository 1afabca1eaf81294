"""The site token: made at first install, kept 0600 in the site root, rotated with no downtime.

The proxy never sees the token itself, only its SHA-256 (hex) in a map file, so
neither the rendered configuration nor the runtime API holds a usable secret.

The runtimes behind the front door check the same token themselves, so a local
user who reaches a runtime's loopback port around the proxy still needs it. They
read it from `<site>/runtime-token/tokens` (every valid token, one a line: two
while a rotation is under way), a directory the engines mount read-only at
`/run/appliance-token` and name in `RUNTIME_TOKEN_FILE`; never an environment
value. The directory is 0700 and the file 0400, owned by the runtime image's user.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import stat
from pathlib import Path

from appliance.errors import TokenError
from appliance.fsutil import atomic_write

TOKEN_FILE = "token"  # noqa: S105 - the file name, not a token
PENDING_SUFFIX = ".old"  # the token a rotation under way still accepts
RUNTIME_TOKEN_DIR = "runtime-token"  # noqa: S105 - a directory name
RUNTIME_TOKENS = "tokens"
TOKEN_DIR_IN_RUNTIME = "/run/appliance-token"  # noqa: S105 - a mount point
RUNTIME_TOKEN_MODE = 0o400
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


def valid_tokens(site_root: Path) -> list[str]:
    """Every token the site accepts now: its token, and the old one while a rotation
    is under way.

    Raises:
        TokenError: a token file is unreadable, empty or loose.
    """
    tokens = [read_token(site_root / TOKEN_FILE)]
    pending = site_root / (TOKEN_FILE + PENDING_SUFFIX)
    if pending.exists():
        tokens.append(read_token(pending))
    return tokens


def runtime_token_file(site_root: Path) -> Path:
    """Where the runtimes' copy of the valid tokens is on the host."""
    return site_root / RUNTIME_TOKEN_DIR / RUNTIME_TOKENS


def write_runtime_tokens(site_root: Path, tokens: list[str],
                         owner: tuple[int, int] | None = None) -> Path:
    """Write the runtimes' token file (atomically: a runtime re-reading it sees the old
    set or the new one) and return its directory. `owner` defaults to the file's
    current owner, else root.
    """
    path = runtime_token_file(site_root)
    if owner is None:
        try:
            st = path.stat()
            owner = (st.st_uid, st.st_gid)
        except OSError:
            owner = (0, 0)
    path.parent.mkdir(mode=0o700, exist_ok=True)
    os.chown(path.parent, *owner)
    os.chmod(path.parent, 0o700)
    atomic_write(path, "".join(f"{t}\n" for t in tokens).encode(), RUNTIME_TOKEN_MODE, owner)
    return path.parent


def own_runtime_tokens(site_root: Path, uid: int, gid: int) -> Path | None:
    """Hand the runtimes' token directory to the user a runtime runs as; its directory,
    or None when the site has none (no front door: the runtime asks for no token)."""
    path = runtime_token_file(site_root)
    if not path.is_file() or path.parent.is_symlink() or path.is_symlink():
        return None
    for p in (path.parent, path):
        os.chown(p, uid, gid)
    return path.parent
