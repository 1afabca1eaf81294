"""One tar that is both an OCI image layout and a docker-archive, over the same blobs.

Written by hand because no library writes both indexes over one set of blobs,
streamed from the store, with the same bytes for the same inputs.

`oci-layout` + `index.json` serve podman, skopeo and containerd; Docker's
`manifest.json` (Config, RepoTags, Layers) serves `docker load`. Both point
at `blobs/sha256/<hex>`, so every blob is stored once. The bundle writer uses
the same functions for its image part; the installer's docker engine streams a
release's images out of the content store with `image_archive_chunks`, the k3s
air-gap archive writes them with `write_image_archive`, and a local podman loads
them from a layout of links whose `index.json` is `oci_index`.

Names: docker reads `RepoTags` and podman and skopeo read
`org.opencontainers.image.ref.name`, both the plain reference
(`appliance/demo-mlp:1.0.0`). containerd (`ctr images import`, k3s) names an
image only from `io.containerd.image.name`, and the kubelet asks for the name
its CRI normalised (`docker.io/appliance/demo-mlp:1.0.0`), so that annotation
holds the normalised one. With `digest_names`, each image is listed once more
as `docker.io/appliance/demo-mlp@sha256:<manifest>`, the name a digest-pinned
pod asks for: CRI adds it itself only when it pulls, and k3s releases before
late 2025 do not add it on import.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from typing import Any, BinaryIO

from appliance.bundle.imageref import pinned_reference, tagged_reference
from appliance.bundle.manifest import Image, image_blobs
from appliance.bundle.store import CHUNK, ContentStore, hex_of
from appliance.bundle.tarfmt import END_OF_ARCHIVE, file_header, padding
from appliance.errors import StoreError

OCI_LAYOUT = b'{"imageLayoutVersion":"1.0.0"}\n'
INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"
MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
CONFIG_MEDIA_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar"
CONTAINERD_NAME = "io.containerd.image.name"
REF_NAME = "org.opencontainers.image.ref.name"


def blob_path(digest: str) -> str:
    return f"blobs/sha256/{hex_of(digest)}"


def canonical_json(doc: object) -> bytes:
    """Deterministic JSON bytes: sorted keys, compact, trailing newline."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode("utf-8") + b"\n"


def oci_index(images: Sequence[Image], manifest_size: Callable[[str], int], *,
              digest_names: bool = False) -> bytes:
    """index.json naming each image manifest by its reference (and, asked, its digest).

    Raises:
        ManifestError: an image reference is not a valid reference.
    """
    manifests: list[dict[str, Any]] = []
    for img in images:
        desc = {"mediaType": MANIFEST_MEDIA_TYPE, "digest": img.manifest_digest,
                "size": manifest_size(img.manifest_digest)}
        manifests.append({**desc, "annotations": {
            CONTAINERD_NAME: tagged_reference(img.reference), REF_NAME: img.reference}})
        if digest_names:
            manifests.append({**desc, "annotations": {
                CONTAINERD_NAME: pinned_reference(img.reference, img.manifest_digest)}})
    return canonical_json({"schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE,
                           "manifests": manifests})


def docker_manifest(images: Sequence[Image]) -> bytes:
    """Docker's manifest.json: Config and Layers as paths into blobs/."""
    return canonical_json([
        {
            "Config": blob_path(img.config_digest),
            "RepoTags": [img.reference],
            "Layers": [blob_path(d) for d in img.layers],
        }
        for img in images
    ])


def layout_members(
    images: Sequence[Image], manifest_size: Callable[[str], int], *, digest_names: bool = False
) -> list[tuple[str, bytes]]:
    """The small index members, in bundle order: oci-layout, index.json, manifest.json."""
    return [
        ("oci-layout", OCI_LAYOUT),
        ("index.json", oci_index(images, manifest_size, digest_names=digest_names)),
        ("manifest.json", docker_manifest(images)),
    ]


def image_archive_chunks(store: ContentStore, images: Sequence[Image], *,
                         digest_names: bool = False) -> Iterator[bytes]:
    """The bytes of one OCI-layout + docker-archive tar of `images`, from store blobs.

    Every blob is hashed again on the way out, so one damaged on disk since it was
    verified stops the archive before its end-of-archive marker: a consumer never
    sees a complete archive holding it. `digest_names` adds the `repo@digest` names
    containerd needs (see the module docstring). A blob missing from the store is
    found here, before the first chunk; a damaged one as the iterator reaches it.

    Raises:
        StoreError: a blob the images need is not in the store, or (while iterating)
            no longer matches its digest.
        ManifestError: an image reference is not a valid reference.
    """
    blobs = image_blobs(images)
    for digest in blobs:
        if not store.has(digest):
            raise StoreError(f"blob {digest[:19]} is not in the store {store.root}; "
                             "verify the bundle (and its delta base) into it first")
    members = layout_members(images, store.size, digest_names=digest_names)
    return _chunks(store, members, blobs)


def _chunks(store: ContentStore, members: list[tuple[str, bytes]],
            blobs: list[str]) -> Iterator[bytes]:
    for name, data in members:
        yield file_header(name, len(data)) + data + b"\0" * padding(len(data))
    for digest in blobs:
        yield from _blob_chunks(store, digest)
    yield END_OF_ARCHIVE


def _blob_chunks(store: ContentStore, digest: str) -> Iterator[bytes]:
    h = hashlib.sha256()
    with store.open(digest) as f:
        size = store.size(digest)
        yield file_header(blob_path(digest), size)
        left = size
        while left:
            chunk = f.read(min(CHUNK, left))
            if not chunk:
                raise StoreError(f"stored blob {digest[:19]} shrank while it was read; "
                                 "verify the bundle into the store again")
            h.update(chunk)
            left -= len(chunk)
            if left:
                yield chunk
    if h.hexdigest() != hex_of(digest):
        raise StoreError(f"stored blob {digest[:19]} no longer matches its digest; "
                         "verify the bundle into the store again")
    yield chunk + b"\0" * padding(size) if size else b""


def write_image_archive(out: BinaryIO, store: ContentStore, images: Sequence[Image], *,
                        digest_names: bool = False) -> None:
    """Write `image_archive_chunks` to `out` (see there; it raises the same errors)."""
    for chunk in image_archive_chunks(store, images, digest_names=digest_names):
        out.write(chunk)
