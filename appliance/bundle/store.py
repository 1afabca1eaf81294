"""The site's content store: blobs/sha256/<hex>, written only after verification."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from appliance.errors import DigestMismatchError, StoreError
from appliance.fsutil import fsync_dir, start_writeback

CHUNK = 1024 * 1024
WRITEBACK_EVERY = 32 * 1024 * 1024  # start the disk write of each such span as it fills
OVERLAP_MIN = 256 * 1024  # smaller chunks are not worth a thread handoff


def hex_of(digest: str) -> str:
    """The 64 hex digits of `sha256:<hex>` or of a bare hex digest."""
    hexpart = digest.removeprefix("sha256:")
    if len(hexpart) != 64 or any(c not in "0123456789abcdef" for c in hexpart):
        raise StoreError(f"not a sha256 digest: {digest!r}")
    return hexpart


class BlobWriter:
    """Hashes and counts what is written; the store checks both before the rename.

    With a `pool` (one thread), each chunk is written on that thread while this one
    hashes it: both release the GIL, so with an idle core a chunk costs about the
    longer of the two. `write` returns only when both are done with the chunk, so
    the caller may reuse its buffer at once.
    """

    def __init__(self, f: BinaryIO, pool: ThreadPoolExecutor | None = None) -> None:
        self._f = f
        self._pool = pool
        self.hasher = hashlib.sha256()
        self.size = 0
        self._synced = 0  # bytes whose writeback has been started

    def write(self, data: bytes | memoryview) -> None:
        if self._pool is not None and len(data) >= OVERLAP_MIN:
            written = self._pool.submit(self._f.write, data)
            self.hasher.update(data)
            written.result()
        else:
            self.hasher.update(data)
            self._f.write(data)
        self.size += len(data)
        if self.size - self._synced >= WRITEBACK_EVERY:
            self._f.flush()
            start_writeback(self._f.fileno(), self._synced, self.size - self._synced)
            self._synced = self.size


class ContentStore:
    """Content-addressed blobs. A blob path exists only once its bytes were verified."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.blobs = self.root / "blobs" / "sha256"
        self.tmp = self.root / "blobs" / "tmp"

    def ensure(self) -> None:
        """Create the blob and temp directories.

        Raises:
            StoreError: they cannot be created.
        """
        try:
            self.blobs.mkdir(parents=True, exist_ok=True)
            self.tmp.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"cannot create content store at {self.root}: {e.strerror}") from e

    def path(self, digest: str) -> Path:
        return self.blobs / hex_of(digest)

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def size(self, digest: str) -> int:
        """The stored blob's size in bytes.

        Raises:
            StoreError: the blob is not in the store.
        """
        try:
            return self.path(digest).stat().st_size
        except FileNotFoundError as e:
            raise StoreError(f"blob {digest[:19]} is not in the store {self.root}") from e

    def open(self, digest: str) -> BinaryIO:
        """Open a stored blob for reading.

        Raises:
            StoreError: the blob is not in the store.
        """
        try:
            return open(self.path(digest), "rb")
        except FileNotFoundError as e:
            raise StoreError(f"blob {digest[:19]} is not in the store {self.root}") from e

    @contextmanager
    def ingest(self, digest: str, size: int, *, overlap: bool = False) -> Iterator[BlobWriter]:
        """Write a blob through a temp file; it appears under its digest only if it matches.

        `overlap`: write on a second thread while hashing (see BlobWriter), for a
        blob of several chunks when a core is idle.

        Raises:
            DigestMismatchError: the bytes written do not hash to `digest` or are not `size`.
            StoreError: the disk is full or unwritable (the temp file is removed).
        """
        self.ensure()
        target = self.path(digest)
        fd, tmp = tempfile.mkstemp(prefix=hex_of(digest)[:16] + ".", dir=self.tmp)
        try:
            with os.fdopen(fd, "wb") as f, contextlib.ExitStack() as stack:
                pool = (stack.enter_context(ThreadPoolExecutor(1, "blob-write"))
                        if overlap and size > 2 * CHUNK else None)
                writer = BlobWriter(f, pool)
                yield writer
                if writer.size != size:
                    raise DigestMismatchError(
                        f"blob {digest[:19]}: {writer.size} bytes written, {size} pinned"
                    )
                if writer.hasher.hexdigest() != hex_of(digest):
                    raise DigestMismatchError(
                        f"blob {digest[:19]} does not match its pinned sha256"
                    )
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
            fsync_dir(self.blobs)
        except OSError as e:
            raise StoreError(
                f"cannot write blob {digest[:19]} to {self.root}: {e.strerror}; "
                "free disk space and run again"
            ) from e
        finally:
            Path(tmp).unlink(missing_ok=True)

    def add_bytes(self, data: bytes) -> str:
        """Store small bytes (configs, manifests); return their digest."""
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if not self.has(digest):
            with self.ingest(digest, len(data)) as w:
                w.write(data)
        return digest

    def verify(self, digest: str) -> None:
        """Rehash a stored blob.

        Raises:
            StoreError: missing or corrupted (the corrupted copy is removed).
        """
        h = hashlib.sha256()
        with self.open(digest) as f:
            while chunk := f.read(CHUNK):
                h.update(chunk)
        if h.hexdigest() != hex_of(digest):
            self.path(digest).unlink(missing_ok=True)
            raise StoreError(
                f"stored blob {digest[:19]} was corrupted on disk and has been removed; "
                "install the bundle again"
            )

    def digests(self) -> list[str]:
        if not self.blobs.is_dir():
            return []
        return sorted("sha256:" + p.name for p in self.blobs.iterdir() if p.is_file())
