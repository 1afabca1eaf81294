"""Fixtures of the install tests: a process-engine site and a free pair of ports."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.site.bundlekit import vendor
from tests.site.installkit import ProcessSite, process_site
from tests.site.releasekit import free_port_pair


@pytest.fixture
def ps(tmp_path: Path) -> Iterator[ProcessSite]:
    """A site on the process engine over the fake runtime; its services stop afterwards."""
    s = process_site(tmp_path, vendor(tmp_path))
    yield s
    s.stop_all()


@pytest.fixture
def port() -> int:
    """A port p such that p and p+100 (the other slot) are both free right now."""
    return free_port_pair()
