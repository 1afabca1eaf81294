"""The self-contained installer executable: what is inside, its glibc floor, the same bytes
from the same inputs, and the TUI it opens from a stick."""

from __future__ import annotations

import hashlib
import os
import pty
import re
import select
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest

from bundler.stick import EXECUTABLE_NAME, write_stick
from installer_tui.screens.trust import COMPARED_TEXT
from tests.enginekit import need, wait_for
from tests.site.bundlekit import Vendor as SiteVendor
from tests.site.bundlekit import make_bundle
from tests.stick.kit import BARE_GLIBC, make_vendor

pytestmark = [pytest.mark.stick, pytest.mark.slow]

MAX_SIZE_MIB = 40  # measured 2026-11: see docs/stick.md; fails when the executable bloats
MUST_HOLD = ("appliance.installer", "appliance.cli.stick", "bundler.stick", "signing.dsse",
             "textual.app", "textual.widgets._option_list", "docker.api.client", "pynvml",
             "cryptography.hazmat.primitives.asymmetric.ed25519", "psutil", "yaml")
NEVER_HOLD = ("numpy", "onnxruntime", "onnx", "torch", "fastapi", "uvicorn", "starlette")


def _contents(exe: Path) -> tuple[set[str], set[str]]:
    """(files in the executable's archive, Python modules in its PYZ), read with PyInstaller."""
    readers = pytest.importorskip("PyInstaller.archive.readers")
    pkg = readers.CArchiveReader(str(exe))
    files = set(pkg.toc)
    pyz_name = next(n for n in files if n.endswith("PYZ.pyz") or n == "PYZ-00.pyz")
    modules = set(pkg.open_embedded_archive(pyz_name).toc)
    return files, modules


def test_executable_holds_the_installer_and_no_model_runtime(installer_executable: Path) -> None:
    files, modules = _contents(installer_executable)
    missing = [m for m in MUST_HOLD if m not in modules]
    assert not missing, f"not in the executable: {missing}"
    heavy = sorted(n for n in modules | files
                   if any(n == h or n.startswith((h + ".", h + "/")) for h in NEVER_HOLD)
                   or "onnxruntime" in n or "libtorch" in n)
    assert not heavy, f"runtime-only code in the installer: {heavy[:10]}"
    assert "installer_tui/app.tcss" in files
    size_mib = installer_executable.stat().st_size / 2**20
    assert size_mib < MAX_SIZE_MIB, f"the executable grew to {size_mib:.1f} MiB"


def _glibc_versions(path: Path) -> set[tuple[int, ...]]:
    out = subprocess.run([need("objdump"), "-T", str(path)], capture_output=True, text=True,
                         check=False).stdout
    return {tuple(int(x) for x in v.split(".")) for v in re.findall(r"GLIBC_([0-9.]+)\b", out)}


def test_no_part_needs_a_glibc_newer_than_the_floor(installer_executable: Path,
                                                    tmp_path: Path) -> None:
    readers = pytest.importorskip("PyInstaller.archive.readers")
    pkg = readers.CArchiveReader(str(installer_executable))
    floor = tuple(int(x) for x in BARE_GLIBC.split("."))
    checked = [installer_executable]
    for name in pkg.toc:
        if ".so" in name:
            out = tmp_path / name.replace("/", "_")
            out.write_bytes(pkg.extract(name))
            checked.append(out)
    assert len(checked) > 10  # libpython, the extension modules, libssl...
    newest = {p.name: max(_glibc_versions(p), default=(0,)) for p in checked}
    too_new = {n: ".".join(map(str, v)) for n, v in newest.items() if v > floor}
    assert not too_new, f"these need a glibc newer than {BARE_GLIBC}: {too_new}"


def test_the_same_inputs_build_the_same_bytes(installer_executable: Path, tmp_path: Path) -> None:
    """A second PyInstaller run in the build root gives a byte-identical executable."""
    from installer_exe import build, buildroot

    cache = installer_executable.parents[1]
    root = buildroot.ensure_build_root(cache)
    again = tmp_path / "again" / EXECUTABLE_NAME
    build._pyinstaller(root, build.stage_wheels(cache), again, log=False)
    first = hashlib.sha256(installer_executable.read_bytes()).hexdigest()
    second = hashlib.sha256(again.read_bytes()).hexdigest()
    assert first == second


_ESCAPES = re.compile(rb"\x1b(\[[0-9;?<>=]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)|[()][0-9A-B]|.)")


def test_run_from_a_stick_with_no_arguments_it_opens_the_bundle_beside_it(
        installer_executable: Path, tmp_path: Path) -> None:
    v = make_vendor(tmp_path)
    bundle = make_bundle(tmp_path, SiteVendor(v.key, v.root_path), 1)
    stick = tmp_path / "stick"
    write_stick(stick, bundle=bundle, trust_root=v.root_path, executable=installer_executable,
                keys=[v.key])
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "TERM": "xterm-256color",
           "LANG": "C.UTF-8", "APPLIANCE_ROOT": str(tmp_path / "site"),
           "TMPDIR": tempfile.gettempdir(), "COLUMNS": "100", "LINES": "30"}
    pid, fd = pty.fork()
    if pid == 0:  # the child: the executable, as an engineer would type it
        os.chdir(stick)
        os.execve(f"./{EXECUTABLE_NAME}", [f"./{EXECUTABLE_NAME}"], env)
    seen = bytearray()

    def screen_text() -> str:
        """Everything the installer drew so far, without terminal escapes."""
        while select.select([fd], [], [], 0.05)[0]:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # the pty closed: the installer exited
                break
            if not chunk:
                break
            seen.extend(chunk)
        return _ESCAPES.sub(b"", bytes(seen)).decode(errors="replace")

    reaped: list[int] = []

    def exited() -> bool:
        screen_text()  # keep draining, or a full pty would block the installer's exit
        if not reaped and os.waitpid(pid, os.WNOHANG) != (0, 0):
            reaped.append(pid)
        return bool(reaped)

    try:
        wait_for(lambda: COMPARED_TEXT in screen_text() or exited(), 120,
                 "the trust screen for the bundle beside the executable")
        text = screen_text()
        assert COMPARED_TEXT in text, text[-1500:]
        assert "demo 1.1.0" in text
        assert v.key.public_key.fingerprint in text
    finally:
        if not reaped:
            os.kill(pid, signal.SIGTERM)
            try:
                wait_for(exited, 20, "the installer to exit on SIGTERM")
            except TimeoutError:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
        os.close(fd)
    # Opening a bundle changes nothing on the site.
    assert not (tmp_path / "site" / "current").exists()


def test_a_host_program_it_starts_loads_its_own_libraries(installer_executable: Path,
                                                           tmp_path: Path) -> None:
    """The bootloader puts its unpacked directory first on LD_LIBRARY_PATH; a host program
    the executable starts (podman, haproxy, systemctl) must not get it, or it loads our
    build root's libz, libssl and libbz2 instead of its own."""
    seen, pidfile = tmp_path / "env", tmp_path / "sup.pid"
    proc = subprocess.Popen(
        [str(installer_executable), "__supervise", "--foreground", "--pidfile", str(pidfile),
         "--log", str(tmp_path / "sup.log"), "--", "/bin/sh", "-c",
         f"env > {seen}.part && mv {seen}.part {seen}; exec sleep 600"],
        env={**os.environ, "LD_LIBRARY_PATH": "/opt/site-libs"}, stdin=subprocess.DEVNULL)
    try:
        wait_for(seen.exists, 60, "the supervised program to write its environment")
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    env = dict(line.partition("=")[::2] for line in seen.read_text().splitlines() if "=" in line)
    assert env.get("LD_LIBRARY_PATH") == "/opt/site-libs", env.get("LD_LIBRARY_PATH")
