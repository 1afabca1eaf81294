"""The front door's end-to-end pieces: bundles of one ONNX service that carry the proxy
image, the headless installer as a subprocess, and a steady HTTPS load with the token.
Used by tests/e2e/test_frontdoor.py and bench/frontdoor_update_bench.py."""

from __future__ import annotations

import json
import random
import socket
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from appliance.site.layout import runtime_port
from bundler.samples import make_mlp_onnx
from signing import PrivateKey, TrustRoot
from tests.e2e.kit import NO_GPU, cli_env
from tests.frontdoor.load import SteadyLoad

SIZES = (64, 32, 10)  # the load generator's body is x [1, 64]; answers are y [1, 10]


def free_port() -> int:
    """A service port p in 10000-19998 with p + 1 and all their runtime ports free too."""
    rng = random.Random()
    for _ in range(200):
        p = rng.randrange(10000, 19999)
        try:
            for q in (p, p + 1, *(runtime_port(x, s) for x in (p, p + 1) for s in (0, 1))):
                with socket.socket() as s:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    s.bind(("0.0.0.0", q))
        except OSError:
            continue
        return p
    raise RuntimeError("no free port found")


class Vendor:
    """Signs bundles of one ONNX service with a front door."""

    def __init__(self, work: Path, images: tuple[Path, Path], port: int) -> None:
        self.work, self.images, self.port = work, images, port
        self.key = PrivateKey.generate()
        self.root = work / "root.json"
        self.root.write_bytes(TrustRoot.create([self.key.public_key]).to_json())
        self.key_path = work / "vendor.key"
        self.key_path.write_bytes(self.key.to_pem())
        self.key_path.chmod(0o600)

    def build(self, sequence: int, seed: int, base: Path | None = None,
              broken: bool = False, fallback: bool = False) -> Path:
        d = self.work / f"spec-{sequence}"
        make_mlp_onnx(d / "models" / "mlp", sizes=SIZES, seed=seed)
        if broken:  # signed and well formed, but the runtime cannot load it
            (d / "models" / "mlp" / "model.onnx").write_bytes(b"not an onnx model")
        spec: dict[str, Any] = {
            "name": "door", "version": f"1.{sequence}.0", "sequence": sequence,
            "expires_days": 30, "platform": "linux/amd64",
            "runtime_image": {"archive": str(self.images[0])},
            "frontdoor_image": {"archive": str(self.images[1])},
            "models": [{"name": "mlp", "version": "1", "path": "models/mlp",
                        "max_batch_size": 8, "max_queue_delay_ms": 1}],
            "services": [{"name": "mlp", "models": ["mlp"], "port": self.port,
                          "gpu": "preferred"}],
        }
        if fallback:  # a second service of the same model on the CPU backs the first up
            spec["services"][0]["fallback"] = "mlp-cpu"
            spec["services"].append({"name": "mlp-cpu", "models": ["mlp"],
                                     "port": self.port + 1, "gpu": "none"})
        (d / "appliance.yaml").write_text(yaml.safe_dump(spec))
        out = self.work / f"door-{sequence}.tar"
        cmd = [sys.executable, "-m", "appliance", "bundle", "build", "-f",
               str(d / "appliance.yaml"), "-o", str(out), "--key", str(self.key_path)]
        if base is not None:
            cmd += ["--base", str(base)]
        r = subprocess.run(cmd, env=cli_env(), capture_output=True, text=True, timeout=600,
                           check=False)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        return out


def appliance(root: Path, engine_url: str, *cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "appliance", *cmd, "--root", str(root),
                           "--engine", "docker", "--docker-host", engine_url],
                          env=cli_env(), capture_output=True, text=True, timeout=600,
                          check=False)


def install(vendor: Vendor, root: Path, url: str, bundle: Path, *extra: str) -> str:
    r = appliance(root, url, "install", str(bundle), "--yes", "--trust", str(vendor.root),
                   "--gpu-state", str(vendor.work / "no-gpu.json"), "--health-timeout", "180",
                   *extra)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    return r.stdout


def steady_load(root: Path, port: int, rate: float = 150, connections: int = 8) -> SteadyLoad:
    door = json.loads((root / "frontdoor" / "door.json").read_text())
    ctx = ssl.create_default_context(cafile=door["ca_file"])
    token = (root / "token").read_text().strip()
    return SteadyLoad("127.0.0.1", port, "/v2/models/mlp/infer", rate=rate, connections=connections,
                      headers={"Authorization": f"Bearer {token}"}, ssl_context=ctx)




def no_gpu(work: Path) -> Path:
    """A recorded GPU state with no GPU, for --gpu-state."""
    path = work / "no-gpu.json"
    path.write_text(json.dumps(NO_GPU))
    return path
