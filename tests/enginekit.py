"""Real container engines for tests: podman's Docker-compatible socket and dockerd 20.10.

Each helper starts its own daemon on a socket in a temp directory and stops it
afterwards; a test is skipped (with the reason) only when the binary is absent.
`healthd_binary` builds a tiny static HTTP server from tests/site/data/healthd.c,
and `tiny_image` puts an image holding it into a content store as three blobs
(layer, config, OCI manifest), the way a bundle's images arrive there.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest

from appliance.bundle.manifest import Image
from appliance.bundle.store import ContentStore

CACHE = Path(os.environ.get("APPLIANCE_TEST_CACHE", "/var/tmp/appliance-test"))
HEALTHD_SRC = Path(__file__).parent / "site" / "data" / "healthd.c"
START_TIMEOUT_S = 60.0
T = TypeVar("T")


def need(binary: str) -> str:
    """The path of `binary`, or skip the test saying it is not installed."""
    # /usr/sbin too: dockerd lives there, and a non-root PATH often lacks it
    path = shutil.which(binary, path=os.pathsep.join(
        [os.environ.get("PATH", os.defpath), "/usr/sbin", "/sbin"]))
    if path is None:
        pytest.skip(f"{binary} is not installed (.ci/setup-system installs it)")
    return path


def wait_for(cond: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll `cond()` until it returns a truthy value; fail naming `what` at the deadline.

    An exception from `cond` counts as "not yet" (the last one is named at the deadline),
    except an AssertionError, which ends the wait at once: a condition raises one when it
    knows that waiting longer cannot help (the process it waits on has exited).
    """
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            v = cond()
            if v:
                return v
        except AssertionError:
            raise
        except Exception as e:  # keep polling until the deadline
            last = e
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what} (last error: {last})")


def stop_process(proc: subprocess.Popen[bytes], grace: float = 20) -> int:
    """SIGTERM, wait up to `grace` seconds, then SIGKILL; return the exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return proc.returncode


def _ping(sock: Path) -> bool:
    """GET /_ping over the unix socket (plain sockets: nothing left open on failure)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(str(sock))
        s.sendall(b"GET /_ping HTTP/1.0\r\nHost: engine\r\n\r\n")
        return s.recv(64).split(b" ")[1:2] == [b"200"]


@contextmanager
def _daemon(cmd: Sequence[str], sock: Path, log: Path,
            env: dict[str, str] | None = None) -> Iterator[str]:
    base_url = f"unix://{sock}"
    with open(log, "wb") as out:
        proc = subprocess.Popen(list(cmd), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, env=env)
    try:
        def up() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"{cmd[0]} exited with status {proc.returncode}")
            return sock.exists() and _ping(sock)

        try:
            wait_for(up, START_TIMEOUT_S, f"{cmd[0]} on {sock}", interval=0.2)
        except (TimeoutError, AssertionError) as e:
            raise RuntimeError(f"{e}; daemon log:\n{log.read_text()[-2000:]}") from e
        yield base_url
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@contextmanager
def podman_service(storage: Path | None = None) -> Iterator[str]:
    """`podman system service` on a temp socket; yields its docker SDK base URL.

    With `storage`, the service keeps its images in a private vfs store there
    instead of the machine's.
    """
    podman = need("podman")
    d = Path(tempfile.mkdtemp(prefix="pm", dir="/tmp"))
    store = ([] if storage is None else
             ["--root", str(storage / "root"), "--runroot", str(storage / "run"),
              "--storage-driver", "vfs"])
    try:
        sock = d / "podman.sock"
        with _daemon([podman, *store, "system", "service", "--time=0", f"unix://{sock}"],
                     sock, d / "podman.log") as url:
            yield url
    finally:
        shutil.rmtree(d, ignore_errors=True)


@contextmanager
def dockerd(path_first: Path | None = None) -> Iterator[str]:
    """dockerd (20.10 here) on a temp socket with temp data-root and exec-root.

    With `path_first`, that directory leads dockerd's PATH (where it looks for the
    NVIDIA hook, for instance).
    """
    binary = need("dockerd")
    d = Path(tempfile.mkdtemp(prefix="dk", dir="/tmp"))  # short: exec-root holds sockets
    try:
        sock = d / "docker.sock"
        cmd = [binary, "--iptables=false", "--ip6tables=false", "--bridge=none",
               "-H", f"unix://{sock}", "--data-root", str(d / "data"),
               "--exec-root", str(d / "x"), "--pidfile", str(d / "docker.pid")]
        env = None if path_first is None else {
            **os.environ, "PATH": f"{path_first}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
        with _daemon(cmd, sock, d / "dockerd.log", env) as url:
            yield url
    finally:
        # dockerd leaves its default netns bind-mounted under exec-root, and overlay mounts
        for sub in ("x/netns/default", "x", "data"):
            subprocess.run(["umount", "-R", "-l", str(d / sub)], capture_output=True,
                           check=False)
        shutil.rmtree(d, ignore_errors=True)


def healthd_binary() -> Path:
    """The static test server, compiled once and cached by source hash."""
    src = HEALTHD_SRC.read_bytes()
    out = CACHE / f"healthd-{hashlib.sha256(src).hexdigest()[:12]}"
    if not out.exists():
        gcc = need("gcc")
        CACHE.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        subprocess.run([gcc, "-static", "-O2", "-o", str(tmp), str(HEALTHD_SRC)], check=True)
        os.replace(tmp, out)
    return out


def _tar(entries: list[tuple[str, bytes, int]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data, mode in entries:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
            else:
                info.size = len(data)
            info.mode = mode
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layer_of(entries: list[tuple[str, bytes | None, int]]) -> bytes:
    """An uncompressed layer tar of (path, bytes or None for a directory, mode)."""
    return _tar(entries)  # type: ignore[arg-type]


def tiny_image(store: ContentStore, name: str, reference: str, cmd: Sequence[str],
               extra_layers: Sequence[bytes] = ()) -> Image:
    """An image whose base layer holds /healthd, stored as blobs; returns its manifest entry."""
    base = layer_of([("healthd", healthd_binary().read_bytes(), 0o755),
                     ("models", None, 0o755), ("tmp", None, 0o1777)])
    layers = [base, *extra_layers]
    digests = [store.add_bytes(b) for b in layers]
    config = json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": list(cmd), "Env": ["PATH=/"]},
        "rootfs": {"type": "layers", "diff_ids": digests},
        "history": [{"created_by": "tests/enginekit.py"} for _ in layers],
    }, sort_keys=True).encode()
    config_digest = store.add_bytes(config)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d,
                    "size": len(b)} for d, b in zip(digests, layers, strict=True)],
    }, sort_keys=True).encode()
    return Image(name, reference, store.add_bytes(manifest), config_digest, digests)


# -- containerd, for what `ctr -n k8s.io images import` (k3s) stores --------------
CONTAINERD_NAMESPACE = "k8s.io"  # where the kubelet's CRI looks for images
CONTAINERD_START_TIMEOUT_S = 20.0


@dataclass
class Containerd:
    """A running containerd and `ctr` pointed at its socket."""

    socket: Path
    log: Path

    def ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ctr", "-a", str(self.socket), "-n", CONTAINERD_NAMESPACE, *args],
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


@contextmanager
def containerd() -> Iterator[Containerd]:
    """A private containerd (no CRI) on a temp root, state and socket; removed afterwards."""
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
        try:
            wait_for(lambda: proc.poll() is None and sock.exists()
                     and ctrd.ctr("version", check=False).returncode == 0,
                     CONTAINERD_START_TIMEOUT_S, f"containerd on {sock}")
        except TimeoutError as e:
            pytest.fail(f"{e}; containerd log: {log.read_text()[-2000:]}")
        yield ctrd
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(base, ignore_errors=True)
