"""The runtime image: built offline, slim, non-root, read-only friendly, health-checked."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from bundler.samples import make_mlp_onnx, mlp_reference
from images.base import ensure_base
from images.build import ROOT, BuiltImage, default_cache
from images.podman import Podman
from tests.image.fixtures import podman

pytestmark = pytest.mark.slow

STUB_READY_SERVER = """
import http.server, sys
class Ready(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/v2/health/ready" else 404)
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.HTTPServer(("0.0.0.0", int(sys.argv[2])), Ready).serve_forever()
"""


def _archived_config(archive: Path) -> dict:
    """The image config as shipped in the docker-archive (what engines and the bundler read)."""
    with tarfile.open(archive) as tar:
        manifest = tar.extractfile("manifest.json")
        assert manifest is not None
        config = tar.extractfile(json.load(manifest)[0]["Config"])
        assert config is not None
        return json.load(config)["config"]


def _run(tag: str, *args: str, options: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    return podman("run", "--rm", "--no-healthcheck", *options, tag, *args)


def test_archive_is_a_docker_archive_of_the_tagged_image(runtime_image: BuiltImage) -> None:
    with tarfile.open(runtime_image.archive) as tar:
        member = tar.extractfile("manifest.json")
        assert member is not None
        manifest = json.load(member)
        names = set(tar.getnames())
    assert len(manifest) == 1
    assert manifest[0]["RepoTags"] == [runtime_image.tag]
    assert manifest[0]["Config"] in names
    assert len(manifest[0]["Layers"]) == 2  # the debootstrap base + the runtime venv
    assert all(layer in names for layer in manifest[0]["Layers"])
    # Slim: Debian's python3 plus the ONNX runtime stack, well under a torch image.
    assert runtime_image.image_bytes < 400e6


def test_repeat_build_is_cached_and_takes_seconds(runtime_image: BuiltImage) -> None:
    before = runtime_image.archive.stat().st_mtime_ns
    started = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "images.build", "-q"],
        cwd=ROOT, capture_output=True, text=True, check=False, timeout=120,
    )
    elapsed = time.monotonic() - started
    assert out.returncode == 0, out.stderr
    assert "cached" in out.stdout and "runtime-image.tar" in out.stdout and "MB" in out.stdout
    assert runtime_image.archive.stat().st_mtime_ns == before
    assert elapsed < 15, f"cached build took {elapsed:.1f} s"


def test_runs_as_a_non_root_user(runtime_image: BuiltImage) -> None:
    assert _archived_config(runtime_image.archive)["User"] == "10001:10001"
    out = _run(runtime_image.tag, "id", "-u")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "10001"


def test_holds_the_runtime_stack_and_no_torch_textual_or_docker(runtime_image: BuiltImage) -> None:
    script = (
        "import importlib.metadata as m, json, runtime;"
        "print(json.dumps(sorted(d.metadata['Name'].lower() for d in m.distributions())))"
    )
    out = _run(runtime_image.tag, "python", "-c", script)
    assert out.returncode == 0, out.stderr
    installed = set(json.loads(out.stdout))
    assert {"offline-appliance", "onnxruntime", "fastapi", "uvicorn", "numpy"} <= installed
    assert not installed & {"torch", "textual", "docker", "pip", "setuptools"}


def test_declares_healthcheck_offline_env_and_runtime_command(runtime_image: BuiltImage) -> None:
    config = _archived_config(runtime_image.archive)
    assert config["Healthcheck"]["Test"] == ["CMD", "python", "/opt/appliance/healthcheck.py"]
    assert config["Healthcheck"]["StartPeriod"] >= 60e9  # ns: big models take a while to load
    env = dict(item.split("=", 1) for item in config["Env"])
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        assert env[name] == "1"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert config["Cmd"] == [
        "python", "-m", "runtime", "--models", "/models", "--port", "8000", "--host", "0.0.0.0",
    ]
    assert "/var/lib/appliance-runtime" in config["Volumes"]


@pytest.fixture
def read_only_container(runtime_image: BuiltImage) -> Iterator[str]:
    """A container of the image under --read-only (tmpfs /tmp only) serving a stub readiness."""
    name = f"rt-ro-{uuid.uuid4().hex[:8]}"
    out = podman(
        "run", "-d", "--name", name, "--read-only", "--read-only-tmpfs=false", "--tmpfs", "/tmp",
        runtime_image.tag, "python", "-c", STUB_READY_SERVER, "--port", "8000",
    )
    assert out.returncode == 0, out.stderr
    try:
        yield name
    finally:
        podman("rm", "-f", "-v", "-t", "0", name)  # -v: its anonymous volume too


def test_starts_read_only_and_its_healthcheck_sees_readiness(read_only_container: str) -> None:
    name = read_only_container
    deadline = time.monotonic() + 30
    while True:
        check = podman("healthcheck", "run", name)
        if check.returncode == 0 or time.monotonic() > deadline:
            break
    assert check.returncode == 0, check.stdout + check.stderr
    probe = podman(
        "exec", name, "sh", "-c",
        "python -c 'import runtime, onnxruntime, fastapi, uvicorn' && "
        "touch /var/lib/appliance-runtime/written && touch /tmp/written && "
        "if touch /opt/runtime/written 2>/dev/null; then echo root-writable; else echo root-ro; fi",
    )
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip() == "root-ro"


def test_healthcheck_fails_when_nothing_answers(runtime_image: BuiltImage) -> None:
    out = _run(runtime_image.tag, "python", "/opt/appliance/healthcheck.py")
    assert out.returncode == 1
    assert "/v2/health/ready" in out.stderr


def _private_podman_env(root: Path) -> dict[str, str]:
    """Environment for a podman with its own store, state and file locks under root.

    Its own tmp_dir and lock_type=file keep it from touching the shared podman's
    /run/libpod state and /dev/shm locks (a fresh libpod frees every lock it sees).
    """
    (root / "containers.conf").write_text(
        "[containers]\n"
        'default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]\n'
        "[engine]\n"
        'runtime = "runc"\n'
        'lock_type = "file"\n'
        f'tmp_dir = "{root / "libpod"}"\n'
    )
    (root / "storage.conf").write_text(
        f'[storage]\ndriver = "overlay"\ngraphroot = "{root / "graph"}"\n'
        f'runroot = "{root / "run"}"\n'
    )
    return {
        **os.environ,
        "CONTAINERS_CONF": str(root / "containers.conf"),
        "CONTAINERS_STORAGE_CONF": str(root / "storage.conf"),
    }


def test_builds_with_no_network_at_all_from_the_staged_cache(
    runtime_image: BuiltImage, tmp_path: Path
) -> None:
    """Rebuild from scratch in a private podman store, inside a network namespace with no route."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) for a network namespace")
    # The staged inputs, hard-linked into a private cache: base rootfs tar, wheels, project wheel.
    # Stage the rootfs tar even when another checkout built the base image.
    ensure_base(Podman(), default_cache() / "base")
    private = tmp_path / "cache"
    shutil.copytree(
        default_cache(), private, copy_function=os.link, ignore=shutil.ignore_patterns(".*")
    )
    env = {**_private_podman_env(tmp_path), "APPLIANCE_IMAGE_CACHE": str(private)}
    try:
        out = subprocess.run(
            ["unshare", "--net", sys.executable, "-m", "images.build", "-q", "--json",
             "--out-dir", str(tmp_path / "out")],
            cwd=ROOT, env=env, capture_output=True, text=True, check=False, timeout=400,
        )
        assert out.returncode == 0, out.stderr[-2000:]
        result = json.loads(out.stdout)
        assert result["built"] is True
        assert result["input_hash"] == runtime_image.input_hash
        assert Path(result["archive"]).stat().st_size > 100e6
    finally:
        subprocess.run(
            ["podman", "rmi", "--all", "--force"], env=env, capture_output=True, check=False,
            timeout=120,
        )


def _infer(base_url: str, model: str, x: np.ndarray) -> np.ndarray:
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": list(x.shape),
                        "data": x.ravel().tolist()}]}
    request = urllib.request.Request(
        f"{base_url}/v2/models/{model}/infer", json.dumps(body).encode(),
        {"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        out = json.load(response)["outputs"][0]
    return np.array(out["data"], dtype=np.float32).reshape(out["shape"])


def test_serves_a_model_read_only_with_its_own_command(
    runtime_image: BuiltImage, tmp_path: Path
) -> None:
    """The image's CMD and HEALTHCHECK with the real runtime: ready, then correct answers."""
    make_mlp_onnx(tmp_path / "models" / "mlp" / "1")
    name = f"rt-serve-{uuid.uuid4().hex[:8]}"
    out = podman(
        "run", "-d", "--name", name, "--read-only", "--read-only-tmpfs=false", "--tmpfs", "/tmp",
        "-v", f"{tmp_path / 'models'}:/models:ro", "-p", "127.0.0.1::8000", runtime_image.tag,
    )
    assert out.returncode == 0, out.stderr
    try:
        deadline = time.monotonic() + 90
        while True:
            check = podman("healthcheck", "run", name)
            state = podman("inspect", "--format", "{{.State.Status}}", name).stdout.strip()
            if check.returncode == 0 or state != "running" or time.monotonic() > deadline:
                break
        logs = podman("logs", name)
        assert check.returncode == 0, f"{state}: {(logs.stdout + logs.stderr)[-1500:]}"
        port = podman("port", name, "8000").stdout.strip().rsplit(":", 1)[1]
        x = np.random.default_rng(7).standard_normal((4, 64)).astype(np.float32)
        y = _infer(f"http://127.0.0.1:{port}", "mlp", x)
        np.testing.assert_allclose(y, mlp_reference(x), rtol=1e-4, atol=1e-4)
        # Its logs went to the volume, the one writable place besides /tmp.
        listing = podman("exec", name, "ls", "/var/lib/appliance-runtime/logs")
        assert listing.returncode == 0 and listing.stdout.strip(), listing.stderr
    finally:
        podman("rm", "-f", "-v", "-t", "0", name)
