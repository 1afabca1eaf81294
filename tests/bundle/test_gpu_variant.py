"""A GPU service gets the CUDA runtime image, a CPU service the slim one; the CUDA
layer travels once, and a weights-only update of a GPU bundle carries none of it."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

from appliance.bundle.manifest import Manifest
from appliance.cli import main
from bundler.build import build_bundle
from bundler.spec import load_spec
from signing import PrivateKey
from tests.bundle.kit import make_model_dir, read_entries, source_date_epoch, write_spec
from tests.bundle.runtimes import _layer, _sha

MIB = 1024 * 1024
DEBIAN = _layer({"usr/bin/python3": os.urandom(256 * 1024)})  # shared by both variants
CUDA_LIBS = _layer({"opt/runtime/nvidia/cudnn/libcudnn.so.9": os.urandom(4 * MIB)})
SPEC = """\
name: gpu
version: 1.0.{sequence}
sequence: {sequence}
runtime_image: {{archive: slim.tar}}
runtime_image_gpu: {{archive: cuda.tar}}
models:
  - {{name: seg, path: models/seg}}
  - {{name: triage, path: models/triage}}
services:
  - {{name: seg, models: [seg], port: 8000, gpu: required}}
  - {{name: triage, models: [triage], port: 8001, gpu: none}}
"""


def archive(path: Path, layers: list[bytes], labels: dict[str, str]) -> Path:
    """A docker-archive of `layers` whose config carries `labels`."""
    config = json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["python", "-m", "runtime"], "Labels": labels},
        "rootfs": {"type": "layers", "diff_ids": [_sha(x) for x in layers]},
    }, sort_keys=True).encode()
    with tarfile.open(path, "w") as tar:
        def add(name: str, data: bytes) -> None:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tar.addfile(ti, io.BytesIO(data))
        cfg = hashlib.sha256(config).hexdigest() + ".json"
        add(cfg, config)
        names = [hashlib.sha256(x).hexdigest() + "/layer.tar" for x in layers]
        for n, x in zip(names, layers, strict=True):
            add(n, x)
        add("manifest.json", json.dumps([{"Config": cfg, "Layers": names}]).encode())
    return path


def spec_dir(d: Path, sequence: int, seg: bytes) -> Path:
    archive(d / "slim.tar", [DEBIAN, _layer({"opt/runtime/ort.py": b"cpu"})], {})
    archive(d / "cuda.tar", [DEBIAN, CUDA_LIBS, _layer({"opt/runtime/ort.py": b"gpu"})],
            {"io.appliance.runtime.cuda": "12.8"})
    make_model_dir(d / "models" / "seg", "seg", seg)
    make_model_dir(d / "models" / "triage", "triage", b"triage" * 100)
    return write_spec(d, SPEC.format(sequence=sequence))


def build(d: Path, sequence: int, seg: bytes, key: PrivateKey,
          base: Manifest | None = None) -> tuple[Manifest, Path]:
    d.mkdir(exist_ok=True)
    with source_date_epoch():
        m = build_bundle(load_spec(spec_dir(d, sequence, seg)), d / "b.tar", [key], base=base)
    return m, d / "b.tar"


def test_gpu_service_runs_on_the_cuda_image_and_cpu_service_on_the_slim_one(
        tmp_path, vendor, capsys):
    m, path = build(tmp_path / "v1", 1, b"seg" * 1000, vendor)
    seg, triage = m.image("seg"), m.image("triage")
    assert seg.cuda == "12.8" and seg.variant == "cuda 12.8"
    assert triage.cuda == "" and triage.variant == "cpu"
    assert _sha(CUDA_LIBS) in seg.layers and _sha(CUDA_LIBS) not in triage.layers
    assert seg.layers[0] == triage.layers[0] == _sha(DEBIAN)
    blobs = [e.name for e in read_entries(path) if e.name.startswith("blobs/")]
    assert blobs.count(f"blobs/sha256/{_sha(DEBIAN)[7:]}") == 1  # shared, written once
    assert Manifest.from_json(m.to_json()).image("seg").cuda == "12.8"  # signed, read back
    assert main(["bundle", "inspect", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(ln.split()[:1] == ["seg"] and "runtime cuda 12.8" in ln for ln in lines)
    assert any(ln.split()[:1] == ["triage"] and "runtime cpu" in ln for ln in lines)


def test_a_weights_only_update_of_a_gpu_bundle_is_the_weights_and_under_1_mib_more(
        tmp_path, vendor):
    v1, _ = build(tmp_path / "v1", 1, os.urandom(MIB), vendor)
    new_weights = os.urandom(2 * MIB)
    v2, delta = build(tmp_path / "v2", 2, new_weights, vendor, base=v1)
    assert v2.image("seg").layers[:3] == v1.image("seg").layers[:3]
    assert delta.stat().st_size <= len(new_weights) + MIB
    carried = {e.name for e in read_entries(delta)}
    assert f"blobs/sha256/{_sha(CUDA_LIBS)[7:]}" not in carried


def test_without_a_gpu_image_every_service_keeps_the_one_runtime_image(tmp_path, vendor):
    d = tmp_path / "one"
    d.mkdir()
    path = spec_dir(d, 1, b"seg")
    path.write_text(path.read_text().replace("runtime_image_gpu: {archive: cuda.tar}\n", ""))
    with source_date_epoch():
        m = build_bundle(load_spec(path), d / "b.tar", [vendor])
    assert {i.variant for i in m.images} == {"cpu"}
    assert b'"cuda"' not in m.to_json()  # CPU manifests keep the bytes they always had
