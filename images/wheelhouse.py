"""Wheels staged on the host for an offline `pip install` inside the image build."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

from images.errors import WheelhouseError
from images.podman import run_tool

PYTHON_VERSION = "3.11"
ABI = "cp311"
# Debian bookworm has glibc 2.36: every manylinux tag up to it runs there.
PLATFORMS = ("manylinux2014_x86_64", *(f"manylinux_2_{n}_x86_64" for n in range(17, 37)))
PROJECT_FILES = ("pyproject.toml", "README.md")
TORCH_WHEEL_DIRS = (Path("/opt/wheels"),)
TORCH_FALLBACK = "torch==2.13.0+cpu"
TORCH_INDEX = "https://download.pytorch.org/whl/cpu"
SUMS = "SHA256SUMS"


@dataclass(frozen=True)
class Wheelhouse:
    """A directory of wheels and one digest over their names and contents."""

    path: Path
    digest: str

    def wheels(self) -> list[Path]:
        """The wheel files, sorted by name."""
        return sorted(self.path.glob("*.whl"))


def runtime_requirements(root: Path) -> list[str]:
    """The runtime image's requirements: the core dependencies plus the `runtime` extra.

    Raises:
        WheelhouseError: pyproject.toml is missing or has no `runtime` extra.
    """
    try:
        project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
        return [*project.get("dependencies", []), *project["optional-dependencies"]["runtime"]]
    except (OSError, KeyError, tomllib.TOMLDecodeError) as e:
        raise WheelhouseError(
            f"cannot read the runtime requirements from {root / 'pyproject.toml'}: {e}"
        ) from e


def ensure_runtime_wheels(root: Path, cache: Path, *, log: bool = False) -> Wheelhouse:
    """Download (once per requirement set) the runtime's wheels for cp311 manylinux x86_64.

    Raises:
        WheelhouseError: pip could not download them (PyPI must be reachable from the host).
    """
    reqs = [*runtime_requirements(root), "pip"]
    return _ensure_downloaded(cache / "wheels", reqs, extra_args=[], log=log)


def ensure_torch_wheels(cache: Path, *, log: bool = False) -> Wheelhouse:
    """Stage the CPU torch wheel (local copy if present) and its dependencies.

    Raises:
        WheelhouseError: neither a local wheel nor the PyTorch index gave one.
    """
    local = os.environ.get("TORCH_WHEEL") or _find_local_torch_wheel()
    if local:
        return _ensure_downloaded(cache / "wheels-torch", [str(local), "pip"], [], log=log)
    return _ensure_downloaded(
        cache / "wheels-torch",
        [TORCH_FALLBACK, "pip"],
        ["--extra-index-url", TORCH_INDEX],
        log=log,
    )


def _find_local_torch_wheel() -> Path | None:
    for d in TORCH_WHEEL_DIRS:
        found = sorted(d.glob(f"torch-*+cpu-{ABI}-{ABI}-manylinux*_x86_64.whl"))
        if found:
            return found[-1]
    return None


def _ensure_downloaded(
    parent: Path, reqs: list[str], extra_args: list[str], *, log: bool
) -> Wheelhouse:
    key_src = json.dumps({"v": 1, "reqs": reqs, "extra": extra_args, "plat": PLATFORMS})
    final = parent / hashlib.sha256(key_src.encode()).hexdigest()[:16]
    sums = final / SUMS
    if sums.exists():
        return Wheelhouse(final, hashlib.sha256(sums.read_bytes()).hexdigest())
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".dl-", dir=parent))
    try:
        argv: list[str | Path] = [
            sys.executable, "-m", "pip", "download", "--disable-pip-version-check",
            "--only-binary=:all:", "--python-version", PYTHON_VERSION,
            "--implementation", "cp", "--abi", ABI, "--abi", "abi3", "--abi", "none",
        ]
        for plat in PLATFORMS:
            argv += ["--platform", plat]
        argv += ["--dest", tmp, *extra_args, *reqs]
        run_tool(
            argv,
            what="pip download of the image's wheels (PyPI must be reachable from the host)",
            verbose=log,
            error=WheelhouseError,
        )
        _write_sums(tmp)
        tmp.chmod(0o755)  # mkdtemp makes it 0700
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return Wheelhouse(final, hashlib.sha256(sums.read_bytes()).hexdigest())


def _write_sums(directory: Path) -> None:
    lines = [f"{_sha256(p)}  {p.name}\n" for p in sorted(directory.glob("*.whl"))]
    if not lines:
        raise WheelhouseError(f"pip downloaded no wheels into {directory}")
    (directory / SUMS).write_text("".join(lines))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def source_digest(root: Path) -> str:
    """A digest over the project files that go into its wheel (names and contents)."""
    h = hashlib.sha256()
    for path in _project_sources(root):
        rel = path.relative_to(root).as_posix()
        h.update(f"{rel}\0{path.stat().st_size}\0".encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def project_packages(root: Path) -> list[str]:
    """The top-level packages the project's wheel holds (setuptools' `packages.find` include).

    Raises:
        WheelhouseError: pyproject.toml cannot be read.
    """
    try:
        doc = tomllib.loads((root / "pyproject.toml").read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise WheelhouseError(f"cannot read {root / 'pyproject.toml'}: {e}") from e
    find = doc.get("tool", {}).get("setuptools", {}).get("packages", {}).get("find", {})
    return sorted({pattern.split(".")[0].rstrip("*") for pattern in find.get("include", [])})


def _project_sources(root: Path) -> list[Path]:
    files = [root / f for f in PROJECT_FILES if (root / f).is_file()]
    for pkg in project_packages(root):
        for path in (root / pkg).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                files.append(path)
    return sorted(files)


def ensure_project_wheel(root: Path, cache: Path, *, log: bool = False) -> Wheelhouse:
    """Build (once per source digest) the project's own wheel from a clean copy of its sources.

    Raises:
        WheelhouseError: the wheel build failed.
    """
    digest = source_digest(root)
    final = cache / "project" / digest[:16]
    if (final / SUMS).exists():
        return Wheelhouse(final, digest)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=final.parent))
    try:
        # A copy, so setuptools' build/ never holds stale modules of deleted sources.
        src = tmp / "src"
        for path in _project_sources(root):
            dest = src / path.relative_to(root)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dest)
        out = tmp / "out"
        run_tool(
            [sys.executable, "-m", "pip", "wheel", "--disable-pip-version-check", "--no-deps",
             "--no-build-isolation", "--wheel-dir", out, src],
            what="pip wheel of the project",
            verbose=log,
            error=WheelhouseError,
        )
        _write_sums(out)
        out.chmod(0o755)
        if final.exists():
            shutil.rmtree(final)
        os.replace(out, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return Wheelhouse(final, digest)
