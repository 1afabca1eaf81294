"""The k3s image archive (write_image_archive with digest names) imports into a real containerd
under the names rendered pods use."""

from __future__ import annotations

import dataclasses
import io
import tarfile
from pathlib import Path

import pytest

from appliance.bundle.imagearchive import write_image_archive
from appliance.bundle.manifest import Image
from appliance.bundle.store import ContentStore
from appliance.errors import StoreError
from appliance.k8s import RenderOptions, render
from appliance.k8s.names import archive_name
from tests.k8s.conftest import Containerd
from tests.k8s.manifests import MANIFEST_DIGEST, make_manifest
from tests.k8s.ocikit import HandImage, hand_image


def stored(store: ContentStore, name: str, hand: HandImage) -> Image:
    """Put a hand-made image's blobs in the store and describe it as the manifest would."""
    for data in hand.blobs().values():
        store.add_bytes(data)
    config, layer = (d for d, b in hand.blobs().items() if b is not hand.manifest)
    return Image(name=name, reference=f"appliance/demo-{name}:1.0.0",
                 manifest_digest=hand.digest, config_digest=config, layers=[layer])


@pytest.fixture
def store(tmp_path: Path) -> ContentStore:
    return ContentStore(tmp_path / "store")


def test_archive_imports_with_the_manifest_digests_under_tag_and_digest_names(
    containerd: Containerd, store: ContentStore, tmp_path: Path
) -> None:
    images = [stored(store, "mlp", hand_image("mlp weights")),
              stored(store, "cnn", hand_image("cnn weights"))]
    archive = tmp_path / archive_name("demo", 3)
    with open(archive, "wb") as f:
        write_image_archive(f, store, images, digest_names=True)
    r = containerd.import_archive(archive)
    assert r.returncode == 0, r.stderr
    want = {}
    for img in images:
        want[f"docker.io/appliance/demo-{img.name}:1.0.0"] = img.manifest_digest
        want[f"docker.io/appliance/demo-{img.name}@{img.manifest_digest}"] = img.manifest_digest
    assert containerd.images() == want


def test_rendered_pods_ask_for_names_the_imported_archive_holds(
    containerd: Containerd, store: ContentStore, tmp_path: Path
) -> None:
    images = [stored(store, "mlp", hand_image("mlp")), stored(store, "cnn", hand_image("cnn"))]
    manifest = dataclasses.replace(make_manifest(), images=images)
    manifest.validate()
    archive = tmp_path / "a.tar"
    with open(archive, "wb") as f:
        write_image_archive(f, store, manifest.images, digest_names=True)
    assert containerd.import_archive(archive).returncode == 0
    held = containerd.images()
    files = render(manifest, RenderOptions(MANIFEST_DIGEST))
    pod_images = [line.split("image: ", 1)[1] for text in files.values()
                  for line in text.splitlines() if line.strip().startswith("image: ")]
    assert len(pod_images) == 2
    for ref in pod_images:
        digest = ref.split("@")[1]
        assert held[ref] == digest  # CRI resolves exactly this name with pull policy Never


def test_archive_is_deterministic_and_names_blobs_once(store: ContentStore) -> None:
    shared = hand_image("same")
    images = [stored(store, "a", shared), stored(store, "b", shared)]
    one, two = io.BytesIO(), io.BytesIO()
    write_image_archive(one, store, images, digest_names=True)
    write_image_archive(two, store, images, digest_names=True)
    assert one.getvalue() == two.getvalue()
    with tarfile.open(fileobj=io.BytesIO(one.getvalue())) as t:
        names = t.getnames()
        assert all(m.mtime == 0 and m.uid == 0 and m.isfile() for m in t.getmembers())
    assert names[:3] == ["oci-layout", "index.json", "manifest.json"]
    assert len(names) == len(set(names)) == 3 + 3


def test_a_blob_corrupted_in_the_store_stops_the_write(store: ContentStore) -> None:
    img = stored(store, "mlp", hand_image("weights"))
    layer = store.path(img.layers[0])
    layer.write_bytes(layer.read_bytes().replace(b"weights", b"WEIGHTS"))
    with pytest.raises(StoreError, match="no longer matches"):
        write_image_archive(io.BytesIO(), store, [img], digest_names=True)


def test_a_blob_missing_from_the_store_is_named_before_writing(store: ContentStore) -> None:
    img = stored(store, "mlp", hand_image("weights"))
    store.path(img.config_digest).unlink()
    out = io.BytesIO()
    with pytest.raises(StoreError, match=f"blob {img.config_digest[:19]} is not in the store"):
        write_image_archive(out, store, [img], digest_names=True)
    assert out.getvalue() == b""
