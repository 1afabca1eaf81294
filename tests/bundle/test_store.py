"""The content store's writes: big blobs written back as they go, and a full disk."""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance import fsutil
from appliance.bundle import verify_bundle
from appliance.bundle.store import WRITEBACK_EVERY, ContentStore
from appliance.errors import DigestMismatchError, StoreError
from bundler.build import build_bundle
from bundler.spec import load_spec
from signing import PrivateKey, TrustRoot
from tests.bundle.kit import NOW, assert_store_clean, make_model_dir, write_spec

BIG = WRITEBACK_EVERY + 5 * 1024 * 1024 + 3  # crosses a writeback span, ends mid-chunk


def _blob(n: int) -> bytes:
    return hashlib.shake_256(b"store test").digest(n)


def test_writeback_is_available_on_linux() -> None:
    # The seam is live here: the closing fsync of a big blob finds its pages already written.
    assert fsutil._SYNC_FILE_RANGE is not None


@pytest.mark.parametrize("overlap", [False, True], ids=["one thread", "write on a second"])
def test_a_blob_over_a_writeback_span_is_stored_exactly(tmp_path: Path, overlap: bool) -> None:
    store = ContentStore(tmp_path)
    data = _blob(BIG)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    buf = bytearray(1024 * 1024)  # one buffer, refilled: write must be done with it
    with store.ingest(digest, len(data), overlap=overlap) as w:
        for i in range(0, len(data), len(buf)):
            n = len(data[i:i + len(buf)])
            buf[:n] = data[i:i + n]
            w.write(memoryview(buf)[:n])
    assert store.path(digest).read_bytes() == data
    store.verify(digest)
    assert_store_clean(store)


@pytest.mark.parametrize("overlap", [False, True], ids=["one thread", "write on a second"])
def test_a_big_blob_that_does_not_match_leaves_nothing(tmp_path: Path, overlap: bool) -> None:
    store = ContentStore(tmp_path)
    data = _blob(BIG)
    wrong = "sha256:" + hashlib.sha256(b"something else").hexdigest()
    with pytest.raises(DigestMismatchError), store.ingest(wrong, len(data),
                                                          overlap=overlap) as w:
        w.write(data)
    assert not store.has(wrong)
    assert_store_clean(store)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB filesystem for the site (root only: mount)."""
    d = tmp_path / "small"
    d.mkdir()
    if os.geteuid() != 0 or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(d)],
            capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", str(d)], capture_output=True, check=False)


def test_a_full_disk_during_verify_is_named_and_leaves_no_partial_blob(
        tmp_path: Path, small_disk: Path) -> None:
    key = PrivateKey.generate()
    make_model_dir(tmp_path / "models" / "big", "big", _blob(6 * 1024 * 1024))
    spec = write_spec(tmp_path, "name: full\nversion: 1.0.0\nsequence: 1\nexpires_days: 30\n"
                                "models:\n  - name: big\n    path: models/big\n")
    bundle = tmp_path / "bundle.tar"
    build_bundle(load_spec(spec), bundle, [key])
    store = ContentStore(small_disk / "site")
    with pytest.raises(StoreError) as info:
        verify_bundle(bundle, TrustRoot.create([key.public_key]), now=NOW, store=store)
    message = str(info.value)
    assert "\n" not in message
    assert "No space left on device" in message and "free disk space and run again" in message
    assert_store_clean(store)
    # the space is given back: what is left is only the small blobs that did fit
    left = sum(p.stat().st_size for p in (small_disk / "site").rglob("*") if p.is_file())
    assert left < 1024 * 1024


def test_a_full_disk_on_the_write_thread_is_named_and_cleaned_up(small_disk: Path) -> None:
    store = ContentStore(small_disk / "site")
    data = _blob(BIG)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with pytest.raises(StoreError, match=r"No space left on device.*free disk space"), \
            store.ingest(digest, len(data), overlap=True) as w:
        for i in range(0, len(data), 1024 * 1024):
            w.write(data[i:i + 1024 * 1024])
    assert not store.has(digest)
    assert_store_clean(store)
