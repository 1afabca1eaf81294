"""Real signed bundles for the install tests, built with the bundler from small model dirs.

The model directories hold a model.json for `tests.site.fakeruntime` (y = x * scale),
so the process engine serves them and the acceptance gate has answers to check.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from signing import PrivateKey, TrustRoot


@dataclass(frozen=True)
class Vendor:
    key: PrivateKey
    root_path: Path


def vendor(tmp: Path) -> Vendor:
    key = PrivateKey.generate()
    root = TrustRoot.create([key.public_key], names={key.key_id: "test vendor"})
    p = tmp / "root.json"
    p.write_bytes(root.to_json())
    return Vendor(key, p)


def make_bundle(tmp: Path, v: Vendor, sequence: int, *, scale: float = 2.0,
                extra: dict[str, Any] | None = None, samples: list[dict[str, Any]] | None = None,
                runtime_archive: Path | None = None, command: list[str] | None = None,
                gpu: str = "preferred", port: int = 8000, gpu_mib: int = 0,
                expires: str | None = None) -> Path:
    """Build `tmp/bundle-<seq>.tar` with one service `mlp` serving model `mlp`."""
    from bundler.build import build_bundle
    from bundler.spec import load_spec
    work = tmp / f"spec-{sequence}"
    mdir = work / "models" / "mlp"
    mdir.mkdir(parents=True, exist_ok=True)
    (mdir / "model.onnx").write_bytes(b"weights for the fake runtime")
    (mdir / "model.json").write_text(json.dumps({
        "name": "mlp", "version": "1", "framework": "onnx", "file": "model.onnx",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 2]}],
        "max_batch_size": 4, "max_queue_delay_ms": 1.0, "gpu_memory_mib": gpu_mib,
        "scale": scale, **(extra or {})}))
    model: dict[str, Any] = {"name": "mlp", "version": "1", "path": "models/mlp",
                             "gpu_memory_mib": gpu_mib, "max_batch_size": 4,
                             "max_queue_delay_ms": 1,
                             "provenance": {"code_commit": "c0ffee", "data_version": "d1",
                                            "training_run": f"run-{sequence}"}}
    if samples:
        model["samples"] = samples
    spec: dict[str, Any] = {"name": "demo", "version": f"1.{sequence}.0", "sequence": sequence,
                            "platform": "linux/amd64", "models": [model],
                            "services": [{"name": "mlp", "models": ["mlp"], "port": port,
                                          "gpu": gpu}]}
    spec["expires" if expires else "expires_days"] = expires or 365
    if runtime_archive:
        spec["runtime_image"] = {"archive": str(runtime_archive)}
        if command:
            spec["runtime_image"]["command"] = command
    (work / "appliance.yaml").write_text(yaml.safe_dump(spec))
    out = tmp / f"bundle-{sequence}.tar"
    build_bundle(load_spec(work / "appliance.yaml"), out, [v.key])
    return out


def sample(x: list[float], y: list[float], tolerance: float = 1e-4) -> dict[str, Any]:
    return {"inputs": {"x": {"datatype": "FP32", "shape": [1, len(x)], "data": x}},
            "outputs": {"y": {"datatype": "FP32", "shape": [1, len(y)], "data": y}},
            "tolerance": tolerance}


def resign(bundle: Path, out: Path, keys: list[PrivateKey], **manifest_fields: Any) -> Path:
    """Copy `bundle` with manifest fields changed (e.g. a `trust_root`), signed by `keys`.

    The bundler has no option for a root rotation yet; this writes the same
    members after a new manifest and envelope, in the bundle's own tar format.
    """
    import tarfile

    from appliance.bundle.manifest import ENVELOPE_PATH, MANIFEST_PATH, PAYLOAD_TYPE, Manifest
    from appliance.bundle.tarfmt import END_OF_ARCHIVE, file_header, padding
    from signing import sign

    with tarfile.open(bundle, "r:") as src, open(out, "wb") as dst:
        members = src.getmembers()
        doc = json.loads(src.extractfile(members[0]).read())  # type: ignore[union-attr]
        doc.update(manifest_fields)
        data = Manifest.from_dict(doc).to_json()
        env = sign(data, PAYLOAD_TYPE, keys).to_json()
        for name, payload in ((MANIFEST_PATH, data), (ENVELOPE_PATH, env)):
            dst.write(file_header(name, len(payload)) + payload + b"\0" * padding(len(payload)))
        for m in members[2:]:
            payload = src.extractfile(m).read()  # type: ignore[union-attr]
            dst.write(file_header(m.name, m.size) + payload + b"\0" * padding(m.size))
        dst.write(END_OF_ARCHIVE)
    return out
