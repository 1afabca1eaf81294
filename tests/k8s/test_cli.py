"""`appliance k8s render|images` end to end: a real signed bundle, the CLI, a real containerd."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from appliance.bundle.manifest import MANIFEST_PATH, Manifest
from appliance.cli import main
from bundler.build import build_bundle
from bundler.spec import load_spec
from signing import PrivateKey, TrustRoot
from tests.k8s.conftest import Containerd

K8S_VERSION = "1.30"

SPEC = """\
name: demo
version: 1.0.{sequence}
sequence: {sequence}
expires_days: 3650
models:
  - name: mlp
    version: "1"
    path: models/mlp
    gpu_memory_mib: 2048
  - name: cnn
    version: "1"
    path: models/cnn
    gpu_memory_mib: 6144
services:
  - name: mlp
    models: [mlp]
    port: 8000
    gpu: preferred
  - name: cnn
    models: [cnn]
    port: 8001
    gpu: required
"""


def model_dir(directory: Path, name: str, payload: bytes) -> None:
    directory.mkdir(parents=True)
    (directory / "model.onnx").write_bytes(payload)
    (directory / "model.json").write_text(json.dumps({
        "name": name, "version": "1", "framework": "onnx", "file": "model.onnx",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 2]}],
        "max_batch_size": 8, "max_queue_delay_ms": 1.0, "gpu_memory_mib": 0,
    }))


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two signed bundles (sequence 1 and 2), the trust root, and one from an unknown key."""
    d = tmp_path_factory.mktemp("site")
    model_dir(d / "models" / "mlp", "mlp", b"mlp weights " * 100)
    model_dir(d / "models" / "cnn", "cnn", b"cnn weights " * 300)
    key, stranger = PrivateKey.generate(), PrivateKey.generate()
    (d / "root.json").write_bytes(TrustRoot.create([key.public_key], threshold=1).to_json())
    out: dict[str, Path] = {"root": d / "root.json", "dir": d}
    for seq in (1, 2):
        spec = d / f"appliance-{seq}.yaml"
        spec.write_text(SPEC.format(sequence=seq))
        build_bundle(load_spec(spec), d / f"demo-{seq}.bundle", [key])
        out[f"bundle{seq}"] = d / f"demo-{seq}.bundle"
    build_bundle(load_spec(d / "appliance-2.yaml"), d / "stranger.bundle", [stranger])
    out["stranger"] = d / "stranger.bundle"
    return out


def signed_manifest(bundle: Path) -> tuple[Manifest, str]:
    with tarfile.open(bundle) as t:
        f = t.extractfile(MANIFEST_PATH)
        assert f is not None
        data = f.read()
    return Manifest.from_json(data), "sha256:" + hashlib.sha256(data).hexdigest()


def run(*argv: str | Path) -> int:
    return main([str(a) for a in argv])


def test_render_writes_valid_objects_pinned_to_the_signed_manifest(
    site: dict[str, Path], tmp_path: Path
) -> None:
    out, state = tmp_path / "deploy", tmp_path / "state"
    r = subprocess.run(
        [sys.executable, "-m", "appliance", "k8s", "render", str(site["bundle2"]),
         "--trust", str(site["root"]), "-o", str(out), "--state", str(state),
         "--node-gpu-memory-mib", "8192", "--namespace", "inference"],
        capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert f"kubectl apply -k {out}" in r.stdout
    # the pods mount the token Secret: the render says how to make it, in the namespace
    assert ("first run kubectl create secret generic appliance-token -n inference "
            "--from-file=token=TOKEN_FILE") in r.stdout
    manifest, digest = signed_manifest(site["bundle2"])
    names = sorted(p.name for p in out.iterdir())
    assert names == ["demo-cnn-deployment.yaml", "demo-cnn-pdb.yaml", "demo-cnn-service.yaml",
                     "demo-mlp-deployment.yaml", "demo-mlp-pdb.yaml", "demo-mlp-service.yaml",
                     "kustomization.yaml"]
    for p in out.iterdir():
        if p.name == "kustomization.yaml":
            continue
        obj = yaml.safe_load(p.read_text())
        assert kubernetes_validate.validate(obj, K8S_VERSION, strict=True) == K8S_VERSION
        assert obj["metadata"]["annotations"]["appliance/manifest-digest"] == digest
        assert obj["metadata"]["labels"]["appliance/sequence"] == "2"
        if obj["kind"] == "Deployment":
            svc = manifest.services[[s.name for s in manifest.services].index(
                obj["metadata"]["name"].removeprefix("demo-"))]
            image = manifest.image(svc.image)
            c = obj["spec"]["template"]["spec"]["containers"][0]
            assert c["image"].endswith("@" + image.manifest_digest)
            assert c["imagePullPolicy"] == "Never"
            assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert json.loads((state / "state.json").read_text())["highest_sequence"] == 2


def test_render_refuses_a_model_bigger_than_the_node_gpu_and_writes_nothing(
    site: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "deploy"
    rc = run("k8s", "render", site["bundle2"], "--trust", site["root"], "-o", out,
             "--state", tmp_path / "state", "--node-gpu-memory-mib", "4096")
    err = capsys.readouterr().err
    assert rc == 1
    assert err.count("\n") == 1 and "'cnn'" in err and "6144 MiB" in err and "4096 MiB" in err
    assert not out.exists()
    assert not (tmp_path / "state" / "state.json").exists()


def test_render_refuses_a_bundle_signed_by_an_unknown_key(
    site: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "deploy"
    rc = run("k8s", "render", site["stranger"], "--trust", site["root"], "-o", out,
             "--state", tmp_path / "state")
    assert rc == 1 and capsys.readouterr().err.startswith("error: ")
    assert not out.exists()


def test_render_refuses_a_tampered_bundle(
    site: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.bundle"
    data = bytearray(site["bundle2"].read_bytes())
    with tarfile.open(site["bundle2"]) as t:
        last = t.getmembers()[-1]
    data[last.offset_data] ^= 1  # one bit of the last blob
    bad.write_bytes(bytes(data))
    rc = run("k8s", "render", bad, "--trust", site["root"], "-o", tmp_path / "deploy",
             "--state", tmp_path / "state")
    assert rc == 1 and capsys.readouterr().err.startswith("error: ")
    assert not (tmp_path / "deploy").exists()


def test_an_older_bundle_is_refused_but_the_same_one_renders_again(
    site: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state, out = tmp_path / "state", tmp_path / "deploy"
    common = ("--trust", site["root"], "--state", state)
    assert run("k8s", "render", site["bundle2"], "-o", out, *common) == 0
    assert run("k8s", "render", site["bundle2"], "-o", out, *common) == 1  # needs --force
    assert "--force" in capsys.readouterr().err
    assert run("k8s", "render", site["bundle2"], "-o", out, "--force", *common) == 0
    assert run("k8s", "render", site["bundle1"], "-o", tmp_path / "old", *common) == 1
    err = capsys.readouterr().err
    assert "sequence 1, older than 2" in err and "kubectl rollout undo" in err
    assert not (tmp_path / "old").exists()


def test_images_archive_imports_into_containerd_with_the_signed_digests(
    site: dict[str, Path], tmp_path: Path, containerd: Containerd
) -> None:
    out = tmp_path / "images"
    assert run("k8s", "images", site["bundle2"], "--trust", site["root"], "-o", out,
               "--state", tmp_path / "state") == 0
    manifest, _ = signed_manifest(site["bundle2"])
    archive = out / "appliance-demo-2.tar"
    assert sorted(p.name for p in out.iterdir()) == [archive.name]  # no scratch store left
    r = containerd.import_archive(archive)
    assert r.returncode == 0, r.stderr
    held = containerd.images()
    want = {img.manifest_digest for img in manifest.images}
    assert set(held.values()) == want
    # Every rendered pod image is a name containerd now holds, at the signed digest.
    deploy = tmp_path / "deploy"
    assert run("k8s", "render", site["bundle2"], "--trust", site["root"], "-o", deploy,
               "--state", tmp_path / "state") == 0
    for p in deploy.glob("*-deployment.yaml"):
        image = yaml.safe_load(p.read_text())["spec"]["template"]["spec"]["containers"][0]["image"]
        assert held[image] == image.split("@")[1]


def test_render_refuses_to_mix_with_files_it_did_not_write(
    site: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "deploy"
    out.mkdir()
    (out / ".gitkeep").write_text("")
    (out / "notes.yaml").write_text("mine: true\n")
    rc = run("k8s", "render", site["bundle2"], "--trust", site["root"], "-o", out, "--force",
             "--state", tmp_path / "state")
    assert rc == 1 and "notes.yaml" in capsys.readouterr().err
    assert (out / "notes.yaml").read_text() == "mine: true\n"
    (out / "notes.yaml").unlink()
    assert run("k8s", "render", site["bundle2"], "--trust", site["root"], "-o", out,
               "--state", tmp_path / "state") == 0
    assert (out / ".gitkeep").exists()
