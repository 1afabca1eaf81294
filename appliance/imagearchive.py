"""One tar that is both an OCI image layout and a docker-archive, over the same blobs.

`oci-layout` + `index.json` serve podman, skopeo and containerd; Docker's
`manifest.json` (Config, RepoTags, Layers) serves `docker load`. Both point
at `blobs/sha256/<hex>`, so every blob is stored once. The bundle writer uses
the same functions for its image part, and the installer streams a release's
images out of the content store with `write_image_archive`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import BinaryIO

from appliance.bundle.tarfmt import END_OF_ARCHIVE, file_header, padding
from appliance.manifest import Image, image_blobs
from appliance.store import CHUNK, ContentStore, hex_of

OCI_LAYOUT = b'{"imageLayoutVersion":"1.0.0"}\n'
INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"
MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
CONFIG_MEDIA_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar"


def blob_path(digest: str) -> str:
    return f"blobs/sha256/{hex_of(digest)}"


def canonical_json(doc: object) -> bytes:
    """Deterministic JSON bytes: sorted keys, compact, trailing newline."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode("utf-8") + b"\n"


def oci_index(images: Sequence[Image], manifest_size: Callable[[str], int]) -> bytes:
    """index.json naming each image manifest with its full reference."""
    return canonical_json({
        "schemaVersion": 2,
        "mediaType": INDEX_MEDIA_TYPE,
        "manifests": [
            {
                "mediaType": MANIFEST_MEDIA_TYPE,
                "digest": img.manifest_digest,
                "size": manifest_size(img.manifest_digest),
                "annotations": {
                    "io.containerd.image.name": img.reference,
                    "org.opencontainers.image.ref.name": img.reference,
                },
            }
            for img in images
        ],
    })


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
    images: Sequence[Image], manifest_size: Callable[[str], int]
) -> list[tuple[str, bytes]]:
    """The small index members, in bundle order: oci-layout, index.json, manifest.json."""
    return [
        ("oci-layout", OCI_LAYOUT),
        ("index.json", oci_index(images, manifest_size)),
        ("manifest.json", docker_manifest(images)),
    ]


def write_image_archive(out: BinaryIO, store: ContentStore, images: Sequence[Image]) -> None:
    """Stream one OCI-layout + docker-archive tar of `images` from verified store blobs.

    Raises:
        StoreError: a blob the images need is not in the store.
    """
    for name, data in layout_members(images, store.size):
        out.write(file_header(name, len(data)))
        out.write(data)
        out.write(b"\0" * padding(len(data)))
    for digest in image_blobs(images):
        with store.open(digest) as f:
            size = store.size(digest)
            out.write(file_header(blob_path(digest), size))
            left = size
            while left:
                chunk = f.read(min(CHUNK, left))
                if not chunk:
                    raise OSError(f"blob {digest[:19]} shrank while it was read")
                out.write(chunk)
                left -= len(chunk)
            out.write(b"\0" * padding(size))
    out.write(END_OF_ARCHIVE)
