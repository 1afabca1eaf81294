"""A real containerd (the Debian package) on a temp root, state and socket, driven with `ctr`.

No CRI plugin: these tests check what `ctr -n k8s.io images import` stores (the same
import k3s runs on the files in /var/lib/rancher/k3s/agent/images/), not pods.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

NAMESPACE = "k8s.io"  # where the kubelet's CRI looks for images
START_TIMEOUT_S = 20.0


@dataclass
class Containerd:
    """A running containerd and `ctr` pointed at its socket."""

    socket: Path
    log: Path

    def ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ctr", "-a", str(self.socket), "-n", NAMESPACE, *args],
                              capture_output=True, text=True, check=check, timeout=120)

    def import_archive(self, path: Path) -> subprocess.CompletedProcess[str]:
        # The native snapshotter unpacks on any filesystem, so unpacking proves the
        # layers match the config's diff_ids without needing overlayfs here.
        return self.ctr("images", "import", "--snapshotter", "native", str(path), check=False)

    def images(self) -> dict[str, str]:
        """Image name -> target manifest digest, as `ctr images ls` prints them."""
        out = self.ctr("images", "ls").stdout.splitlines()
        assert out and out[0].split()[:3] == ["REF", "TYPE", "DIGEST"], out
        return {cols[0]: cols[2] for cols in (line.split() for line in out[1:]) if cols}


def _config(base: Path, sock: Path) -> str:
    return f"""version = 2
root = "{base / 'root'}"
state = "{base / 'state'}"
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = "{sock}"

[ttrpc]
  address = "{sock}.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "{base / 'opt'}"
"""


@pytest.fixture
def containerd() -> Iterator[Containerd]:
    """Start containerd for one test; stop it and remove its root afterwards."""
    if shutil.which("containerd") is None or shutil.which("ctr") is None:
        pytest.skip("containerd and ctr are not installed (Debian package `containerd`)")
    if os.geteuid() != 0:
        pytest.skip("containerd needs root to run")
    # A short path under /tmp: a unix socket path must fit in 108 bytes.
    base = Path(tempfile.mkdtemp(prefix="ctrd-", dir="/tmp"))
    sock = base / "c.sock"
    config = base / "config.toml"
    config.write_text(_config(base, sock))
    log = base / "containerd.log"
    with open(log, "wb") as logf:
        proc = subprocess.Popen(["containerd", "--config", str(config)],
                                stdout=logf, stderr=subprocess.STDOUT)
    ctrd = Containerd(sock, log)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"containerd exited with {proc.returncode}: {log.read_text()[-2000:]}")
            if sock.exists() and ctrd.ctr("version", check=False).returncode == 0:
                break
            if time.monotonic() > deadline:
                pytest.fail(f"containerd did not answer in {START_TIMEOUT_S}s: "
                            f"{log.read_text()[-2000:]}")
            time.sleep(0.05)  # poll interval while waiting on the socket, not a sync point
        yield ctrd
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(base, ignore_errors=True)
