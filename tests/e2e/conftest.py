"""Session fixtures for the lifecycle: the runtime image (built once, cached by input hash),
and the vendor's signed bundles (engine sockets come from tests/conftest.py)."""

from __future__ import annotations

import os
import random
import secrets
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.kit import Release, Vendor
from tests.enginekit import need

ARCHIVE_ENV = "APPLIANCE_E2E_RUNTIME_ARCHIVE"  # a prebuilt torch runtime image tar, to iterate


@pytest.fixture(scope="session")
def runtime_archive() -> Path:
    """out/runtime-image-torch.tar from images.build (seconds when its inputs are unchanged)."""
    given = os.environ.get(ARCHIVE_ENV)
    if given:
        return Path(given)
    need("podman")
    from images.build import build_runtime_image
    return build_runtime_image("torch").archive


def free_ports() -> int:
    """A port p with p, p+1 (two services) and p+100, p+101 (the other slot) free now.

    Taken below the kernel's ephemeral range: a port from that range can be handed to
    some client's outgoing connection between this check and the release's start.
    """
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    rng = random.Random()
    for _ in range(200):
        p = rng.randrange(max(1024, low - 12000), low - 200)
        try:
            for q in (p, p + 1, p + 100, p + 101):
                with socket.socket() as s:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    s.bind(("0.0.0.0", q))
        except OSError:
            continue
        return p
    raise RuntimeError("no free port block found")


@pytest.fixture(scope="session")
def vendor(tmp_path_factory: pytest.TempPathFactory, runtime_archive: Path) -> Iterator[Vendor]:
    work = tmp_path_factory.mktemp("vendor")
    yield Vendor(work, f"e2e-{secrets.token_hex(3)}", free_ports(), runtime_archive)
    shutil.rmtree(work, ignore_errors=True)  # about 2 GB of bundles


@pytest.fixture(scope="session")
def bundles(vendor: Vendor) -> dict[int, Release]:
    """1: both models; 2: delta, new MLP weights; 3: delta whose MLP cannot load;
    4: delta with other MLP weights (the tests corrupt a copy of it)."""
    vendor.build(1, mlp_seed=0, torch_seed=0)
    vendor.build(2, mlp_seed=1, torch_seed=0, base=1)
    vendor.build(3, mlp_seed=1, torch_seed=0, base=2, broken=True)
    vendor.build(4, mlp_seed=2, torch_seed=0, base=2)
    return vendor.releases
