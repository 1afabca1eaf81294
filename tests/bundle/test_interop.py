"""The bundle's image part loads in real tools: skopeo, podman, and docker 20.10."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.bundle import verify_bundle
from appliance.bundle.imagearchive import write_image_archive
from appliance.bundle.store import ContentStore
from signing import TrustRoot
from tests.bundle.conftest import Built
from tests.bundle.kit import NOW, read_entries
from tests.enginekit import containerd, dockerd, podman_service

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


@needs_skopeo
@pytest.mark.parametrize("transport", ["oci-archive", "docker-archive"])
def test_skopeo_inspects_the_front_door_image_as_the_proxy_made_it(door_built: Built,
                                                                   transport: str):
    from tests.bundle.runtimes import proxy_parts

    door = door_built.manifest.frontdoor_image()
    assert door is not None
    doc = skopeo_inspect(f"{transport}:{door_built.path}:{door.reference}")
    assert doc["Layers"] == door.layers
    assert doc["Labels"] == json.loads(proxy_parts()[1])["config"]["Labels"]
    raw = subprocess.run(["skopeo", "inspect", "--config", "--raw",
                          f"{transport}:{door_built.path}:{door.reference}"],
                         check=True, capture_output=True, timeout=60).stdout
    assert "sha256:" + hashlib.sha256(raw).hexdigest() == door.config_digest


@needs_podman
@pytest.mark.engine
def test_podman_load_names_the_front_door_image(door_built: Built, podman_store: Path):
    out = podman(podman_store, "load", "-i", str(door_built.path))
    door = door_built.manifest.frontdoor_image()
    assert door is not None and door.reference in out
    got = podman(podman_store, "image", "inspect", door.reference, "--format", "{{.Id}}")
    assert got.strip() == door.config_digest[7:]
    cfg = podman(podman_store, "image", "inspect", door.reference, "--format",
                 "{{.Config.User}} {{.Config.StopSignal}}")
    assert cfg.split() == ["10002:10002", "SIGUSR1"]


def _archive_from_store(built: Built, root: TrustRoot, tmp_path: Path,
                        digest_names: bool = False) -> Path:
    store = ContentStore(tmp_path / "site")
    verify_bundle(built.path, root, now=NOW, store=store)
    out = tmp_path / "images.tar"
    with open(out, "wb") as f:
        write_image_archive(f, store, built.manifest.images, digest_names=digest_names)
    return out


def test_image_archive_from_store_has_the_bundle_layout(built: Built, root: TrustRoot,
                                                        tmp_path: Path):
    out = _archive_from_store(built, root, tmp_path)
    # Same layout as the bundle's image part: the bundle minus its signed front.
    got = [(e.name, e.data) for e in read_entries(out)]
    assert got == [(e.name, e.data) for e in read_entries(built.path)[2:]]


@needs_skopeo
@pytest.mark.parametrize("digest_names", [False, True])
def test_skopeo_and_podman_accept_the_store_archive(built: Built, root: TrustRoot,
                                                    tmp_path: Path, podman_store: Path,
                                                    digest_names: bool):
    # the extra repo@digest entries (for containerd) leave what podman loads and names alone
    out = _archive_from_store(built, root, tmp_path, digest_names)
    for img in built.manifest.images:
        assert skopeo_inspect(f"oci-archive:{out}:{img.reference}")["Layers"] == img.layers
        assert skopeo_inspect(f"docker-archive:{out}:{img.reference}")["Layers"] == img.layers
    if shutil.which("podman"):
        loaded = podman(podman_store, "load", "-i", str(out))
        assert all(img.reference in loaded for img in built.manifest.images)
        listed = podman(podman_store, "images", "--format", "{{.Repository}}:{{.Tag}}")
        assert sorted(listed.split()) == sorted(f"localhost/{img.reference}"
                                                for img in built.manifest.images)


@pytest.mark.engine
@pytest.mark.slow
@pytest.mark.skipif(shutil.which("dockerd") is None or os.geteuid() != 0,
                    reason="needs dockerd and root")
def test_docker_20_10_loads_the_front_door_image_with_its_own_id(door_built: Built):
    door = door_built.manifest.frontdoor_image()
    assert door is not None
    with dockerd() as host:
        out = subprocess.run(["docker", "-H", host, "load", "-i", str(door_built.path)],
                             check=True, capture_output=True, text=True, timeout=120).stdout
        assert f"Loaded image: {door.reference}" in out.splitlines()
        got = subprocess.run(["docker", "-H", host, "image", "inspect", door.reference,
                              "--format", "{{.Id}}"], check=True, capture_output=True,
                             text=True).stdout.strip()
    assert got == door.config_digest


@pytest.mark.engine
@pytest.mark.slow
@pytest.mark.skipif(shutil.which("dockerd") is None or os.geteuid() != 0,
                    reason="needs dockerd and root")
def test_docker_20_10_load_accepts_the_bundle(built: Built, root: TrustRoot, tmp_path: Path):
    # and the store archive with containerd's digest names, which docker leaves aside
    k3s = _archive_from_store(built, root, tmp_path, digest_names=True)
    with dockerd() as host:
        for archive in (built.path, k3s):
            out = subprocess.run(["docker", "-H", host, "load", "-i", str(archive)],
                                 check=True, capture_output=True, text=True,
                                 timeout=120).stdout
            assert sorted(out.splitlines()) == sorted(f"Loaded image: {img.reference}"
                                                      for img in built.manifest.images)
            for img in built.manifest.images:
                got = subprocess.run(["docker", "-H", host, "image", "inspect", img.reference,
                                      "--format", "{{.Id}}"], check=True, capture_output=True,
                                     text=True).stdout.strip()
                assert got == img.config_digest


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


@pytest.mark.engine
@pytest.mark.slow
@pytest.mark.skipif(shutil.which("containerd") is None or os.geteuid() != 0,
                    reason="needs containerd and root")
def test_ctr_images_import_accepts_the_bundle(built: Built):
    with containerd() as ctrd:
        r = ctrd.import_archive(built.path)
        assert r.returncode == 0, r.stderr
        listed = list(ctrd.images())
    # named as the kubelet's CRI asks for them, not as the plain reference
    assert sorted(listed) == sorted(f"docker.io/{img.reference}"
                                    for img in built.manifest.images)
