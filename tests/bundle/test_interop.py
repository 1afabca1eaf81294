"""The bundle's image part loads in real tools: skopeo, podman, and docker 20.10."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.bundle import verify_bundle
from appliance.imagearchive import write_image_archive
from appliance.store import ContentStore
from signing import TrustRoot
from tests.bundle.conftest import Built
from tests.bundle.kit import NOW, read_entries

needs_skopeo = pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo not installed")
needs_podman = pytest.mark.skipif(shutil.which("podman") is None, reason="podman not installed")


def skopeo_inspect(ref: str) -> dict:
    out = subprocess.run(["skopeo", "inspect", ref], check=True, capture_output=True,
                         text=True, timeout=60)
    return json.loads(out.stdout)


@pytest.fixture
def podman_store() -> Iterator[Path]:
    """A private podman storage (short path: podman caps the runroot at 50 characters)."""
    d = Path(tempfile.mkdtemp(prefix="bpm", dir="/tmp"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def podman(storage: Path, *args: str) -> str:
    """podman on its own storage, so tests never touch the host's images."""
    cmd = ["podman", "--root", str(storage / "root"), "--runroot", str(storage / "run"),
           "--storage-driver", "vfs", *args]
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=120).stdout


@needs_skopeo
@pytest.mark.parametrize("transport", ["oci-archive", "docker-archive"])
def test_skopeo_inspects_every_image_of_the_bundle(built: Built, transport: str):
    for img in built.manifest.images:
        doc = skopeo_inspect(f"{transport}:{built.path}:{img.reference}")
        assert doc["Layers"] == img.layers
        assert doc["Labels"]["appliance.service"] == img.name
        if transport == "oci-archive":
            assert doc["Digest"] == img.manifest_digest


@needs_podman
@pytest.mark.engine
def test_podman_load_accepts_the_bundle(built: Built, podman_store: Path):
    out = podman(podman_store, "load", "-i", str(built.path))
    for img in built.manifest.images:
        assert img.reference in out
    listed = podman(podman_store, "images", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}")
    for img in built.manifest.images:
        line = next(x for x in listed.splitlines() if x.split()[0].endswith(img.reference))
        assert img.config_digest[7:].startswith(line.split()[1])


def _archive_from_store(built: Built, root: TrustRoot, tmp_path: Path) -> Path:
    store = ContentStore(tmp_path / "site")
    verify_bundle(built.path, root, now=NOW, store=store)
    out = tmp_path / "images.tar"
    with open(out, "wb") as f:
        write_image_archive(f, store, built.manifest.images)
    return out


def test_image_archive_from_store_has_the_bundle_layout(built: Built, root: TrustRoot,
                                                        tmp_path: Path):
    out = _archive_from_store(built, root, tmp_path)
    # Same layout as the bundle's image part: the bundle minus its signed front.
    got = [(e.name, e.data) for e in read_entries(out)]
    assert got == [(e.name, e.data) for e in read_entries(built.path)[2:]]


@needs_skopeo
def test_skopeo_and_podman_accept_the_store_archive(built: Built, root: TrustRoot,
                                                    tmp_path: Path, podman_store: Path):
    out = _archive_from_store(built, root, tmp_path)
    for img in built.manifest.images:
        assert skopeo_inspect(f"oci-archive:{out}:{img.reference}")["Layers"] == img.layers
        assert skopeo_inspect(f"docker-archive:{out}:{img.reference}")["Layers"] == img.layers
    if shutil.which("podman"):
        loaded = podman(podman_store, "load", "-i", str(out))
        assert all(img.reference in loaded for img in built.manifest.images)


@contextlib.contextmanager
def dockerd(tmp: Path) -> Iterator[str]:
    """A private dockerd 20.10 on a unix socket, stopped afterwards."""
    sock = tmp / "d.sock"
    with open(tmp / "dockerd.log", "wb") as log:
        proc = subprocess.Popen(
            ["dockerd", "--iptables=false", "--bridge=none", "-H", f"unix://{sock}",
             "--data-root", str(tmp / "data"), "--exec-root", str(tmp / "exec"),
             "--pidfile", str(tmp / "d.pid")], stdout=subprocess.DEVNULL, stderr=log)
    host = f"unix://{sock}"
    try:
        deadline = time.monotonic() + 60
        while subprocess.run(["docker", "-H", host, "info"], capture_output=True).returncode:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.skip(f"dockerd did not start: {(tmp / 'dockerd.log').read_text()[-300:]}")
            time.sleep(0.2)  # polling the daemon's readiness with a deadline
        yield host
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


@pytest.mark.engine
@pytest.mark.slow
@pytest.mark.skipif(shutil.which("dockerd") is None or os.geteuid() != 0,
                    reason="needs dockerd and root")
def test_docker_20_10_load_accepts_the_bundle(built: Built, tmp_path: Path):
    with dockerd(tmp_path) as host:
        out = subprocess.run(["docker", "-H", host, "load", "-i", str(built.path)],
                             check=True, capture_output=True, text=True, timeout=120).stdout
        for img in built.manifest.images:
            assert f"Loaded image: {img.reference}" in out
            got = subprocess.run(["docker", "-H", host, "image", "inspect", img.reference,
                                  "--format", "{{.Id}}"], check=True, capture_output=True,
                                 text=True).stdout.strip()
            assert got == img.config_digest


@contextlib.contextmanager
def podman_service(storage: Path) -> Iterator[str]:
    """Podman's Docker-compatible API on a private socket, for the docker SDK."""
    sock = storage / "api.sock"
    with open(storage / "service.log", "wb") as log:
        proc = subprocess.Popen(
            ["podman", "--root", str(storage / "root"), "--runroot", str(storage / "run"),
             "--storage-driver", "vfs", "system", "service", "--time=0", f"unix://{sock}"],
            stdout=subprocess.DEVNULL, stderr=log)
    try:
        deadline = time.monotonic() + 30
        while not sock.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.skip("podman system service did not start")
            time.sleep(0.05)  # polling for the socket with a deadline
        yield f"unix://{sock}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@needs_podman
@pytest.mark.engine
@pytest.mark.slow
def test_runtime_image_from_an_engine_via_the_docker_sdk(tmp_path: Path, podman_store: Path,
                                                         vendor, root: TrustRoot,
                                                         monkeypatch: pytest.MonkeyPatch):
    from bundler.build import build_bundle
    from bundler.spec import load_spec
    from tests.bundle.conftest import make_spec_dir
    from tests.bundle.kit import write_spec
    from tests.bundle.runtimes import docker_archive, runtime_parts

    podman(podman_store, "load", "-i", str(docker_archive(tmp_path / "rt.tar")))
    spec = make_spec_dir(tmp_path / "spec")
    write_spec(tmp_path / "spec", spec.read_text().replace(
        "models:\n", "runtime_image:\n  engine: localhost/rt:1\nmodels:\n", 1))
    with podman_service(podman_store) as host:
        monkeypatch.setenv("DOCKER_HOST", host)
        m = build_bundle(load_spec(spec), tmp_path / "b.tar", [vendor])
    verify_bundle(tmp_path / "b.tar", root, now=m.created_at)
    layers, _ = runtime_parts()
    assert m.image("svc-a").layers[:2] == ["sha256:" + hashlib.sha256(x).hexdigest()
                                           for x in layers]
    assert not list(tmp_path.glob(".bundle-*")), "the saved engine image is cleaned up"


@contextlib.contextmanager
def containerd(tmp: Path) -> Iterator[str]:
    """A private containerd (CRI off) on its own socket, for `ctr images import`."""
    sock = tmp / "c.sock"
    config = tmp / "config.toml"
    config.write_text(f'version = 2\nroot = "{tmp}/root"\nstate = "{tmp}/state"\n'
                      f'[grpc]\n  address = "{sock}"\n'
                      '[plugins."io.containerd.grpc.v1.cri"]\n  disable = true\n')
    with open(tmp / "containerd.log", "wb") as log:
        proc = subprocess.Popen(["containerd", "--config", str(config)],
                                stdout=subprocess.DEVNULL, stderr=log)
    try:
        deadline = time.monotonic() + 30
        while subprocess.run(["ctr", "-a", str(sock), "version"],
                             capture_output=True).returncode:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.skip("containerd did not start")
            time.sleep(0.1)  # polling the daemon's readiness with a deadline
        yield str(sock)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.engine
@pytest.mark.slow
@pytest.mark.skipif(shutil.which("containerd") is None or os.geteuid() != 0,
                    reason="needs containerd and root")
def test_ctr_images_import_accepts_the_bundle(built: Built):
    with tempfile.TemporaryDirectory(prefix="bctd", dir="/tmp") as d, \
            containerd(Path(d)) as sock:
        subprocess.run(["ctr", "-a", sock, "images", "import", str(built.path)], check=True,
                       capture_output=True, timeout=120)
        listed = subprocess.run(["ctr", "-a", sock, "images", "ls", "-q"], check=True,
                                capture_output=True, text=True).stdout.split()
    assert sorted(listed) == sorted(img.reference for img in built.manifest.images)
