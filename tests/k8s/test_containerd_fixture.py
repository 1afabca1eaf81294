"""The containerd fixture itself, on an image made by hand: imports keep names and digests."""

from __future__ import annotations

from pathlib import Path

from tests.k8s.conftest import Containerd
from tests.k8s.ocikit import hand_image, write_oci_archive


def test_import_of_a_hand_made_oci_archive_keeps_its_manifest_digest(
    containerd: Containerd, tmp_path: Path
) -> None:
    img = hand_image("hello")
    archive = tmp_path / "hand.tar"
    write_oci_archive(archive, {"docker.io/appliance/hand:1": img,
                                f"docker.io/appliance/hand@{img.digest}": img})
    r = containerd.import_archive(archive)
    assert r.returncode == 0, r.stderr
    assert containerd.images() == {
        "docker.io/appliance/hand:1": img.digest,
        f"docker.io/appliance/hand@{img.digest}": img.digest,
    }


def test_ctr_import_does_not_verify_blob_names_so_the_site_must(
    containerd: Containerd, tmp_path: Path
) -> None:
    """containerd files a blob under the hash of its bytes, not the name in the tar.

    A corrupted layer is not refused at import: the image name is recorded and
    points at content that is not there (only unpacking notices). So containerd is
    no verifier; `appliance` verifies the bundle before anything reaches a node.
    """
    img = hand_image("payload-7f3a")
    archive = tmp_path / "hand.tar"
    write_oci_archive(archive, {"docker.io/appliance/hand:1": img})
    archive.write_bytes(archive.read_bytes().replace(b"payload-7f3a", b"payload-0000"))
    r = containerd.import_archive(archive)
    assert r.returncode != 0 and "not found" in r.stderr
    assert containerd.images() == {"docker.io/appliance/hand:1": img.digest}
    layer_digest = next(d for d, b in img.blobs().items() if b == img.layer)
    assert layer_digest not in containerd.ctr("content", "ls", "-q").stdout.split()
