"""Reading a bundle as one stream of tar members, across split parts, with strict checks.

`PartStream` concatenates the parts of a split bundle and can say which part
a byte offset lies in. `TarReader` walks member headers in order and streams
each member's data through a callback in fixed-size chunks, so memory stays
flat whatever the member size. It never seeks backwards and never extracts.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

from appliance.bundle.parts import parse_part, part_name
from appliance.bundle.tarfmt import BLOCK, Header, is_zero_block, padding, parse_header
from appliance.errors import (
    BundleError,
    BundleFormatError,
    SplitPartError,
    TruncatedBundleError,
)

CHUNK = 1024 * 1024


def idle_core() -> bool:
    """Whether a second thread can run beside this one: at least two cores and a load
    average that leaves one free. On a busy machine the handoffs cost more than the
    overlap saves, and the bytes produced are the same either way."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return cores >= 2 and os.getloadavg()[0] <= cores - 1


def find_bundle_parts(path: Path) -> list[Path]:
    """The files of a bundle: `path` itself, or all parts when `path` is (or names) a split.

    Raises:
        BundleFormatError: nothing by that name.
        SplitPartError: a part other than the first was given, or a part is missing.
    """
    path = Path(path)
    m = parse_part(path.name)
    if m is None and path.is_file():
        return [path]
    base = path.with_name(m[0]) if m else path
    first = part_name(base, 1).name
    if m and m[1] != 1:
        raise SplitPartError(f"{path} is not the first part; give {first}")
    found = {}
    if base.parent.is_dir():
        for p in base.parent.iterdir():
            pm = parse_part(p.name)
            if pm and pm[0] == base.name and p.is_file():
                found[pm[1]] = p
    if not found:
        raise BundleFormatError(f"no bundle at {path}: no such file and no {first}")
    count = max(found)
    missing = [part_name(base, i).name for i in range(1, count + 1) if i not in found]
    if missing:
        raise SplitPartError(f"bundle part {missing[0]} is missing (found {len(found)} of "
                             f"{count} parts); copy every part into {base.parent}")
    return [found[i] for i in range(1, count + 1)]


class PartStream:
    """Sequential reads over one or more files as if they were one."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = [Path(p) for p in paths]
        if not self.paths:
            raise BundleFormatError("no bundle files given")
        self.sizes = []
        for p in self.paths:
            try:
                self.sizes.append(p.stat().st_size)
            except OSError as e:
                raise BundleFormatError(f"cannot read bundle {p}: {e.strerror}") from e
        if len(self.paths) > 1:
            for p, size in zip(self.paths[1:-1], self.sizes[1:-1], strict=True):
                if size != self.sizes[0]:
                    raise SplitPartError(
                        f"bundle part {p.name} is {size} bytes, the first part "
                        f"{self.sizes[0]}: it is cut short or from another bundle")
            if self.sizes[-1] > self.sizes[0] or self.sizes[-1] == 0:
                raise SplitPartError(f"bundle part {self.paths[-1].name} has the wrong size "
                                     "for the last part: it is from another bundle")
        self.offset = 0
        self._index = 0
        self._f: BinaryIO | None = None

    @property
    def split(self) -> bool:
        return len(self.paths) > 1

    def part_at(self, offset: int) -> Path:
        """The part holding byte `offset` of the joined stream."""
        start = 0
        for p, size in zip(self.paths, self.sizes, strict=True):
            if offset < start + size:
                return p
            start += size
        return self.paths[-1]

    def parts_between(self, start: int, end: int) -> str:
        """Names of the parts covering [start, end): 'part b.tar.002' or 'parts b.tar.002 to
        b.tar.003'."""
        a, b = self.part_at(start), self.part_at(max(start, end - 1))
        return f"part {a.name}" if a == b else f"parts {a.name} to {b.name}"

    def readinto(self, view: memoryview) -> int:
        """Fill up to len(view) bytes; 0 only at the end of the last part."""
        while self._index < len(self.paths):
            if self._f is None:
                try:
                    self._f = open(self.paths[self._index], "rb", buffering=0)  # noqa: SIM115
                except OSError as e:
                    raise BundleFormatError(
                        f"cannot read bundle {self.paths[self._index]}: {e.strerror}") from e
                if hasattr(os, "posix_fadvise"):
                    os.posix_fadvise(self._f.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
            try:
                n = self._f.readinto(view)  # type: ignore[attr-defined]
            except OSError as e:
                raise TruncatedBundleError(
                    f"cannot read {self.paths[self._index].name} at offset {self.offset}: "
                    f"{e.strerror or e} (was the medium removed?); copy the bundle again"
                ) from e
            if n:
                self.offset += n
                return int(n)
            self._f.close()
            self._f = None
            self._index += 1
        return 0

    def read_exact(self, view: memoryview) -> int:
        """Fill `view` completely unless the stream ends; return the bytes read."""
        got = 0
        while got < len(view):
            n = self.readinto(view[got:])
            if not n:
                break
            got += n
        return got

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


class TarReader:
    """Member-by-member reading of the joined stream; every short read is a truncation."""

    def __init__(self, stream: PartStream, read_ahead: bool | None = None) -> None:
        self.s = stream
        self._block = bytearray(BLOCK)
        self._buf = bytearray(CHUNK)
        self._read_ahead = idle_core() if read_ahead is None else read_ahead

    @property
    def read_ahead(self) -> bool:
        """Whether a core was idle for a second thread when this reader was made."""
        return self._read_ahead

    def where(self, offset: int | None = None) -> str:
        off = self.s.offset if offset is None else offset
        if self.s.split:
            return f"offset {off} (part {self.s.part_at(off).name})"
        return f"offset {off}"

    def _truncated(self, what: str) -> BundleError:
        if self.s.split:
            return SplitPartError(
                f"bundle ends in {what} after part {self.s.paths[-1].name}: a later part is "
                "missing, or a part was cut short")
        return TruncatedBundleError(
            f"bundle ends in {what} at {self.where()}: the copy was cut short; copy it again")

    def next_header(self, what: str) -> Header | None:
        """The next member header, or None at the end-of-archive marker."""
        at = self.s.offset
        n = self.s.read_exact(memoryview(self._block))
        if n == 0 and at == 0:
            raise BundleFormatError("bundle file is empty")
        if n < BLOCK:
            raise self._truncated(f"the header of {what}")
        if is_zero_block(self._block):
            return None
        return parse_header(bytes(self._block), self.where(at))

    def read_small(self, size: int, what: str) -> bytes:
        """Read a member's data (already capped by the caller) and its padding."""
        data = bytearray(size)
        if self.s.read_exact(memoryview(data)) < size:
            raise self._truncated(what)
        self.skip_padding(size, what)
        return bytes(data)

    def stream(self, size: int, sink: Callable[[memoryview], None], what: str) -> None:
        """Pass `size` bytes of member data to `sink` in chunks, then skip the padding."""
        if self._read_ahead and size > 2 * CHUNK:
            self._stream_ahead(size, sink, what)
        else:
            view = memoryview(self._buf)
            left = size
            while left:
                n = self.s.readinto(view[: min(CHUNK, left)])
                if not n:
                    raise self._truncated(what)
                sink(view[:n])
                left -= n
        self.skip_padding(size, what)

    def _stream_ahead(self, size: int, sink: Callable[[memoryview], None], what: str) -> None:
        """Like `stream`, but a thread reads chunk i+1 while `sink` hashes chunk i.

        Both the read and the hash release the GIL, so with an idle core the pass
        costs about the longer of the two rather than their sum (as `openssl dgst`
        pays). The reader alone touches the stream; the sink alone touches a buffer
        until the next swap.
        """
        bufs = [memoryview(self._buf), memoryview(bytearray(CHUNK))]

        def fill(view: memoryview, want: int) -> int:
            return self.s.read_exact(view[:want])

        with ThreadPoolExecutor(max_workers=1) as pool:
            left = size
            want = min(CHUNK, left)
            pending = pool.submit(fill, bufs[0], want)
            i = 0
            while left:
                got = pending.result()
                if got < want:
                    raise self._truncated(what)
                left -= got
                nxt = min(CHUNK, left)
                if nxt:
                    pending = pool.submit(fill, bufs[1 - i], nxt)
                sink(bufs[i][:got])
                i, want = 1 - i, nxt

    def skip_padding(self, size: int, what: str) -> None:
        pad = padding(size)
        if pad:
            view = memoryview(self._block)[:pad]
            if self.s.read_exact(view) < pad:
                raise self._truncated(what)
            if not is_zero_block(bytes(view)):
                raise BundleFormatError(f"padding after {what} is not zero at {self.where()}")

    def expect_end(self) -> None:
        """After the first zero block: exactly one more, then the end of the file.

        Raises:
            TruncatedBundleError: the end marker is cut short.
            BundleFormatError: anything follows the end marker.
        """
        if self.s.read_exact(memoryview(self._block)) < BLOCK:
            raise self._truncated("the end-of-archive marker")
        if not is_zero_block(self._block):
            raise BundleFormatError(f"bundle has data in its end-of-archive marker at "
                                    f"{self.where()}: it was altered")
        probe = bytearray(1)
        if self.s.readinto(memoryview(probe)):
            raise BundleFormatError(f"bundle has trailing data after its end at "
                                    f"{self.where(self.s.offset - 1)}: it was altered")
