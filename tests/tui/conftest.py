"""Fixtures for the installer screens: a site with the process engine, media, keys."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from signing import PrivateKey
from tests.site.releasekit import free_port_pair
from tests.tui.kit import Rig, key, make_rig


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # Textual runs on asyncio


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = make_rig(tmp_path)
    yield r
    r.stop_all()


@pytest.fixture
def vendor_key() -> PrivateKey:
    return key(1)


@pytest.fixture
def port() -> int:
    return free_port_pair()
