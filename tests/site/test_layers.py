"""Safe extraction of model files from layer blobs in the content store."""

from __future__ import annotations

import hashlib
import io
import tarfile

import pytest

from appliance.bundle.layers import extract_model
from appliance.bundle.store import ContentStore
from appliance.errors import LayerError


def add_layer(store: ContentStore, entries: list[tarfile.TarInfo | tuple[str, bytes]]) -> str:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for e in entries:
            if isinstance(e, tarfile.TarInfo):
                tar.addfile(e)
            else:
                info = tarfile.TarInfo(e[0])
                info.size = len(e[1])
                tar.addfile(info, io.BytesIO(e[1]))
    data = buf.getvalue()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with store.ingest(digest, len(data)) as w:
        w.write(data)
    return digest


def good_entries() -> list:
    d = tarfile.TarInfo("models/mlp/1")
    d.type = tarfile.DIRTYPE
    return [d, ("models/mlp/1/model.json", b'{"name":"mlp"}'),
            ("models/mlp/1/model.onnx", b"\x08\x01weights"),
            ("models/mlp/1/sub/extra.bin", b"x" * 3000),
            ("models/other/1/model.json", b"{}")]


def test_extracts_only_the_named_model(tmp_path):
    store = ContentStore(tmp_path / "site")
    digest = add_layer(store, good_entries())
    dest = tmp_path / "out" / "mlp" / "1"
    n = extract_model(store, digest, "models/mlp/1", dest)
    assert n == len(b'{"name":"mlp"}') + len(b"\x08\x01weights") + 3000
    assert (dest / "model.onnx").read_bytes() == b"\x08\x01weights"
    assert (dest / "sub" / "extra.bin").stat().st_size == 3000
    assert not (tmp_path / "out" / "other").exists()


def test_re_extraction_replaces_the_directory_whole(tmp_path):
    store = ContentStore(tmp_path / "site")
    digest = add_layer(store, good_entries())
    dest = tmp_path / "out" / "mlp"
    dest.mkdir(parents=True)
    (dest / "stale.txt").write_text("old")
    extract_model(store, digest, "models/mlp/1", dest)
    assert not (dest / "stale.txt").exists() and (dest / "model.json").is_file()


def _link(name: str, kind: bytes, target: str = "/etc/passwd") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


@pytest.mark.parametrize("bad,match", [
    (_link("models/mlp/1/evil", tarfile.SYMTYPE), "is a link"),
    (_link("models/mlp/1/hard", tarfile.LNKTYPE, "models/mlp/1/model.json"), "is a link"),
    (_link("models/mlp/1/dev", tarfile.CHRTYPE), "device"),
    (_link("models/mlp/1/fifo", tarfile.FIFOTYPE), "device or FIFO"),
    (("/models/mlp/1/abs", b"x"), "absolute path"),
    (("models/mlp/1/../../../escape", b"x"), r"'\.\.'"),
    (("models/mlp/1/.wh.model.onnx", b""), "whiteout"),
    (_link("elsewhere/link", tarfile.SYMTYPE), "is a link"),
])
def test_unsafe_member_anywhere_refuses_the_layer(tmp_path, bad, match):
    store = ContentStore(tmp_path / "site")
    digest = add_layer(store, [*good_entries(), bad])
    dest = tmp_path / "out" / "mlp"
    with pytest.raises(LayerError, match=match):
        extract_model(store, digest, "models/mlp/1", dest)
    assert not dest.exists()
    assert not (tmp_path / "escape").exists()
    assert list((tmp_path / "out").iterdir()) == []


def test_layer_without_model_json_is_refused(tmp_path):
    store = ContentStore(tmp_path / "site")
    digest = add_layer(store, [("models/mlp/1/model.onnx", b"w")])
    with pytest.raises(LayerError, match=r"no models/mlp/1/model\.json"):
        extract_model(store, digest, "models/mlp/1", tmp_path / "out")


def test_blob_that_is_not_a_tar_is_refused(tmp_path):
    store = ContentStore(tmp_path / "site")
    digest = store.add_bytes(b"not a tar at all" * 100)
    with pytest.raises(LayerError, match="not a readable tar"):
        extract_model(store, digest, "models/mlp/1", tmp_path / "out")
