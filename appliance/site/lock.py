"""The site's install lock: one installer or rollback at a time on a site."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager

from appliance.errors import InstallLockedError, SiteError
from appliance.site.layout import Site


@contextmanager
def site_lock(site: Site) -> Iterator[None]:
    """Hold the site's install lock (the kernel drops it if this process dies).

    Raises:
        InstallLockedError: another installer or rollback holds it.
    """
    try:  # only the root: a preflight that refuses leaves no releases/ or logs/ behind
        site.root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SiteError(f"cannot create the site at {site.root}: {e.strerror}; "
                        "choose a writable --root or run as root") from e
    fd = os.open(site.root / ".install.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            raise InstallLockedError(f"another installer is working on {site.root}; "
                                     "wait for it to finish") from e
        yield
    finally:
        os.close(fd)
