"""A real containerd (the Debian package) on a temp root, state and socket, driven with `ctr`.

No CRI plugin: these tests check what `ctr -n k8s.io images import` stores (the same
import k3s runs on the files in /var/lib/rancher/k3s/agent/images/), not pods.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.enginekit import Containerd
from tests.enginekit import containerd as start_containerd

__all__ = ["Containerd"]


@pytest.fixture
def containerd() -> Iterator[Containerd]:
    """Start containerd for one test; stop it and remove its root afterwards."""
    with start_containerd() as ctrd:
        yield ctrd
