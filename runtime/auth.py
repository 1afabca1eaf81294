"""Bearer tokens: one from the settings and any number from a token file, re-read on change.

A token is rotated with no restart and no failed request: add the new token as a line of
the file, move the clients, then remove the old line. The file is looked at (one stat) at
most once a second, and at once when a presented token matches none we know, so a token
works the first time a client sends it.
"""

from __future__ import annotations

import hmac
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from runtime.errors import SettingsError

log = logging.getLogger("runtime.auth")

STAT_INTERVAL_S = 1.0


def read_tokens(path: Path) -> list[bytes]:
    """The tokens in a token file: one a line; blank lines and `#` comments are skipped.

    Raises:
        SettingsError: the file cannot be read or holds no token.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) else "not UTF-8 text"
        raise SettingsError(f"cannot read token file {path}: {reason}; check the path") from e
    tokens = [ln.strip().encode() for ln in text.splitlines()]
    tokens = [t for t in tokens if t and not t.startswith(b"#")]
    if not tokens:
        raise SettingsError(f"token file {path} is empty; write the bearer token into it")
    return tokens


def _bearer(header: bytes | None) -> bytes | None:
    """The credentials of an `Authorization: Bearer ...` header; the scheme in any case."""
    if header is None:
        return None
    scheme, _, rest = header.strip().partition(b" ")
    if scheme.lower() != b"bearer":
        return None
    return rest.strip() or None


class TokenCheck:
    """Decides whether a request's Authorization header carries a token we accept."""

    def __init__(self, token: str | None, token_file: Path | None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._fixed = [token.encode()] if token else []
        self._file = token_file
        self._clock = clock
        self._from_file: list[bytes] = []
        self._seen: tuple[int, int, int] | None = None
        self._checked = float("-inf")
        if token_file is not None:
            self._from_file = read_tokens(token_file)
            self._seen = self._identity()

    @property
    def enabled(self) -> bool:
        """Whether any token is configured (else every request is let through)."""
        return bool(self._fixed) or self._file is not None

    def accepts(self, header: bytes | None) -> bool:
        """Whether `header` is `Bearer <token>` for a token we accept now."""
        presented = _bearer(header)
        if presented is None:
            return False
        if self._file is not None and self._clock() - self._checked >= STAT_INTERVAL_S:
            self._reload()
        if self._match(presented):
            return True
        if self._file is not None and self._reload():  # a token added a moment ago
            return self._match(presented)
        return False

    def _match(self, presented: bytes) -> bool:
        ok = False
        for t in (*self._fixed, *self._from_file):
            ok |= hmac.compare_digest(presented, t)  # no early exit: same work for any token
        return ok

    def _identity(self) -> tuple[int, int, int] | None:
        assert self._file is not None
        try:
            st = os.stat(self._file)
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _reload(self) -> bool:
        """Re-read the file if it changed; whether the tokens changed."""
        assert self._file is not None
        self._checked = self._clock()
        seen = self._identity()
        if seen == self._seen:
            return False
        self._seen = seen
        try:
            tokens = read_tokens(self._file)
        except SettingsError as e:
            # Mid-rewrite (truncated, or renamed away for a moment): keep what we had
            # rather than lock every client out; the next change is read again.
            log.warning("%s; keeping the %d token(s) read before", e, len(self._from_file))
            return False
        changed = tokens != self._from_file
        if changed:
            log.info("token file %s re-read: %d token(s)", self._file, len(tokens))
        self._from_file = tokens
        return changed
