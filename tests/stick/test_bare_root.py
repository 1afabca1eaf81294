"""The executable on a bare Debian bullseye root (no python3, glibc 2.31), entered with chroot."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from bundler.stick import EXECUTABLE_NAME, ROOT_NAME, SUMS_NAME, write_stick
from tests.bundle.kit import flip_bit, member_offsets
from tests.site.bundlekit import Vendor as SiteVendor
from tests.site.bundlekit import make_bundle
from tests.stick.kit import BARE_GLIBC, Vendor, in_bare_root, make_vendor

pytestmark = [pytest.mark.stick, pytest.mark.slow]


@pytest.fixture
def vendor(tmp_path: Path) -> Vendor:
    return make_vendor(tmp_path)


@pytest.fixture
def stick_in_root(bare_root: Path, installer_executable: Path, tmp_path: Path,
                  vendor: Vendor) -> Iterator[str]:
    """A stick written into the bare root's /tmp; its path inside the root. Removed after."""
    bundle = make_bundle(tmp_path, SiteVendor(vendor.key, vendor.root_path), 1)
    inside = f"/tmp/stick-{uuid.uuid4().hex[:8]}"
    host = bare_root / inside.lstrip("/")
    write_stick(host, bundle=bundle, trust_root=vendor.root_path,
                executable=installer_executable, keys=[vendor.key])
    try:
        yield inside
    finally:
        shutil.rmtree(host, ignore_errors=True)


def test_the_bare_root_has_no_python_and_the_old_glibc(bare_root: Path) -> None:
    assert not list((bare_root / "usr" / "bin").glob("python*"))
    assert (bare_root / "lib" / "x86_64-linux-gnu" / f"libc-{BARE_GLIBC}.so").exists()
    r = in_bare_root(bare_root, ["ldd", "--version"])
    assert f" {BARE_GLIBC}\n" in r.stdout.splitlines()[0] + "\n", r.stdout


def test_executable_helps_fingerprints_and_verifies_on_the_bare_root(
        bare_root: Path, stick_in_root: str, vendor: Vendor) -> None:
    run = lambda *argv: in_bare_root(bare_root, [f"./{EXECUTABLE_NAME}", *argv],  # noqa: E731
                                     cwd=stick_in_root)
    sums = in_bare_root(bare_root, ["sha256sum", "-c", SUMS_NAME], cwd=stick_in_root)
    assert sums.returncode == 0 and sums.stdout.count(": OK") == 4, sums.stdout + sums.stderr

    helped = run("--help")
    assert helped.returncode == 0, helped.stderr
    assert "with no arguments, the installer TUI" in helped.stdout
    assert "install" in helped.stdout

    fp = run("keys", "fingerprint", ROOT_NAME)
    assert fp.returncode == 0, fp.stderr
    assert vendor.key.public_key.fingerprint in fp.stdout

    checked = run("stick", "verify", ".", "--trust", ROOT_NAME)
    assert checked.returncode == 0, checked.stderr
    assert "stick OK: 4 files" in checked.stdout

    verified = run("bundle", "verify", "bundle-1.tar", "--trust", ROOT_NAME,
                   "--store", f"{stick_in_root}/store")
    assert verified.returncode == 0, verified.stderr
    assert verified.stdout.startswith("verified demo 1.1.0 sequence 1")


def test_a_tampered_bundle_is_refused_on_the_bare_root_in_one_line(
        bare_root: Path, stick_in_root: str) -> None:
    path = bare_root / stick_in_root.lstrip("/") / "bundle-1.tar"
    blob = max((m for m in member_offsets(path).items() if m[0].startswith("blobs/")),
               key=lambda m: m[1][1])
    flip_bit(path, blob[1][0] + blob[1][1] // 2)
    r = in_bare_root(bare_root, [f"./{EXECUTABLE_NAME}", "bundle", "verify", "bundle-1.tar",
                                 "--trust", ROOT_NAME, "--store", f"{stick_in_root}/store"],
                     cwd=stick_in_root)
    assert r.returncode == 1
    assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("error: ")
