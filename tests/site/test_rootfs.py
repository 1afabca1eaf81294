"""Unpacking an image's layers into a root: whiteouts, links, and every unsafe layer refused."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from appliance.bundle.store import ContentStore
from appliance.engines.rootfs import ensure_root, remove_unused, root_key
from appliance.errors import DigestMismatchError, LayerError

Entry = tuple[str, str, object]  # (name, kind, payload): file bytes, link target, mode


def layer(entries: list[Entry], *, compress: bool = True) -> bytes:
    """A layer tar (gzip'd like a bundle's) of (name, kind, payload) entries."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, payload in entries:
            info = tarfile.TarInfo(name)
            data = b""
            if kind == "file":
                data = payload if isinstance(payload, bytes) else b""
                info.size = len(data)
                info.mode = 0o644
            elif kind == "mode":  # a file with an explicit mode
                info.mode = int(payload)  # type: ignore[call-overload]
                data = b"#!/bin/sh\n"
                info.size = len(data)
            elif kind == "dir":
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
            elif kind == "sym":
                info.type, info.linkname = tarfile.SYMTYPE, str(payload)
            elif kind == "hard":
                info.type, info.linkname = tarfile.LNKTYPE, str(payload)
            elif kind == "chr":
                info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
            tar.addfile(info, io.BytesIO(data) if data else None)
    raw = buf.getvalue()
    return gzip.compress(raw, mtime=0) if compress else raw


def put(store: ContentStore, blob: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    store.path(digest).write_bytes(blob)
    return digest


@pytest.fixture
def store(tmp_path: Path) -> ContentStore:
    s = ContentStore(tmp_path / "store")
    s.ensure()
    return s


def unpack(store: ContentStore, tmp_path: Path, *layers: bytes) -> Path:
    return ensure_root(store, [put(store, b) for b in layers], tmp_path / "rootfs")


BASE = layer([("etc", "dir", None), ("etc/passwd", "file", b"root:x:0:0::/root:/bin/sh\n"),
              ("usr/bin/python3", "file", b"py"), ("usr/bin/python", "sym", "python3"),
              ("usr/lib/a", "file", b"a"), ("usr/lib/b", "file", b"b"),
              ("usr/share/doc/x", "file", b"x"), ("opt/old/keep", "file", b"k")])


def test_layers_apply_in_order_with_whiteouts_and_links(store, tmp_path):
    top = layer([("usr/lib/.wh.a", "file", b""),  # remove one file
                 ("opt/old/.wh..wh..opq", "file", b""),  # hide the lower directory's content
                 ("opt/old/new", "file", b"n"),
                 ("usr/bin/py-hard", "hard", "usr/bin/python3"),
                 ("bin", "sym", "usr/bin"),
                 ("usr/bin/abs", "sym", "/usr/bin/python3")])
    root = unpack(store, tmp_path, BASE, top)
    assert not (root / "usr/lib/a").exists() and (root / "usr/lib/b").read_bytes() == b"b"
    assert sorted(os.listdir(root / "opt/old")) == ["new"]
    assert os.readlink(root / "usr/bin/python") == "python3"
    assert os.stat(root / "usr/bin/py-hard").st_ino == os.stat(root / "usr/bin/python3").st_ino
    assert os.readlink(root / "bin") == "usr/bin"
    for mp in ("proc", "dev", "tmp"):  # mount points for the launcher
        assert (root / mp).is_dir()
    assert root.name == root_key([f"sha256:{hashlib.sha256(b).hexdigest()}"
                                  for b in (BASE, top)])
    assert [p.name for p in (tmp_path / "rootfs").iterdir()] == [root.name]  # no temp left


def test_setuid_and_setgid_bits_are_dropped_and_devices_skipped(store, tmp_path):
    root = unpack(store, tmp_path, layer([("usr/bin/su", "mode", 0o4755),
                                          ("usr/bin/wall", "mode", 0o2755),
                                          ("dev/null", "chr", None)], compress=False))
    assert stat.S_IMODE(os.stat(root / "usr/bin/su").st_mode) == 0o755
    assert stat.S_IMODE(os.stat(root / "usr/bin/wall").st_mode) == 0o755
    assert list((root / "dev").iterdir()) == []


def test_a_later_layer_replaces_a_file_with_a_directory_and_back(store, tmp_path):
    root = unpack(store, tmp_path, BASE,
                  layer([("usr/share/doc", "file", b"now a file"), ("usr/lib", "sym", "lib64")]))
    assert (root / "usr/share/doc").read_bytes() == b"now a file"
    assert os.readlink(root / "usr/lib") == "lib64"


UNSAFE = {
    "symlink escape": [layer([("etc", "sym", "../../../host-etc")])],
    "write through a symlink": [layer([("etc", "sym", "/tmp")]),
                                layer([("etc/passwd", "file", b"x")])],
    "dot-dot": [layer([("usr/../../evil", "file", b"x")])],
    "absolute path": [layer([("/etc/evil", "file", b"x")])],
    "whiteout escape": [BASE, layer([("usr/.wh...", "file", b"")])],
    "hard link to outside": [layer([("usr/x", "hard", "../../etc/shadow")])],
}


@pytest.mark.parametrize("case", sorted(UNSAFE))
def test_an_unsafe_layer_is_refused_and_leaves_no_root(store, tmp_path, case):
    outside = tmp_path / "host-etc"
    with pytest.raises(LayerError) as e:
        unpack(store, tmp_path, *UNSAFE[case])
    assert "\n" not in str(e.value) and "refused" in str(e.value)
    assert list((tmp_path / "rootfs").iterdir()) == []  # no root, no temp directory
    assert not outside.exists() and not Path("/tmp/passwd").exists()


def test_a_layer_whose_bytes_do_not_match_its_digest_leaves_no_root(store, tmp_path):
    good = put(store, BASE)
    bad = layer([("etc/passwd", "file", b"evil")])
    store.path(good).write_bytes(bad)  # the blob changed on disk after it was verified
    with pytest.raises(DigestMismatchError) as e:
        ensure_root(store, [good], tmp_path / "rootfs")
    assert "\n" not in str(e.value) and "signed digest" in str(e.value)
    assert list((tmp_path / "rootfs").iterdir()) == []


def test_a_root_is_shared_and_unused_ones_are_removed(store, tmp_path):
    digests = [put(store, BASE)]
    first = ensure_root(store, digests, tmp_path / "rootfs")
    (first / "marker").write_text("same root")
    assert ensure_root(store, digests, tmp_path / "rootfs") == first
    assert (first / "marker").exists()  # not unpacked again
    other = ensure_root(store, [*digests, put(store, layer([("x", "file", b"x")]))],
                        tmp_path / "rootfs")
    remove_unused(tmp_path / "rootfs", {other.name})
    assert not first.exists() and other.is_dir()
