"""Fixtures: signing keys, a trust root, and small real bundles built once per session."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from appliance.bundle.manifest import Manifest
from appliance.bundle.store import ContentStore
from bundler.build import build_bundle
from bundler.spec import load_spec
from signing import PrivateKey, TrustRoot
from tests.bundle.kit import TWO_MODEL_SPEC, make_model_dir, source_date_epoch, write_spec
from tests.bundle.runtimes import docker_archive, proxy_docker_archive


@dataclass(frozen=True)
class Built:
    path: Path
    manifest: Manifest
    spec_dir: Path


@pytest.fixture(scope="session")
def vendor() -> PrivateKey:
    return PrivateKey.generate()


@pytest.fixture(scope="session")
def other_key() -> PrivateKey:
    return PrivateKey.generate()


@pytest.fixture(scope="session")
def root(vendor: PrivateKey) -> TrustRoot:
    return TrustRoot.create([vendor.public_key])


def make_spec_dir(directory: Path, sequence: int = 1, beta: bytes = b"beta-weights" * 50,
                  ) -> Path:
    make_model_dir(directory / "models" / "alpha", "alpha", bytes(range(256)) * 40)
    make_model_dir(directory / "models" / "beta", "beta", beta)
    (directory / "models" / "alpha" / "extra").mkdir(exist_ok=True)
    (directory / "models" / "alpha" / "extra" / "vocab.txt").write_text("a\nb\n")
    return write_spec(directory, TWO_MODEL_SPEC.format(sequence=sequence))


def make_door_spec_dir(directory: Path, sequence: int = 1, beta: bytes = b"beta-weights" * 50,
                       ) -> Path:
    """The two-model spec over the runtime stand-in, carrying the proxy stand-in as
    the front door's image (both docker-archives, sharing the base layer)."""
    spec = make_spec_dir(directory, sequence, beta)
    runtime = docker_archive(directory / "runtime.tar")
    proxy = proxy_docker_archive(directory / "proxy.tar")
    return write_spec(directory, spec.read_text().replace(
        "models:\n", f"runtime_image:\n  archive: {runtime.name}\n"
        f"frontdoor_image:\n  archive: {proxy.name}\nmodels:\n", 1))


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory, vendor: PrivateKey) -> Built:
    """A two-service, two-model weights-only bundle (about 20 KiB)."""
    d = tmp_path_factory.mktemp("built")
    spec_path = make_spec_dir(d)
    with source_date_epoch():
        manifest = build_bundle(load_spec(spec_path), d / "bundle.tar", [vendor])
    return Built(d / "bundle.tar", manifest, d)


@pytest.fixture
def bundle(built: Built, tmp_path: Path) -> Path:
    """A private copy of the session bundle that a test may damage."""
    return Path(shutil.copyfile(built.path, tmp_path / "bundle.tar"))


@pytest.fixture
def store(tmp_path: Path) -> ContentStore:
    return ContentStore(tmp_path / "site")


@pytest.fixture(scope="session")
def door_built(tmp_path_factory: pytest.TempPathFactory, vendor: PrivateKey) -> Built:
    """The session bundle's twin over the runtime stand-in, carrying a front door image."""
    d = tmp_path_factory.mktemp("door")
    spec_path = make_door_spec_dir(d)
    with source_date_epoch():
        manifest = build_bundle(load_spec(spec_path), d / "bundle.tar", [vendor])
    return Built(d / "bundle.tar", manifest, d)
