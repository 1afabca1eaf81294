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
