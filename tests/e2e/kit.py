"""The lifecycle's pieces: two models made by code, signed bundles over the runtime image
(`appliance bundle build`, `--base` for deltas), the headless installer as a subprocess,
and tritonclient checks against what serves.

The ONNX MLP runs in the slim layers; the PyTorch model (torch.export) needs torch, so
the bundle is built over the torch runtime image (the slim image plus one torch layer):
both services share every runtime layer and differ only in their weights layer.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from appliance.bundle.manifest import Manifest
from bundler.samples import make_mlp_onnx, make_torch_model, mlp_reference
from signing import PrivateKey, TrustRoot

REPO = Path(__file__).resolve().parents[2]
MLP_SIZES = (64, 256, 10)
TORCH_SIZES = (16, 32, 4)
NO_GPU = {"driver": "", "cuda": "", "gpus": [], "unavailable": "no NVIDIA driver in e2e tests"}


@dataclass(frozen=True)
class Release:
    """One bundle the vendor built: its file, sequence, manifest and the model seeds inside."""

    path: Path
    sequence: int
    manifest: Manifest
    mlp_seed: int
    torch_seed: int
    broken: bool = False


@dataclass
class Vendor:
    """The vendor side: a signing key, its trust root, and the bundles built so far."""

    work: Path
    name: str
    port: int
    runtime_archive: Path
    key: PrivateKey = field(default_factory=PrivateKey.generate)
    releases: dict[int, Release] = field(default_factory=dict)

    def __post_init__(self) -> None:
        root = TrustRoot.create([self.key.public_key], names={self.key.key_id: "e2e vendor"})
        self.root_path = self.work / "root.json"
        self.root_path.write_bytes(root.to_json())
        self.key_path = self.work / "vendor.key"
        self.key_path.write_bytes(self.key.to_pem())
        self.key_path.chmod(0o600)
        (self.work / "no-gpu.json").write_text(json.dumps(NO_GPU))

    @property
    def gpu_state(self) -> Path:
        return self.work / "no-gpu.json"

    def build(self, sequence: int, mlp_seed: int, torch_seed: int, *, base: int | None = None,
              broken: bool = False) -> Release:
        """Build bundle `sequence` with `appliance bundle build` (`--base`: a delta over the
        bundle of release `base`)."""
        from appliance.bundle import read_manifest_unverified
        spec_dir = self.work / f"spec-{sequence}"
        mlp_dir, torch_dir = spec_dir / "models" / "mlp", spec_dir / "models" / "tmlp"
        make_mlp_onnx(mlp_dir, sizes=MLP_SIZES, seed=mlp_seed)
        make_torch_model(torch_dir, sizes=TORCH_SIZES, seed=torch_seed, kind="torch-export")
        if broken:  # signed and well formed, but the runtime cannot load it
            (mlp_dir / "model.onnx").write_bytes(b"not an ONNX model: the runtime must refuse")
        spec = self.spec(sequence, mlp_seed, torch_seed, with_samples=not broken)
        (spec_dir / "appliance.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
        out = self.work / f"{self.name}-{sequence}.tar"
        cmd = [sys.executable, "-m", "appliance", "bundle", "build", "-q",
               "-f", str(spec_dir / "appliance.yaml"), "-o", str(out), "--key", str(self.key_path)]
        if base:
            cmd += ["--base", str(self.releases[base].path)]
        r = subprocess.run(cmd, env=cli_env(), capture_output=True, text=True, timeout=600,
                           check=False)
        assert r.returncode == 0, f"bundle build failed: {r.stderr}{r.stdout}"
        manifest, _ = read_manifest_unverified(out)
        rel = Release(out, sequence, manifest, mlp_seed, torch_seed, broken)
        self.releases[sequence] = rel
        return rel

    def spec(self, sequence: int, mlp_seed: int, torch_seed: int,
             with_samples: bool) -> dict[str, Any]:
        def model(name: str, seed: int, sizes: tuple[int, ...]) -> dict[str, Any]:
            doc: dict[str, Any] = {
                "name": name, "version": "1", "path": f"models/{name}", "gpu_memory_mib": 0,
                "max_batch_size": 8, "max_queue_delay_ms": 1,
                "provenance": {"code_commit": "e2e", "data_version": f"seed-{seed}",
                               "training_run": f"run-{sequence}"}}
            if with_samples:
                x = sample_input(sizes[0], rows=1)
                doc["samples"] = [{
                    "inputs": {"x": tensor(x)},
                    "outputs": {"y": tensor(mlp_reference(x, sizes, seed))},
                    "tolerance": 1e-3}]
            return doc
        return {
            "name": self.name, "version": f"1.{sequence}.0", "sequence": sequence,
            "expires_days": 30, "platform": "linux/amd64",
            "runtime_image": {"archive": str(self.runtime_archive)},
            "models": [model("mlp", mlp_seed, MLP_SIZES), model("tmlp", torch_seed, TORCH_SIZES)],
            "services": [
                {"name": "mlp", "models": ["mlp"], "port": self.port, "gpu": "preferred"},
                {"name": "tmlp", "models": ["tmlp"], "port": self.port + 1, "gpu": "preferred"},
            ],
        }


def sample_input(width: int, rows: int = 4, seed: int = 7) -> np.ndarray:
    return np.random.default_rng(seed + width).standard_normal((rows, width)).astype(np.float32)


def tensor(a: np.ndarray) -> dict[str, Any]:
    return {"datatype": "FP32", "shape": list(a.shape), "data": a.reshape(-1).tolist()}


# -- the stick and the installer ------------------------------------------------------------

def to_stick(bundle: Path, stick: Path) -> Path:
    """Copy a bundle onto the directory that plays the USB stick."""
    stick.mkdir(parents=True, exist_ok=True)
    dest = stick / bundle.name
    shutil.copyfile(bundle, dest)
    return dest


@dataclass(frozen=True)
class Site:
    """A site root served through one engine socket, driven by the headless CLI."""

    root: Path
    engine_url: str
    vendor: Vendor

    def args(self, *cmd: str) -> list[str]:
        return [sys.executable, "-m", "appliance", *cmd, "--root", str(self.root),
                "--engine", "docker", "--docker-host", self.engine_url]

    def install_cmd(self, bundle: Path, *extra: str) -> list[str]:
        return [*self.args("install", str(bundle)), "--yes", "--trust",
                str(self.vendor.root_path), "--gpu-state", str(self.vendor.gpu_state),
                "--health-timeout", "180", *extra]

    def install(self, bundle: Path, *extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.install_cmd(bundle, *extra), env=cli_env(),
                              capture_output=True, text=True, timeout=600, check=False)

    def status(self) -> dict[str, Any]:
        out = subprocess.run([*self.args("status"), "--json"], env=cli_env(),
                             capture_output=True, text=True, timeout=60, check=False)
        return dict(json.loads(out.stdout))


def cli_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


# -- what the release answers -----------------------------------------------------------------

def expected(rel: Release, model: str, x: np.ndarray) -> np.ndarray:
    seed = rel.mlp_seed if model == "mlp" else rel.torch_seed
    return mlp_reference(x, MLP_SIZES if model == "mlp" else TORCH_SIZES, seed)


def in_process(rel_dir: Path, model: str, x: np.ndarray) -> np.ndarray:
    """The model run in this process from the vendor's files (ONNX Runtime or torch)."""
    mdir = rel_dir / "models" / model
    if model == "mlp":
        import onnxruntime as ort
        sess = ort.InferenceSession(str(mdir / "model.onnx"), providers=["CPUExecutionProvider"])
        return np.asarray(sess.run(["y"], {"x": x})[0])
    import torch
    program = torch.export.load(str(mdir / "model.pt2"))
    with torch.no_grad():
        return np.asarray(program.module()(torch.from_numpy(x)).numpy())


def infer(url: str, model: str, x: np.ndarray) -> np.ndarray:
    """One V2 inference through tritonclient[http]."""
    import tritonclient.http as triton
    client = triton.InferenceServerClient(url.removeprefix("http://"), network_timeout=30)
    try:
        inp = triton.InferInput("x", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        return np.asarray(client.infer(model, [inp]).as_numpy("y"))
    finally:
        client.close()


def assert_serves(endpoints: dict[str, str], rel: Release) -> None:
    """Both services answer what the release's models compute in-process."""
    for model, width in (("mlp", MLP_SIZES[0]), ("tmlp", TORCH_SIZES[0])):
        x = sample_input(width)
        got = infer(endpoints[model], model, x)
        want = in_process(rel.path.parent / f"spec-{rel.sequence}", model, x)
        np.testing.assert_allclose(want, expected(rel, model, x), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


# -- bundles as files ---------------------------------------------------------------------------

def member_names(bundle: Path) -> dict[str, int]:
    """Member name -> size, from the tar headers only (nothing is extracted)."""
    with tarfile.open(bundle, "r:") as tar:
        return {m.name: m.size for m in tar.getmembers()}


def flip_byte_in_largest_blob(bundle: Path) -> str:
    """Corrupt one byte in the middle of the bundle's largest blob; return its name."""
    with tarfile.open(bundle, "r:") as tar:
        blob = max((m for m in tar.getmembers() if m.name.startswith("blobs/")),
                   key=lambda m: m.size)
    with bundle.open("r+b") as f:
        f.seek(blob.offset_data + blob.size // 2)
        b = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([b[0] ^ 0xFF]))
    return blob.name


def check_sha256_list(archive: Path) -> list[str]:
    """Every file the export's SHA256SUMS names has that digest; return the names listed."""
    with tarfile.open(archive, "r:gz") as tar:
        files: dict[str, bytes] = {}
        for m in tar.getmembers():
            assert m.isfile(), f"{m.name} is not a plain file"
            f = tar.extractfile(m)
            assert f is not None
            files[m.name.split("/", 1)[1]] = f.read()
    sums = files.pop("SHA256SUMS").decode().splitlines()
    listed = []
    for line in sums:
        digest, name = line.split("  ", 1)
        assert hashlib.sha256(files[name]).hexdigest() == digest, f"{name} does not match"
        listed.append(name)
    assert set(listed) == set(files), "SHA256SUMS must list every file of the export"
    return listed


def vendor_images(engine: Any, name: str) -> set[tuple[str, str]]:
    """(id, tag) of every image in the engine whose tag belongs to this vendor's appliance."""
    return {(str(img.id), t) for img in engine.client.images.list() for t in img.tags
            if f"/{name}-" in t}


def remove_vendor_images(engine: Any, name: str) -> None:
    for _, tag in vendor_images(engine, name):
        with contextlib.suppress(Exception):  # best effort: a shared image may stay
            engine.client.images.remove(tag)
