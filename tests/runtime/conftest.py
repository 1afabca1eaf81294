"""Fixtures for the runtime: sample models on disk and real servers on 127.0.0.1."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bundler.samples import make_cnn_onnx, make_mlp_onnx, make_torch_model
from tests.enginekit import stop_process, wait_for

REPO = Path(__file__).resolve().parents[2]
TOKEN = "s3cret-token-for-tests"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http(method: str, url: str, body: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """One HTTP request; returns status, headers and body, also for error statuses."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


@dataclass
class Server:
    """A `python -m runtime` subprocess."""

    proc: subprocess.Popen[bytes]
    port: int
    data_dir: Path
    models: Path
    token: str | None
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def hostport(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> int:
        return stop_process(self.proc)


def start_server(models: Path, data_dir: Path, *, token: str | None = None,
                 extra_env: dict[str, str] | None = None, wait_ready: bool = True,
                 prefix: list[str] | None = None, module: tuple[str, ...] = ("runtime",),
                 host: str = "127.0.0.1", port: int | None = None) -> Server:
    """Start the runtime on `port` (a free one unless given); by default wait until ready."""
    port = port or free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNTIME_")}
    env["PYTHONPATH"] = str(REPO)
    if token:
        env["RUNTIME_TOKEN"] = token
    env.update(extra_env or {})
    data_dir.mkdir(parents=True, exist_ok=True)
    log = data_dir.parent / f"{data_dir.name}-stderr-{port}.log"
    cmd = [*(prefix or []), sys.executable, "-m", *module, "--models", str(models),
           "--port", str(port), "--host", host, "--data-dir", str(data_dir)]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    server = Server(proc, port, data_dir, models, token, log)
    if wait_ready:
        def ready() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"server exited {proc.returncode}:\n{server.stderr()}")
            try:
                return http("GET", f"{server.url}/v2/health/ready")[0] == 200
            except OSError:
                return False
        try:
            wait_for(ready, 60, "the runtime to become ready")
        except BaseException:
            server.stop()
            raise
    return server


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """mlp (versions 1 and 2), cnn, TorchScript and torch.export models."""
    root = tmp_path_factory.mktemp("models")
    make_mlp_onnx(root / "mlp" / "1")
    make_mlp_onnx(root / "mlp" / "2", version="2", seed=1)
    make_cnn_onnx(root / "cnn" / "1")
    with warnings.catch_warnings():  # torch marks jit.trace deprecated; the format is served
        warnings.simplefilter("ignore", DeprecationWarning)
        make_torch_model(root / "tmlp" / "1", name="tmlp", kind="torchscript")
        make_torch_model(root / "emlp" / "1", name="emlp", kind="torch-export")
    return root


@pytest.fixture(scope="session")
def onnx_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Only the ONNX mlp: starts fast (no torch import)."""
    root = tmp_path_factory.mktemp("onnx-models")
    make_mlp_onnx(root / "mlp" / "1")
    doc = json.loads((root / "mlp" / "1" / "model.json").read_text())
    assert doc["max_batch_size"] == 32
    return root


@pytest.fixture(scope="session")
def server(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One runtime with every sample model and a bearer token, shared by the session."""
    s = start_server(models_dir, tmp_path_factory.mktemp("data"), token=TOKEN)
    yield s
    s.stop()
