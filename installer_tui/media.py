"""Finding bundles on mounted media: files whose first tar member is the signed manifest.

A USB stick mounts at /media/<user>/<label>, /run/media/<user>/<label> or
/mnt/<label>, so roots are searched a few levels deep. Candidates are files
named `*.tar`, `*.bundle` or `*.NNN` (split parts); the self-contained
installer executable also searches its own directory first, so run from a
stick it finds the bundle beside itself; one counts as a bundle
when its first tar header names `appliance/manifest.json`, which reads 100
bytes per candidate, so a stick full of other files is cheap. Split bundles
are offered once, by their first part (`NAME.001`). Any other name can still
be typed into the path field.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from appliance.bundle.manifest import MANIFEST_PATH
from appliance.bundle.parts import parse_part

DEFAULT_MEDIA_ROOTS = (Path("/media"), Path("/mnt"), Path("/run/media"))
MAX_DEPTH = 4
MAX_FOUND = 200
TRUST_ROOT_NAME = "root.json"
CANDIDATE_SUFFIXES = (".tar", ".bundle")
_HEADER_NAME = MANIFEST_PATH.encode().ljust(100, b"\0")


@dataclass(frozen=True)
class FoundBundle:
    """A bundle on a medium: its first file, how many parts, and their total size."""

    path: Path
    parts: int
    size: int

    @property
    def trust_root_beside(self) -> Path | None:
        """A `root.json` in the same directory (how vendors ship the first trust root)."""
        p = self.path.parent / TRUST_ROOT_NAME
        return p if p.is_file() else None


def executable_dir() -> Path | None:
    """The directory of the self-contained installer executable, or None under plain Python."""
    if getattr(sys, "frozen", False):  # set by the executable's bootloader
        return Path(sys.executable).resolve().parent
    return None


def default_media_roots() -> tuple[Path, ...]:
    """Where bundles are searched by default: beside the executable, then mounted media."""
    here = executable_dir()
    return ((here,) if here is not None else ()) + DEFAULT_MEDIA_ROOTS


def looks_like_bundle(path: Path) -> bool:
    """Whether `path`'s first tar header names the manifest (a cheap test, not a check)."""
    try:
        with open(path, "rb") as f:
            head = f.read(100)
    except OSError:
        return False
    return head == _HEADER_NAME


def find_bundles(roots: Iterable[Path], max_depth: int = MAX_DEPTH) -> list[FoundBundle]:
    """Bundles under `roots`, sorted by path; unreadable directories are skipped."""
    found: dict[Path, FoundBundle] = {}
    for root in roots:
        for path in _walk(Path(root), max_depth):
            if len(found) >= MAX_FOUND:
                break
            b = _as_bundle(path)
            if b is not None:
                found.setdefault(b.path, b)
    return sorted(found.values(), key=lambda b: str(b.path))


def _as_bundle(path: Path) -> FoundBundle | None:
    name = path.name
    part = parse_part(name)
    if part is None and not name.endswith(CANDIDATE_SUFFIXES):
        return None
    if part is not None and part[1] == 1:
        if not looks_like_bundle(path):
            return None
        parts = [p for p in path.parent.iterdir()
                 if (pp := parse_part(p.name)) is not None and pp[0] == part[0]]
        return FoundBundle(path, len(parts), sum(_size(p) for p in parts))
    if part is not None:
        return None  # a later part of a split bundle: offered through its first
    if looks_like_bundle(path):
        return FoundBundle(path, 1, _size(path))
    return None


def _walk(root: Path, max_depth: int) -> Iterator[Path]:
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError:
        return
    for e in entries:
        if e.name.startswith("."):
            continue
        try:
            if e.is_file():
                yield Path(e.path)
            elif e.is_dir() and max_depth > 1:
                yield from _walk(Path(e.path), max_depth - 1)
        except OSError:
            continue


def _size(p: Path) -> int:
    try:
        return p.stat().st_size
    except OSError:
        return 0
