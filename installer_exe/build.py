"""Builds `appliance-installer` as one self-contained executable (PyInstaller, linux/amd64).

`python -m installer_exe.build [-o out/appliance-installer]`:

1. stage the pinned wheels (`requirements.txt`) with `pip download` into the
   cache (the only step that needs PyPI; a staged wheelhouse builds offline);
2. make or reuse the bullseye build root (`buildroot.py`, glibc 2.31 floor);
3. in it, install the wheels into a fresh venv with `--no-index` and run
   PyInstaller over our sources with a fixed SOURCE_DATE_EPOCH and
   PYTHONHASHSEED, so the same inputs give the same bytes.

The result is cached by a digest of every input; a repeat takes a second.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import os
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from installer_exe import buildroot
from installer_exe.errors import InstallerBuildError

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CACHE = REPO / ".cache" / "stick"
DEFAULT_OUT = REPO / "out" / "appliance-installer"
NAME = "appliance-installer"
REQUIREMENTS = Path(__file__).with_name("requirements.txt")
ENTRY = Path(__file__).with_name("entry_script.py")
# Our packages inside the executable; `runtime` comes along only as far as the CLI's
# argument parsing imports it (its settings), without numpy or onnxruntime.
SOURCES = ("appliance", "bundler", "installer_tui", "modelcontract", "signing", "runtime")
COLLECT = ("appliance", "bundler", "installer_tui", "modelcontract", "signing")
SOURCE_SUFFIXES = (".py", ".tcss")
SOURCE_DATE_EPOCH = "1700000000"
# Never inside: the installer runs no model, and these are most of a runtime's size.
EXCLUDES = (
    "numpy", "onnxruntime", "onnx", "torch", "fastapi", "uvicorn", "starlette",
    "pydantic", "tkinter", "_tkinter", "unittest", "pydoc", "test", "lib2to3", "distutils",
    "setuptools", "pkg_resources", "IPython",
)
PYINSTALLER_FLAGS = (
    "--onefile", "--noconfirm", "--clean", "--strip", "--log-level=WARN",
    # textual loads its widgets lazily by name, which PyInstaller's import scan cannot see.
    "--collect-submodules=textual",
    # The CLI imports its command modules, and the site its engines, by name too.
    *(f"--collect-submodules={pkg}" for pkg in COLLECT),
    "--add-data=/build/src/installer_tui/app.tcss:installer_tui",
)
# Wheels for the bullseye root: manylinux up to glibc 2.31, CPython 3.11.
PLATFORMS = (*(f"manylinux_2_{n}_x86_64" for n in range(31, 4, -1)),
             "manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64")


def source_files() -> list[Path]:
    """Our source files frozen into the executable, relative to the repository, sorted."""
    out = []
    for pkg in SOURCES:
        for p in (REPO / pkg).rglob("*"):
            if p.is_file() and p.suffix in SOURCE_SUFFIXES and "__pycache__" not in p.parts:
                out.append(p.relative_to(REPO))
    return sorted(out)


def input_digest(root_digest: str) -> str:
    """A digest of every input of the executable: build root, pins, flags, sources."""
    h = hashlib.sha256(b"v1\n")
    for part in (root_digest, SOURCE_DATE_EPOCH, *EXCLUDES, *PYINSTALLER_FLAGS):
        h.update(part.encode() + b"\n")
    # This module is the recipe (flags, environment, script): any change rebuilds.
    for p in (REQUIREMENTS, ENTRY, Path(__file__)):
        h.update(p.read_bytes())
    for rel in source_files():
        h.update(str(rel).encode() + b"\0" + (REPO / rel).read_bytes() + b"\0")
    return h.hexdigest()


def stage_wheels(cache: Path, *, log: bool = False) -> Path:
    """The wheelhouse for `requirements.txt`, downloaded once into the cache.

    Raises:
        InstallerBuildError: pip could not fetch a pinned wheel (no PyPI and no staged copy).
    """
    digest = hashlib.sha256(REQUIREMENTS.read_bytes() + "".join(PLATFORMS).encode())
    dest = cache / f"wheels-{digest.hexdigest()[:12]}"
    if dest.is_dir():
        return dest
    tmp = cache / f".{dest.name}.part"
    shutil.rmtree(tmp, ignore_errors=True)
    platforms = [f"--platform={p}" for p in PLATFORMS]
    buildroot.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
         "--python-version=3.11", "--implementation=cp", *platforms, "-d", str(tmp),
         "-r", str(REQUIREMENTS)],
        what="pip download of the installer's wheels (needs PyPI once; or copy a staged "
             f"wheelhouse to {dest})", log=log)
    os.replace(tmp, dest)
    return dest


@contextmanager
def _locked(cache: Path) -> Iterator[None]:
    """One build at a time per cache (tests and `make installer` may run together)."""
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def build(out: Path = DEFAULT_OUT, *, cache: Path = DEFAULT_CACHE, log: bool = False) -> Path:
    """Build (or reuse) the executable and copy it to `out`; returns `out`.

    Raises:
        InstallerBuildError: a step failed (the message names it).
        ToolMissingError: debootstrap, unshare or chroot is missing.
    """
    with _locked(cache):
        root = buildroot.ensure_build_root(cache, log=log)
        cached = cache / f"exe-{input_digest(buildroot.recipe_digest())[:12]}" / NAME
        if not cached.exists():
            wheels = stage_wheels(cache, log=log)
            _pyinstaller(root, wheels, cached, log=log)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.part")
        shutil.copy2(cached, tmp)
        os.replace(tmp, out)
    return out


def _pyinstaller(root: Path, wheels: Path, dest: Path, *, log: bool) -> None:
    work = root / "build"
    shutil.rmtree(work, ignore_errors=True)
    (work / "src").mkdir(parents=True)
    shutil.copytree(wheels, work / "wheels")
    shutil.copy2(REQUIREMENTS, work / "requirements.txt")
    shutil.copy2(ENTRY, work / "src" / "entry.py")
    for rel in source_files():
        (work / "src" / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, work / "src" / rel)
    excludes = [f"--exclude-module={m}" for m in EXCLUDES]
    script = (
        f"set -e; {buildroot.PYTHON} -m venv /build/venv; "
        "/build/venv/bin/pip install -q --no-index --find-links /build/wheels "
        "-r /build/requirements.txt; cd /build/src; "
        f"/build/venv/bin/pyinstaller --name {NAME} {' '.join(PYINSTALLER_FLAGS)} "
        f"{' '.join(excludes)} --paths /build/src --distpath /build/dist "
        "--workpath /build/work --specpath /build/work entry.py"
    )
    try:
        buildroot.in_root(root, ["/bin/sh", "-c", script], log=log,
                          what="PyInstaller in the build root",
                          env=[f"SOURCE_DATE_EPOCH={SOURCE_DATE_EPOCH}", "PYTHONHASHSEED=0",
                               # collect-submodules imports our packages in a subprocess.
                               "PYTHONPATH=/build/src",
                               "PIP_NO_CACHE_DIR=1", "PIP_DISABLE_PIP_VERSION_CHECK=1"])
        built = work / "dist" / NAME
        if not built.is_file():
            raise InstallerBuildError(f"PyInstaller finished without {built}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{NAME}.part")
        shutil.copy2(built, tmp)
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """`make installer`: build the executable and print its path, size, sha256 and time."""
    p = argparse.ArgumentParser(prog="python -m installer_exe.build", description=__doc__)
    p.add_argument("-o", "--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--cache", type=Path,
                   default=Path(os.environ.get("APPLIANCE_STICK_CACHE", str(DEFAULT_CACHE))))
    p.add_argument("-v", "--verbose", action="store_true", help="show the tools' output")
    args = p.parse_args(argv)
    t0 = time.monotonic()
    try:
        out = build(args.out, cache=args.cache, log=args.verbose)
    except InstallerBuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    print(f"{out}  {out.stat().st_size / 2**20:.1f} MiB  sha256 {digest}  "
          f"{time.monotonic() - t0:.0f} s  (glibc >= {buildroot.GLIBC_FLOOR})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
