"""From the stick to the first inference through the executable's TUI, on podman: the
engineer types one command (`./appliance-installer`) and presses keys, nothing else."""

from __future__ import annotations

import os
import pty
import re
import secrets
import select
import signal
import tempfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from appliance.engines.docker import DockerEngine
from appliance.site.layout import Site
from bundler.stick import EXECUTABLE_NAME, write_stick
from installer_tui.screens.trust import COMPARED_TEXT
from tests.e2e.kit import infer, remove_vendor_images
from tests.enginekit import wait_for
from tests.image.fixtures import runtime_image, runtime_image_tar  # noqa: F401
from tests.site.releasekit import free_port_pair
from tests.stick.kit import Vendor, make_vendor

pytest.importorskip("onnxruntime")
pytestmark = [pytest.mark.stick, pytest.mark.engine, pytest.mark.slow]

_ESCAPES = re.compile(rb"\x1b(\[[0-9;?<>=]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)|[()][0-9A-B]|.)")


def mlp_bundle(tmp: Path, v: Vendor, name: str, port: int, runtime_archive: Path,
               proxy_archive: Path | None = None) -> Path:
    """A one-model bundle over the slim runtime image, with a signed sample to accept (and
    the front door's proxy image, when given)."""
    from bundler.build import build_bundle
    from bundler.samples import make_mlp_onnx, mlp_reference
    from bundler.spec import load_spec

    work = tmp / "spec"
    make_mlp_onnx(work / "models" / "mlp")
    x = np.linspace(-1, 1, 64, dtype=np.float32).reshape(1, 64)
    spec = {"name": name, "version": "1.0.0", "sequence": 1, "expires_days": 30,
            "platform": "linux/amd64", "runtime_image": {"archive": str(runtime_archive)},
            "models": [{"name": "mlp", "version": "1", "path": "models/mlp", "samples": [
                {"inputs": {"x": {"datatype": "FP32", "shape": [1, 64],
                                  "data": x.ravel().tolist()}},
                 "outputs": {"y": {"datatype": "FP32", "shape": [1, 10],
                                   "data": mlp_reference(x).ravel().tolist()}},
                 "tolerance": 1e-4}]}],
            "services": [{"name": "mlp", "models": ["mlp"], "port": port, "gpu": "none"}]}
    if proxy_archive is not None:
        spec["frontdoor_image"] = {"archive": str(proxy_archive)}
    (work / "appliance.yaml").write_text(yaml.safe_dump(spec))
    out = tmp / f"{name}-1.0.0.tar"
    build_bundle(load_spec(work / "appliance.yaml"), out, [v.key])
    return out


class Terminal:
    """The executable on a real pseudo-terminal: what it drew, and keys pressed into it."""

    def __init__(self, cwd: Path, argv: list[str], env: dict[str, str]) -> None:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:
            os.chdir(cwd)
            os.execve(argv[0], argv, env)
        self.seen = bytearray()
        self.reaped = False

    def text(self) -> str:
        while select.select([self.fd], [], [], 0.05)[0]:
            try:
                chunk = os.read(self.fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            self.seen.extend(chunk)
        return _ESCAPES.sub(b"", bytes(self.seen)).decode(errors="replace")

    def press(self, keys: bytes) -> None:
        os.write(self.fd, keys)

    def exited(self) -> bool:
        self.text()
        if not self.reaped and os.waitpid(self.pid, os.WNOHANG) != (0, 0):
            self.reaped = True
        return self.reaped

    def close(self) -> None:
        if not self.reaped:
            os.kill(self.pid, signal.SIGTERM)
            try:
                wait_for(self.exited, 20, "the installer to exit on SIGTERM")
            except TimeoutError:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
        os.close(self.fd)


def test_one_command_from_the_stick_to_the_first_inference(
        installer_executable: Path, runtime_image_tar: Path, podman_url: str,  # noqa: F811
        tmp_path: Path) -> None:
    v = make_vendor(tmp_path)
    name = f"stick{secrets.token_hex(3)}"
    port = free_port_pair()
    bundle = mlp_bundle(tmp_path, v, name, port, runtime_image_tar)
    stick = tmp_path / "usb"
    write_stick(stick, bundle=bundle, trust_root=v.root_path, executable=installer_executable,
                keys=[v.key])
    site = Site(tmp_path / "site")
    # On a server the engine is found on its usual socket; here podman's listens elsewhere.
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "TERM": "xterm-256color",
           "LANG": "C.UTF-8", "TMPDIR": tempfile.gettempdir(), "DOCKER_HOST": podman_url,
           "APPLIANCE_ROOT": str(site.root), "APPLIANCE_UNIT_DIR": str(tmp_path / "units")}
    term = Terminal(stick, [f"./{EXECUTABLE_NAME}"], env)
    engine = DockerEngine(site, base_url=podman_url)
    try:
        def shows(text: str) -> bool:
            assert not term.exited(), term.text()[-1500:]
            return text in term.text()

        wait_for(lambda: shows(COMPARED_TEXT), 120, "the trust screen")
        assert v.key.public_key.fingerprint in term.text()
        term.press(b" ")  # tick: compared with the vendor's letter
        term.press(b"c")  # trust and continue: verify into the store, then the review
        wait_for(lambda: shows("to install release 1"), 300, "verify and the review")
        assert site.current() is None  # nothing serves before the person says install
        term.press(b"i")
        cur = wait_for(lambda: site.current(), 400, "the release to serve")
        assert cur is not None  # wait_for returns only once the condition is truthy
        assert cur.sequence == 1 and cur.record.engine == "docker"
        from bundler.samples import mlp_reference
        x = np.linspace(-1, 1, 64, dtype=np.float32).reshape(1, 64)
        got = infer(cur.record.endpoints["mlp"], "mlp", x)
        np.testing.assert_allclose(got, mlp_reference(x), rtol=1e-4, atol=1e-5)
        # The watchdog's timer runs a copy of the executable kept in the site: the stick
        # is unplugged once the install is done.
        service = next((tmp_path / "units").glob("appliance-*-watchdog.service"))
        copy = site.root / "bin" / EXECUTABLE_NAME
        assert f"ExecStart={copy} watchdog --once --root {site.root}" in service.read_text()
        assert os.access(copy, os.X_OK)
    finally:
        term.close()
        for rel in site.releases():
            engine.stop(rel.sequence)
        remove_vendor_images(engine, name)
        engine.close()
