"""The image archive k3s imports from /var/lib/rancher/k3s/agent/images/: an OCI layout tar.

containerd (`ctr images import`, and k3s at agent start) reads a tar holding an
`oci-layout` file as an OCI layout and names each image only from the
`io.containerd.image.name` annotation in `index.json`; a `manifest.json` beside
it is ignored. So every image is listed twice, under the two names a pod can ask
for once the kubelet's CRI has normalized them:

    docker.io/appliance/demo-mlp:1.0.0                  (the tag)
    docker.io/appliance/demo-mlp@sha256:<manifest>      (what rendered pods use)

CRI adds the digest name itself only when it pulls; k3s releases before late
2025 do not add it on import, and a pinned pod with `imagePullPolicy: Never`
would not start. Blobs are streamed from the verified content store and hashed
again on the way out, so a blob corrupted on disk since ingest stops the write.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Sequence
from typing import Any, BinaryIO

from appliance.errors import StoreError
from appliance.k8s.names import pinned_reference, tagged_reference
from appliance.manifest import Image
from appliance.store import ContentStore, hex_of

NAME_ANNOTATION = "io.containerd.image.name"
REF_ANNOTATION = "org.opencontainers.image.ref.name"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MAX_IMAGE_MANIFEST_BYTES = 4 * 1024 * 1024
ARCHIVE_SUFFIX = ".tar"  # k3s imports *.tar as is (also .tar.gz/.zst, which cost CPU)


def archive_name(name: str, sequence: int) -> str:
    """The archive's file name in the k3s images directory: one per release."""
    return f"appliance-{name}-{sequence}{ARCHIVE_SUFFIX}"


class _HashingReader:
    """Reads a stored blob for tarfile and checks its sha256 once it is all read."""

    def __init__(self, f: BinaryIO, digest: str) -> None:
        self._f = f
        self._digest = digest
        self._hash = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self._hash.update(data)
        return data

    def check(self) -> None:
        if self._hash.hexdigest() != hex_of(self._digest):
            raise StoreError(
                f"stored blob {self._digest[:19]} no longer matches its digest; "
                "verify the bundle into the store again"
            )


def _platform(platform: str) -> dict[str, str]:
    parts = platform.split("/")
    out = {"os": parts[0], "architecture": parts[1] if len(parts) > 1 else ""}
    if len(parts) > 2:
        out["variant"] = parts[2]
    return out


def _media_type(store: ContentStore, image: Image) -> str:
    with store.open(image.manifest_digest) as f:
        data = f.read(MAX_IMAGE_MANIFEST_BYTES + 1)
    if len(data) > MAX_IMAGE_MANIFEST_BYTES:
        raise StoreError(f"image manifest {image.manifest_digest[:19]} is implausibly large")
    try:
        doc = json.loads(data)
    except ValueError as e:
        raise StoreError(f"image manifest {image.manifest_digest[:19]} is not JSON") from e
    media = doc.get("mediaType") if isinstance(doc, dict) else None
    return media if isinstance(media, str) else OCI_MANIFEST


def index_for(store: ContentStore, images: Sequence[Image], platform: str) -> dict[str, Any]:
    """The OCI index naming each image by its tag and by its digest.

    Raises:
        StoreError: an image manifest is not in the store or is not JSON.
        ManifestError: an image reference is not a valid reference.
    """
    manifests: list[dict[str, Any]] = []
    for image in images:
        base = {
            "mediaType": _media_type(store, image),
            "digest": image.manifest_digest,
            "size": store.size(image.manifest_digest),
            "platform": _platform(platform),
        }
        tagged = tagged_reference(image.reference)
        manifests.append({**base, "annotations": {
            NAME_ANNOTATION: tagged, REF_ANNOTATION: tagged.rsplit(":", 1)[1]}})
        manifests.append({**base, "annotations": {
            NAME_ANNOTATION: pinned_reference(image.reference, image.manifest_digest)}})
    return {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": manifests}


def _info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def write_k3s_archive(out: BinaryIO, store: ContentStore, images: Sequence[Image],
                      platform: str) -> None:
    """Stream one OCI layout tar of `images` from `store` to `out`, deterministically.

    Raises:
        StoreError: a blob is missing from the store or no longer matches its digest.
        ManifestError: an image reference is not a valid reference.
    """
    index = json.dumps(index_for(store, images, platform), sort_keys=True).encode()
    blobs = sorted({d for img in images
                    for d in (img.manifest_digest, img.config_digest, *img.layers)})
    for digest in blobs:
        if not store.has(digest):
            raise StoreError(f"blob {digest[:19]} is not in the store {store.root}; "
                             "verify the bundle (and its delta base) into it first")
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        layout = b'{"imageLayoutVersion":"1.0.0"}'
        for name, data in (("oci-layout", layout), ("index.json", index)):
            tar.addfile(_info(name, len(data)), io.BytesIO(data))
        for digest in blobs:
            with store.open(digest) as f:
                reader = _HashingReader(f, digest)
                try:
                    tar.addfile(_info(f"blobs/sha256/{hex_of(digest)}", store.size(digest)),
                                reader)
                except OSError as e:  # the blob shrank while it was read
                    raise StoreError(f"cannot read blob {digest[:19]} from the store: {e}") from e
                reader.check()

