"""`appliance stick write/verify`: a stick's files, its signed checksum list, and refusals."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from appliance.cli import main as cli_main
from appliance.errors import StickError
from bundler.stick import (
    EXECUTABLE_NAME,
    README_NAME,
    ROOT_NAME,
    SUMS_ENVELOPE_NAME,
    SUMS_NAME,
    parse_sums,
    verify_stick,
    write_stick,
)
from signing import PrivateKey, TrustRoot
from tests.site.bundlekit import Vendor as SiteVendor
from tests.site.bundlekit import make_bundle
from tests.stick.kit import Vendor, make_vendor


@pytest.fixture
def vendor(tmp_path: Path) -> Vendor:
    return make_vendor(tmp_path)


@pytest.fixture
def bundle(tmp_path: Path, vendor: Vendor) -> Path:
    return make_bundle(tmp_path, SiteVendor(vendor.key, vendor.root_path), 1)


@pytest.fixture
def executable(tmp_path: Path) -> Path:
    exe = tmp_path / "built" / EXECUTABLE_NAME
    exe.parent.mkdir()
    exe.write_bytes(b"\x7fELF" + bytes(range(256)) * 64)
    return exe


def write(tmp_path: Path, vendor: Vendor, bundle: Path, executable: Path) -> Path:
    stick = tmp_path / "stick"
    write_stick(stick, bundle=bundle, trust_root=vendor.root_path, executable=executable,
                keys=[vendor.key])
    return stick


def test_stick_holds_installer_bundle_root_readme_and_signed_sums(
        tmp_path: Path, vendor: Vendor, bundle: Path, executable: Path) -> None:
    stick = write(tmp_path, vendor, bundle, executable)
    names = sorted(p.name for p in stick.iterdir())
    assert names == sorted([EXECUTABLE_NAME, bundle.name, ROOT_NAME, README_NAME, SUMS_NAME,
                            SUMS_ENVELOPE_NAME])
    assert (stick / EXECUTABLE_NAME).stat().st_mode & 0o111
    assert (stick / bundle.name).read_bytes() == bundle.read_bytes()
    listed = parse_sums((stick / SUMS_NAME).read_bytes())
    assert set(listed) == {EXECUTABLE_NAME, bundle.name, ROOT_NAME, README_NAME}
    readme = (stick / README_NAME).read_text()
    assert vendor.key.public_key.fingerprint in readme
    assert f"sha256sum -c {SUMS_NAME}" in readme
    check = verify_stick(stick, vendor.root)
    assert check.signed_by == [vendor.key.key_id]
    assert check.uncovered == []


def test_sha256sum_checks_the_stick_with_coreutils_alone(
        tmp_path: Path, vendor: Vendor, bundle: Path, executable: Path) -> None:
    stick = write(tmp_path, vendor, bundle, executable)
    ok = subprocess.run(["sha256sum", "-c", SUMS_NAME], cwd=stick, capture_output=True,
                        text=True, check=False)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.count(": OK") == 4
    with open(stick / bundle.name, "r+b") as f:
        f.seek(700)
        b = f.read(1)
        f.seek(700)
        f.write(bytes([b[0] ^ 1]))
    bad = subprocess.run(["sha256sum", "-c", SUMS_NAME], cwd=stick, capture_output=True,
                         text=True, check=False)
    assert bad.returncode != 0
    assert f"{bundle.name}: FAILED" in bad.stdout


@pytest.mark.parametrize("victim", ["installer", "bundle", ROOT_NAME, README_NAME])
def test_verify_names_the_file_with_a_flipped_byte(
        tmp_path: Path, vendor: Vendor, bundle: Path, executable: Path, victim: str) -> None:
    stick = write(tmp_path, vendor, bundle, executable)
    name = {"installer": EXECUTABLE_NAME, "bundle": bundle.name}.get(victim, victim)
    path = stick / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40
    path.write_bytes(bytes(data))
    with pytest.raises(StickError, match=rf"^{name} on .* does not match {SUMS_NAME}"):
        verify_stick(stick, vendor.root)


def test_verify_refuses_an_edited_checksum_list(
        tmp_path: Path, vendor: Vendor, bundle: Path, executable: Path) -> None:
    stick = write(tmp_path, vendor, bundle, executable)
    # An attacker swaps the installer and fixes its line in the plain list.
    (stick / EXECUTABLE_NAME).write_bytes(b"#!/bin/sh\necho evil\n")
    text = (stick / SUMS_NAME).read_text().splitlines()
    evil = hashlib.sha256(b"#!/bin/sh\necho evil\n").hexdigest()
    text = [f"{evil}  {EXECUTABLE_NAME}" if line.endswith(EXECUTABLE_NAME) else line
            for line in text]
    (stick / SUMS_NAME).write_text("\n".join(text) + "\n")
    with pytest.raises(StickError, match="differs from the signed copy"):
        verify_stick(stick, vendor.root)


def test_verify_refuses_a_list_signed_by_a_key_outside_the_root(
        tmp_path: Path, vendor: Vendor, bundle: Path, executable: Path) -> None:
    stick = write(tmp_path, vendor, bundle, executable)
    stranger = TrustRoot.create([PrivateKey.generate().public_key])
    with pytest.raises(StickError, match=f"^{SUMS_ENVELOPE_NAME} on .*do not use this stick"):
        verify_stick(stick, stranger)


def test_verify_names_a_missing_file_and_a_missing_signature(
        tmp_path: Path, vendor: Vendor, bundle: Path, executable: Path) -> None:
    stick = write(tmp_path, vendor, bundle, executable)
    (stick / ROOT_NAME).unlink()
    with pytest.raises(StickError, match=rf"^{ROOT_NAME} is missing from"):
        verify_stick(stick, vendor.root)
    (stick / SUMS_ENVELOPE_NAME).unlink()
    with pytest.raises(StickError, match="cannot read checksum signature"):
        verify_stick(stick, vendor.root)


def test_verify_notes_files_the_vendor_did_not_sign(
        tmp_path: Path, vendor: Vendor, bundle: Path, executable: Path) -> None:
    stick = write(tmp_path, vendor, bundle, executable)
    (stick / "holiday.jpg").write_bytes(b"not from the vendor")
    assert verify_stick(stick, vendor.root).uncovered == ["holiday.jpg"]


def test_write_refuses_a_key_outside_the_root_and_writes_nothing(
        tmp_path: Path, vendor: Vendor, bundle: Path, executable: Path) -> None:
    with pytest.raises(StickError, match="is not in the trust root"):
        write_stick(tmp_path / "stick", bundle=bundle, trust_root=vendor.root_path,
                    executable=executable, keys=[PrivateKey.generate()])
    assert not (tmp_path / "stick").exists()


def test_write_names_a_missing_executable(
        tmp_path: Path, vendor: Vendor, bundle: Path) -> None:
    with pytest.raises(StickError, match="run `make installer` or pass --executable"):
        write_stick(tmp_path / "stick", bundle=bundle, trust_root=vendor.root_path,
                    executable=tmp_path / "nope", keys=[vendor.key])


def test_split_bundle_parts_all_go_on_the_stick(
        tmp_path: Path, vendor: Vendor, bundle: Path, executable: Path) -> None:
    data = bundle.read_bytes()
    parts = tmp_path / "parts"
    parts.mkdir()
    third = len(data) // 3 + 1
    for i in range(3):
        (parts / f"demo.tar.{i + 1:03d}").write_bytes(data[i * third:(i + 1) * third])
    stick = tmp_path / "stick"
    write_stick(stick, bundle=parts / "demo.tar.001", trust_root=vendor.root_path,
                executable=executable, keys=[vendor.key])
    listed = parse_sums((stick / SUMS_NAME).read_bytes())
    assert {"demo.tar.001", "demo.tar.002", "demo.tar.003"} <= set(listed)
    verify_stick(stick, vendor.root)


def test_cli_writes_and_verifies_a_stick_and_fails_in_one_line(
        tmp_path: Path, vendor: Vendor, bundle: Path, executable: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    key_path = tmp_path / "vendor.key"
    key_path.write_bytes(vendor.key.to_pem())
    stick = tmp_path / "stick"
    assert cli_main(["stick", "write", str(stick), "--bundle", str(bundle), "--trust",
                     str(vendor.root_path), "--key", str(key_path), "--executable",
                     str(executable)]) == 0
    assert cli_main(["stick", "verify", str(stick), "--trust", str(vendor.root_path)]) == 0
    assert "stick OK: 4 files" in capsys.readouterr().out
    shutil.copy(stick / README_NAME, tmp_path / "keep")
    (stick / README_NAME).write_text("edited\n")
    assert cli_main(["stick", "verify", str(stick), "--trust", str(vendor.root_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith(f"error: {README_NAME} on ")
    # The signed envelope's payload is the list itself.
    env = json.loads((stick / SUMS_ENVELOPE_NAME).read_text())
    assert env["payloadType"] == "application/vnd.appliance.sha256sums.v1+text"
