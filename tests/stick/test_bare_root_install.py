"""A headless install by the executable on the bare bullseye root, reaching a correct answer.

The root has no python3 and no engine of its own: the host's podman socket is bound
into it (as a server's own socket would be there), and the executable does the rest.
"""

from __future__ import annotations

import json
import secrets
import shutil
import uuid
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest

from appliance.engines.docker import DockerEngine
from appliance.site.layout import Site
from bundler.stick import EXECUTABLE_NAME, ROOT_NAME, write_stick
from tests.e2e.kit import infer, remove_vendor_images
from tests.image.fixtures import runtime_image, runtime_image_tar  # noqa: F401
from tests.site.releasekit import free_port_pair
from tests.stick.kit import in_bare_root, make_vendor
from tests.stick.test_tui_install import mlp_bundle

pytest.importorskip("onnxruntime")
pytestmark = [pytest.mark.stick, pytest.mark.engine, pytest.mark.slow]


def test_headless_install_from_the_executable_on_the_bare_root_answers(
        bare_root: Path, installer_executable: Path, runtime_image_tar: Path,  # noqa: F811
        podman_url: str, tmp_path: Path) -> None:
    v = make_vendor(tmp_path)
    name = f"bare{secrets.token_hex(3)}"
    bundle = mlp_bundle(tmp_path, v, name, free_port_pair(), runtime_image_tar)
    inside = f"/tmp/stick-{uuid.uuid4().hex[:8]}"
    host = bare_root / inside.lstrip("/")
    write_stick(host, bundle=bundle, trust_root=v.root_path, executable=installer_executable,
                keys=[v.key])
    sock = Path(urlparse(podman_url).path)
    site_inside = f"{inside}/site"
    # The engine tells sites apart by their root's path, as the executable saw it.
    engine = DockerEngine(Site(Path(site_inside)), base_url=podman_url)
    try:
        r = in_bare_root(
            bare_root, [f"./{EXECUTABLE_NAME}", "install", bundle.name, "--trust", ROOT_NAME,
                        "--yes", "--root", site_inside],
            cwd=inside, env=[f"DOCKER_HOST=unix:///mnt/{sock.name}"],
            binds=[(sock.parent, "/mnt")], timeout=600)
        assert r.returncode == 0, r.stdout[-1500:] + r.stderr[-1500:]
        status = in_bare_root(bare_root, [f"./{EXECUTABLE_NAME}", "status", "--json",
                                          "--root", site_inside], cwd=inside)
        assert status.returncode == 0, status.stderr
        endpoint = json.loads(status.stdout)["endpoints"]["mlp"]
        from bundler.samples import mlp_reference
        x = np.linspace(-1, 1, 64, dtype=np.float32).reshape(1, 64)
        np.testing.assert_allclose(infer(endpoint, "mlp", x), mlp_reference(x),
                                   rtol=1e-4, atol=1e-5)
    finally:
        engine.stop(1)
        remove_vendor_images(engine, name)
        engine.close()
        shutil.rmtree(host, ignore_errors=True)
