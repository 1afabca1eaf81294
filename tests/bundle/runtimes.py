"""Tiny images made by code: a docker-archive tar, an OCI layout dir, an OCI tar.

The runtime stand-in has two layers; the front door's proxy stand-in is the runtime's
bottom layer (the shared debootstrap base) plus one layer of its own, like
`images/proxy.py` builds the real one.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path


def _layer(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in sorted(files.items()):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tar.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def runtime_parts() -> tuple[list[bytes], bytes]:
    """Two layers and a config with Cmd, Env, a label and history."""
    layers = [_layer({"app/hello.txt": b"hello from the runtime\n"}),
              _layer({"app/runtime.py": b"print('runtime')\n"})]
    config = json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["python", "-m", "runtime"], "Env": ["PATH=/usr/bin"],
                   "Labels": {"vendor": "test"}},
        "rootfs": {"type": "layers", "diff_ids": [_sha(x) for x in layers]},
        "history": [{"created_by": "layer 1"}, {"created_by": "layer 2"}],
    }, sort_keys=True).encode()
    return layers, config


def proxy_parts() -> tuple[list[bytes], bytes]:
    """The runtime's base layer plus a proxy layer, and a config that is not the bundler's
    kind (no appliance labels, a user, a stop signal, its own key order)."""
    base, _ = runtime_parts()
    layers = [base[0], _layer({"usr/sbin/haproxy": b"#!/bin/sh\necho haproxy stand-in\n"})]
    config = json.dumps({
        "os": "linux", "architecture": "amd64",
        "config": {"Entrypoint": ["/usr/sbin/haproxy"], "Cmd": ["-W", "-db"],
                   "User": "10002:10002", "StopSignal": "SIGUSR1",
                   "Labels": {"org.opencontainers.image.title": "appliance-proxy"}},
        "rootfs": {"type": "layers", "diff_ids": [_sha(x) for x in layers]},
        "history": [{"created_by": "debootstrap"}, {"created_by": "dpkg -i haproxy"}],
    }, indent=1).encode()  # not canonical JSON: the bundle must keep these bytes as they are
    return layers, config


def docker_archive(path: Path) -> Path:
    """What `docker save` writes: manifest.json, config, <hex>/layer.tar."""
    return _docker_archive(path, *runtime_parts())


def proxy_docker_archive(path: Path) -> Path:
    """The proxy stand-in as `make proxy-image` writes it (a docker-archive)."""
    return _docker_archive(path, *proxy_parts(), tag="appliance-proxy:1")


def _docker_archive(path: Path, layers: list[bytes], config: bytes, tag: str = "rt:1") -> Path:
    with tarfile.open(path, "w") as tar:
        def add(name: str, data: bytes) -> None:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tar.addfile(ti, io.BytesIO(data))

        cfg_name = hashlib.sha256(config).hexdigest() + ".json"
        add(cfg_name, config)
        names = []
        for data in layers:
            name = hashlib.sha256(data).hexdigest() + "/layer.tar"
            add(name, data)
            names.append(name)
        add("manifest.json", json.dumps([{"Config": cfg_name, "RepoTags": [tag],
                                          "Layers": names}]).encode())
    return path


def oci_layout(directory: Path) -> Path:
    return _oci_layout(directory, *runtime_parts())


def proxy_oci_layout(directory: Path) -> Path:
    """The proxy stand-in as an OCI layout (its manifest is not canonical JSON either)."""
    return _oci_layout(directory, *proxy_parts())


def _oci_layout(directory: Path, layers: list[bytes], config: bytes) -> Path:
    blobs = directory / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    for data in (*layers, config):
        (blobs / _sha(data)[7:]).write_bytes(data)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": _sha(config), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": _sha(x), "size": len(x)} for x in layers],
    }).encode()
    (blobs / _sha(manifest)[7:]).write_bytes(manifest)
    (directory / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (directory / "index.json").write_text(json.dumps({
        "schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": _sha(manifest), "size": len(manifest),
            "platform": {"os": "linux", "architecture": "amd64"}}]}))
    return directory


def oci_tar(directory: Path, path: Path) -> Path:
    layout = oci_layout(directory)
    with tarfile.open(path, "w") as tar:
        for p in sorted(layout.rglob("*")):
            if p.is_file():
                tar.add(p, p.relative_to(layout).as_posix())
    return path


def gzip_docker_archive(path: Path) -> Path:
    """A docker-archive whose layers are gzip'd (as some tools save them)."""
    return _gzip_docker_archive(path, *runtime_parts())


def gzip_proxy_docker_archive(path: Path) -> Path:
    """The proxy stand-in with gzip'd layers: its base layer's bytes are the gzip runtime's."""
    return _gzip_docker_archive(path, *proxy_parts())


def _gzip_docker_archive(path: Path, layers: list[bytes], config: bytes) -> Path:
    import gzip

    with tarfile.open(path, "w") as tar:
        def add(name: str, data: bytes) -> None:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tar.addfile(ti, io.BytesIO(data))

        add("config.json", config)
        names = []
        for i, data in enumerate(layers):
            add(f"layer{i}.tar.gz", gzip.compress(data, mtime=0))
            names.append(f"layer{i}.tar.gz")
        add("manifest.json", json.dumps([{"Config": "config.json", "RepoTags": ["rt:1"],
                                          "Layers": names}]).encode())
    return path
