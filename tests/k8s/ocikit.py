"""A tiny image made by hand (one layer, one file) written as an OCI layout archive.

Only for proving the containerd fixture independently of the bundler's writer.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


@dataclass(frozen=True)
class HandImage:
    manifest: bytes
    config: bytes
    layer: bytes

    @property
    def digest(self) -> str:
        return _sha(self.manifest)

    def blobs(self) -> dict[str, bytes]:
        return {_sha(b): b for b in (self.manifest, self.config, self.layer)}


def hand_image(text: str) -> HandImage:
    """An OCI image whose single layer holds `hello.txt` with `text`."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        _add(t, "hello.txt", text.encode())
    layer = buf.getvalue()
    config = json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/hello"]},
        "rootfs": {"type": "layers", "diff_ids": [_sha(layer)]},
    }, sort_keys=True).encode()
    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": _sha(config), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": _sha(layer), "size": len(layer)}],
    }, sort_keys=True).encode()
    return HandImage(manifest, config, layer)


def write_oci_archive(path: Path, images: dict[str, HandImage],
                      annotation: str = "io.containerd.image.name") -> None:
    """An OCI layout tar naming each image (name -> image) with `annotation`."""
    index = {"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json",
         "digest": img.digest, "size": len(img.manifest),
         "annotations": {annotation: name}}
        for name, img in images.items()]}
    blobs: dict[str, bytes] = {}
    for img in images.values():
        blobs.update(img.blobs())
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as t:
        _add(t, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        _add(t, "index.json", json.dumps(index).encode())
        for digest, data in sorted(blobs.items()):
            _add(t, "blobs/sha256/" + digest.removeprefix("sha256:"), data)
