"""Where a bundle is written: one file or numbered parts, seekable, renamed into place at the end.

The writer lays out the bundle in one pass and patches the front (manifest,
envelope) and each blob's header afterwards, so it needs `seek`. Parts are a
plain byte split of the one tar (`cat out.tar.* > out.tar` gives the bundle);
every byte lives in part `offset // split_bytes`. Until `commit`, data goes to
hidden temp names, so an interrupted build never leaves a file that looks whole.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

from appliance.bundle.parts import parse_part, part_name
from appliance.fsutil import fsync_dir


class BundleOutput:
    """A seekable sink over one file or fixed-size parts."""

    def __init__(self, out: Path, split_bytes: int | None = None) -> None:
        if split_bytes is not None and split_bytes < 1024 * 1024:
            raise ValueError("split size must be at least 1 MiB")
        self.out = Path(out)
        self.split = split_bytes
        self.pos = 0
        self.end = 0
        self._files: dict[int, BinaryIO] = {}
        self._at: dict[int, int] = {}
        self.out.parent.mkdir(parents=True, exist_ok=True)

    def _temp(self, index: int) -> Path:
        final = self._final(index)
        return final.with_name(f".{final.name}.partial")

    def _final(self, index: int) -> Path:
        return self.out if self.split is None else part_name(self.out, index + 1)

    def _file(self, index: int) -> BinaryIO:
        f = self._files.get(index)
        if f is None:
            f = open(self._temp(index), "w+b")  # noqa: SIM115 - closed in commit/abort
            self._files[index] = f
            self._at[index] = 0
        return f

    def tell(self) -> int:
        return self.pos

    def seek(self, pos: int) -> None:
        self.pos = pos

    def write(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            if self.split is None:
                index, off, room = 0, self.pos, len(view)
            else:
                index, off = divmod(self.pos, self.split)
                room = self.split - off
            chunk = view[:room]
            f = self._file(index)
            if self._at[index] != off:
                f.seek(off)
            f.write(chunk)
            self._at[index] = off + len(chunk)
            self.pos += len(chunk)
            view = view[len(chunk):]
        self.end = max(self.end, self.pos)

    def parts(self) -> list[Path]:
        """The final names of what `commit` produces."""
        count = 1 if self.split is None else max(1, -(-self.end // self.split))
        return [self._final(i) for i in range(count)]

    def commit(self) -> list[Path]:
        """Flush, fsync and rename every part into place; remove stale higher parts."""
        finals = self.parts()
        for i in range(len(finals)):
            f = self._file(i)
            f.truncate(self.end if self.split is None else
                       min(self.split, self.end - i * self.split))
            f.flush()
            os.fsync(f.fileno())
            f.close()
        for i, final in enumerate(finals):
            os.replace(self._temp(i), final)
        if self.split is not None:
            for p in self.out.parent.iterdir():
                m = parse_part(p.name)
                if m and m[0] == self.out.name and m[1] > len(finals):
                    p.unlink()
        fsync_dir(self.out.parent)
        self._files.clear()
        return finals

    def abort(self) -> None:
        """Close and remove every temp part."""
        for i, f in self._files.items():
            f.close()
            self._temp(i).unlink(missing_ok=True)
        self._files.clear()
