"""Delta bundles (omit what the base has) and split bundles (parts read as one stream)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from appliance.bundle import find_bundle_parts, verify_bundle
from appliance.bundle.imagearchive import write_image_archive
from appliance.bundle.manifest import image_blobs
from appliance.bundle.parts import parse_part, part_name
from appliance.bundle.store import ContentStore
from appliance.errors import (
    DeltaBaseError,
    DigestMismatchError,
    SplitPartError,
    TruncatedBundleError,
)
from bundler.build import build_bundle
from bundler.spec import load_spec
from signing import PrivateKey, TrustRoot
from tests.bundle.conftest import Built, make_spec_dir
from tests.bundle.kit import NOW, assert_store_clean, read_entries, source_date_epoch

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def delta(built: Built, vendor: PrivateKey, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Sequence 2 changes beta only; it builds on the session bundle (sequence 1)."""
    d = tmp_path_factory.mktemp("delta")
    spec = make_spec_dir(d, sequence=2, beta=b"new beta weights" * 40)
    with source_date_epoch():
        build_bundle(load_spec(spec), d / "delta.tar", [vendor], base=built.manifest)
    return d / "delta.tar"


def test_delta_omits_blobs_the_base_has(built: Built, delta: Path, root: TrustRoot):
    m = verify_bundle(delta, root, now=NOW).manifest
    assert m.base is not None and m.base.sequence == 1
    carried = {e.name.rsplit("/", 1)[1] for e in read_entries(delta)
               if e.name.startswith("blobs/")}
    alpha = m.model("alpha").weights_digest
    assert alpha == built.manifest.model("alpha").weights_digest
    assert alpha[7:] not in carried, "unchanged model weights are not shipped again"
    assert m.model("beta").weights_digest[7:] in carried


def test_verify_refuses_delta_into_a_store_without_the_base(delta: Path, root: TrustRoot,
                                                            tmp_path: Path):
    store = ContentStore(tmp_path / "site")
    with pytest.raises(DeltaBaseError, match="sequence 1"):
        verify_bundle(delta, root, now=NOW, store=store, last_sequence=1)
    assert not store.digests()


def test_delta_installs_on_its_base_and_images_are_complete(built: Built, delta: Path,
                                                            root: TrustRoot, tmp_path: Path):
    store = ContentStore(tmp_path / "site")
    verify_bundle(built.path, root, now=NOW, store=store)
    v = verify_bundle(delta, root, now=NOW, store=store, last_sequence=1)
    assert all(store.has(d) for d in image_blobs(v.manifest.images))
    assert_store_clean(store)
    with open(tmp_path / "images.tar", "wb") as f:
        write_image_archive(f, store, v.manifest.images)
    names = {e.name for e in read_entries(tmp_path / "images.tar")}
    assert "blobs/sha256/" + v.manifest.model("alpha").weights_digest[7:] in names


# -- split --------------------------------------------------------------------
@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory, vendor: PrivateKey) -> Built:
    """A 3.5 MiB bundle written as 1 MiB parts; the single-file build is its twin."""
    d = tmp_path_factory.mktemp("split")
    spec = make_spec_dir(d, beta=os.urandom(3 * MIB + 12345))
    with source_date_epoch():
        manifest = build_bundle(load_spec(spec), d / "whole.tar", [vendor])
        build_bundle(load_spec(spec), d / "b.tar", [vendor], split_bytes=MIB)
    return Built(d / "b.tar", manifest, d)


def _copy_parts(split: Built, tmp_path: Path) -> list[Path]:
    return [Path(shutil.copy(p, tmp_path)) for p in find_bundle_parts(split.path)]


def test_split_parts_concatenate_to_the_single_file_bundle(split: Built):
    parts = find_bundle_parts(split.path)
    assert [p.name for p in parts] == ["b.tar.001", "b.tar.002", "b.tar.003", "b.tar.004"]
    assert all(p.stat().st_size == MIB for p in parts[:-1])
    joined = b"".join(p.read_bytes() for p in parts)
    assert joined == (split.spec_dir / "whole.tar").read_bytes()


def test_split_bundle_verifies_from_its_first_part(split: Built, root: TrustRoot,
                                                   tmp_path: Path):
    store = ContentStore(tmp_path / "site")
    for given in (split.path, Path(f"{split.path}.001")):
        v = verify_bundle(given, root, now=NOW, store=store)
        assert v.manifest == split.manifest


def test_split_refuses_a_missing_middle_part(split: Built, root: TrustRoot, tmp_path: Path):
    parts = _copy_parts(split, tmp_path)
    parts[1].unlink()
    with pytest.raises(SplitPartError, match=r"b\.tar\.002 is missing"):
        verify_bundle(tmp_path / "b.tar", root, now=NOW)


def test_split_refuses_a_missing_last_part(split: Built, root: TrustRoot, tmp_path: Path):
    parts = _copy_parts(split, tmp_path)
    parts[-1].unlink()
    store = ContentStore(tmp_path / "site")
    with pytest.raises(SplitPartError, match=r"b\.tar\.003"):
        verify_bundle(tmp_path / "b.tar", root, now=NOW, store=store)
    assert_store_clean(store, split.manifest)


def test_split_refuses_reordered_parts_and_names_one(split: Built, root: TrustRoot,
                                                     tmp_path: Path):
    parts = _copy_parts(split, tmp_path)
    a, b = parts[1].read_bytes(), parts[2].read_bytes()
    parts[1].write_bytes(b)
    parts[2].write_bytes(a)
    store = ContentStore(tmp_path / "site")
    with pytest.raises(SplitPartError, match=r"part|b\.tar\.00[23]") as info:
        verify_bundle(tmp_path / "b.tar", root, now=NOW, store=store)
    assert "b.tar.00" in str(info.value)
    assert_store_clean(store, split.manifest)


def test_split_refuses_a_part_from_another_bundle(split: Built, root: TrustRoot,
                                                  tmp_path: Path, vendor: PrivateKey):
    other = tmp_path / "other"
    spec = make_spec_dir(other, beta=os.urandom(3 * MIB + 12345))
    build_bundle(load_spec(spec), other / "b.tar", [vendor], split_bytes=MIB)
    parts = _copy_parts(split, tmp_path)
    shutil.copy(other / "b.tar.003", parts[2])
    with pytest.raises(SplitPartError, match=r"b\.tar\.00"):
        verify_bundle(tmp_path / "b.tar", root, now=NOW)


def test_split_refuses_a_short_middle_part(split: Built, root: TrustRoot, tmp_path: Path):
    parts = _copy_parts(split, tmp_path)
    os.truncate(parts[1], MIB - 512)
    with pytest.raises(SplitPartError, match=r"b\.tar\.002"):
        verify_bundle(tmp_path / "b.tar", root, now=NOW)


def test_split_refuses_a_later_part_given_as_the_bundle(split: Built, root: TrustRoot):
    with pytest.raises(SplitPartError, match="not the first part"):
        verify_bundle(Path(f"{split.path}.002"), root, now=NOW)


def test_rebuilding_with_fewer_parts_removes_stale_parts(tmp_path: Path, vendor: PrivateKey):
    spec = make_spec_dir(tmp_path, beta=os.urandom(3 * MIB))
    build_bundle(load_spec(spec), tmp_path / "b.tar", [vendor], split_bytes=MIB)
    assert len(find_bundle_parts(tmp_path / "b.tar")) == 4
    build_bundle(load_spec(spec), tmp_path / "b.tar", [vendor], split_bytes=2 * MIB)
    assert len(find_bundle_parts(tmp_path / "b.tar")) == 2


@pytest.mark.parametrize("read_ahead", [True, False])
def test_read_ahead_or_not_verifies_and_refuses_the_same(split: Built, root: TrustRoot,
                                                         tmp_path: Path, monkeypatch,
                                                         read_ahead: bool):
    import appliance.bundle.stream

    monkeypatch.setattr(appliance.bundle.stream, "idle_core", lambda: read_ahead)
    whole = split.spec_dir / "whole.tar"
    store = ContentStore(tmp_path / "site")
    assert verify_bundle(whole, root, now=NOW, store=store).manifest == split.manifest
    data = whole.read_bytes()
    big = max(split.manifest.members, key=lambda m: m.size)
    assert big.size > 3 * MIB
    damaged = bytearray(data)
    damaged[data.index(b"blobs/sha256/" + big.sha256.encode()) + 512 + 2 * MIB + 7] ^= 4
    (tmp_path / "flip.tar").write_bytes(bytes(damaged))
    store2 = ContentStore(tmp_path / "site2")
    with pytest.raises(DigestMismatchError):
        verify_bundle(tmp_path / "flip.tar", root, now=NOW, store=store2)
    assert_store_clean(store2, split.manifest)
    (tmp_path / "cut.tar").write_bytes(data[: len(data) - 5 * 1024 * 1024 // 4])
    with pytest.raises(TruncatedBundleError):
        verify_bundle(tmp_path / "cut.tar", root, now=NOW, store=store2)
    assert_store_clean(store2, split.manifest)


def test_a_bundle_split_into_1200_parts_verifies(split: Built, root: TrustRoot, tmp_path: Path):
    """Past part 999 the names grow a digit (NAME.1000); the reader must take them all."""
    whole = (split.spec_dir / "whole.tar").read_bytes()
    size = -(-len(whole) // 1200)
    out = tmp_path / "many.tar"
    for i in range(0, len(whole), size):
        part_name(out, i // size + 1).write_bytes(whole[i:i + size])
    parts = find_bundle_parts(out)
    assert len(parts) == 1200 and parts[-1].name == "many.tar.1200"
    v = verify_bundle(part_name(out, 1), root, now=NOW, store=ContentStore(tmp_path / "site"))
    assert v.manifest == split.manifest
    part_name(out, 1000).unlink()
    with pytest.raises(SplitPartError, match=r"many\.tar\.1000 is missing"):
        find_bundle_parts(out)


@pytest.mark.parametrize(("name", "parsed"), [
    ("b.tar.001", ("b.tar", 1)), ("b.tar.999", ("b.tar", 999)), ("b.tar.1000", ("b.tar", 1000)),
    ("b.tar.0001", None), ("b.tar.000", None), ("b.tar.01", None), ("b.tar", None),
])
def test_part_names_are_one_rule_for_writer_and_reader(name: str, parsed):
    assert parse_part(name) == parsed
    if parsed:
        assert part_name(Path(parsed[0]), parsed[1]).name == name
