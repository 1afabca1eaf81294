"""Building bundles: spec parsing, composition over runtime images, determinism."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from appliance.bundle import read_manifest_unverified, verify_bundle
from appliance.bundle.imagearchive import LAYER_MEDIA_TYPE
from appliance.bundle.store import ContentStore
from appliance.errors import SpecError
from bundler.build import build_bundle
from bundler.sources import GZIP_LAYER
from bundler.spec import load_spec
from signing import PrivateKey, TrustRoot
from tests.bundle.conftest import Built, make_spec_dir
from tests.bundle.kit import NOW, read_entries, source_date_epoch, write_spec
from tests.bundle.runtimes import (
    docker_archive,
    gzip_docker_archive,
    oci_layout,
    oci_tar,
    runtime_parts,
)


def _json_member(path: Path, name: str) -> object:
    for e in read_entries(path):
        if e.name == name:
            return json.loads(e.data)
    raise KeyError(name)


def _blob(path: Path, digest: str) -> bytes:
    for e in read_entries(path):
        if e.name == "blobs/sha256/" + digest.removeprefix("sha256:"):
            return e.data
    raise KeyError(digest)


def test_bundle_members_are_in_design_order(built: Built):
    names = [e.name for e in read_entries(built.path)]
    assert names[:5] == ["appliance/manifest.json", "appliance/manifest.dsse.json",
                         "oci-layout", "index.json", "manifest.json"]
    assert all(n.startswith("blobs/sha256/") for n in names[5:])
    assert [m.path for m in built.manifest.members] == names[2:]


def test_every_member_is_pinned_by_size_and_sha256(built: Built):
    entries = {e.name: e.data for e in read_entries(built.path)}
    for m in built.manifest.members:
        assert len(entries[m.path]) == m.size
        assert hashlib.sha256(entries[m.path]).hexdigest() == m.sha256


def test_same_inputs_give_the_same_bytes(built: Built, vendor: PrivateKey, tmp_path: Path):
    other_dir = make_spec_dir(tmp_path / "elsewhere")
    with source_date_epoch():
        build_bundle(load_spec(other_dir), tmp_path / "again.tar", [vendor])
    assert (tmp_path / "again.tar").read_bytes() == built.path.read_bytes()


def test_weights_layer_is_deterministic_and_holds_model_json(built: Built):
    model = built.manifest.model("alpha")
    with tarfile.open(fileobj=io.BytesIO(_blob(built.path, model.weights_digest))) as layer:
        members = layer.getmembers()
        names = [m.name for m in members]
        assert names == ["models", "models/alpha", "models/alpha/1",
                         "models/alpha/1/extra", "models/alpha/1/extra/vocab.txt",
                         "models/alpha/1/model.json", "models/alpha/1/model.onnx"]
        assert {(m.uid, m.gid, m.uname, m.gname) for m in members} == {(0, 0, "", "")}
        assert {m.mtime for m in members} == {1_790_000_000}
        f = layer.extractfile("models/alpha/1/model.json")
        assert f is not None
        doc = json.loads(f.read())
    assert doc["name"] == "alpha" and doc["framework"] == "onnx" and doc["file"] == "model.onnx"
    assert model.path == "models/alpha/1"


def test_each_service_gets_an_image_with_labelled_weights_layers(built: Built):
    m = built.manifest
    svc_b = m.image("svc-b")
    assert svc_b.layers == [m.model("alpha").weights_digest, m.model("beta").weights_digest]
    config = json.loads(_blob(built.path, svc_b.config_digest))
    labels = config["config"]["Labels"]
    assert labels["appliance.model.beta.digest"] == m.model("beta").weights_digest
    assert labels["appliance.model.alpha.version"] == "1"
    assert config["rootfs"]["diff_ids"] == svc_b.layers
    assert m.model("alpha").image == "svc-a" and m.model("beta").image == "svc-b"
    assert [s.port for s in m.services] == [8000, 8001]
    assert m.model("alpha").provenance.code_commit == "c1"


def test_docker_manifest_and_oci_index_name_the_same_blobs(built: Built):
    index = _json_member(built.path, "index.json")
    docker = _json_member(built.path, "manifest.json")
    assert isinstance(index, dict) and isinstance(docker, list)
    for entry, img in zip(index["manifests"], built.manifest.images, strict=True):
        assert entry["digest"] == img.manifest_digest
        assert entry["annotations"]["org.opencontainers.image.ref.name"] == img.reference
    for entry, img in zip(docker, built.manifest.images, strict=True):
        assert entry["RepoTags"] == [img.reference]
        assert entry["Config"] == "blobs/sha256/" + img.config_digest[7:]
        assert entry["Layers"] == ["blobs/sha256/" + d[7:] for d in img.layers]


@pytest.mark.parametrize("kind", ["docker-archive", "oci-layout", "oci-tar", "gzip-archive"])
def test_runtime_image_layers_come_first_with_the_command_override(
        tmp_path: Path, vendor: PrivateKey, root: TrustRoot, kind: str):
    spec_dir = tmp_path / "spec"
    make_spec_dir(spec_dir)
    if kind == "docker-archive":
        ref = "archive: " + str(docker_archive(tmp_path / "rt.tar"))
    elif kind == "gzip-archive":
        ref = "archive: " + str(gzip_docker_archive(tmp_path / "rt.tar"))
    elif kind == "oci-layout":
        ref = "oci_layout: " + str(oci_layout(tmp_path / "layout"))
    else:
        ref = "archive: " + str(oci_tar(tmp_path / "layout", tmp_path / "rt-oci.tar"))
    body = (spec_dir / "appliance.yaml").read_text().replace(
        "models:\n", f"runtime_image:\n  {ref}\n  command: [python, -m, runtime, --models, "
        "/models]\nmodels:\n", 1)
    write_spec(spec_dir, body)
    out = tmp_path / "b.tar"
    manifest = build_bundle(load_spec(spec_dir / "appliance.yaml"), out, [vendor])
    verify_bundle(out, root, now=manifest.created_at, store=ContentStore(tmp_path / "s"))
    layers, _ = runtime_parts()
    img = manifest.image("svc-b")
    diff_ids = ["sha256:" + hashlib.sha256(x).hexdigest() for x in layers]
    config = json.loads(_blob(out, img.config_digest))
    assert config["rootfs"]["diff_ids"][:2] == diff_ids
    if kind != "gzip-archive":
        assert img.layers[:2] == diff_ids
    assert config["config"]["Cmd"] == ["python", "-m", "runtime", "--models", "/models"]
    assert config["config"]["Labels"]["vendor"] == "test"
    assert config["config"]["Env"] == ["PATH=/usr/bin"]
    assert config["rootfs"]["diff_ids"][2:] == img.layers[2:]
    assert len(config["history"]) == 4
    oci = json.loads(_blob(out, img.manifest_digest))
    assert {x["mediaType"] for x in oci["layers"][2:]} == {LAYER_MEDIA_TYPE}
    if kind == "gzip-archive":
        assert {x["mediaType"] for x in oci["layers"][:2]} == {GZIP_LAYER}
        if shutil.which("skopeo"):  # the composed image is still a valid one
            subprocess.run(["skopeo", "inspect", f"oci-archive:{out}:{img.reference}"],
                           check=True, capture_output=True)
    # Two services share the runtime layers: each blob is stored once.
    names = [e.name for e in read_entries(out)]
    assert len(names) == len(set(names))


def test_runtime_layer_that_does_not_match_its_digest_is_refused(tmp_path: Path,
                                                                 vendor: PrivateKey):
    layout = oci_layout(tmp_path / "layout")
    victim = next(p for p in (layout / "blobs" / "sha256").iterdir()
                  if p.stat().st_size > 1500)
    data = bytearray(victim.read_bytes())
    data[700] ^= 1
    victim.write_bytes(bytes(data))
    make_spec_dir(tmp_path / "spec")
    body = (tmp_path / "spec" / "appliance.yaml").read_text().replace(
        "models:\n", f"runtime_image:\n  oci_layout: {layout}\nmodels:\n", 1)
    write_spec(tmp_path / "spec", body)
    with pytest.raises(SpecError, match="does not match its digest"):
        build_bundle(load_spec(tmp_path / "spec" / "appliance.yaml"), tmp_path / "b.tar",
                     [vendor])
    assert not (tmp_path / "b.tar").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temp files left"


@pytest.mark.parametrize(("edit", "message"), [
    (lambda s: s.replace("name: test", "name: Bad Name"), "lowercase"),
    (lambda s: s.replace("sequence: 1", "sequence: 0"), "sequence"),
    (lambda s: s.replace("version: 1.0.0", "version: 1.0.0+git"), "image tag"),
    (lambda s: s.replace("path: models/beta", "path: models/nowhere"), "cannot read"),
    (lambda s: s.replace("models: [alpha, beta]", "models: [alpha, gamma]"), "unknown models"),
    (lambda s: s.replace("gpu: none", "gpu: maybe"), "gpu"),
    (lambda s: s.replace("expires_days: 30", "expires: 2001-01-01T00:00:00Z"), "not after"),
    (lambda s: s.replace("expires_days: 30", "expires: 2030-01-01"), "with a zone"),
    (lambda s: s + "runtime_image: {archive: missing.tar}\n", "does not exist"),
    (lambda s: s + "runtime_image: {archive: a.tar, engine: x}\n", "exactly one"),
    (lambda s: ": : :\n" + s, "YAML"),
    (lambda s: s.replace("models: [alpha]\n", "models: [beta]\n").replace(
        "models: [alpha, beta]", "models: [beta]"), "in no service"),
])
def test_bad_specs_are_refused_with_one_line(tmp_path: Path, edit, message: str):
    spec = make_spec_dir(tmp_path)
    spec.write_text(edit(spec.read_text()))
    with pytest.raises(SpecError, match=message) as info:
        load_spec(spec)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("change", "message"), [
    ({"file": "../beta/model.onnx"}, r'"file" must be a name inside the model directory'),
    ({"inputs": [{"name": "x", "datatype": "FLOAT", "shape": [-1, 4]}]}, "datatype 'FLOAT'"),
    ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 0]}]}, "shape must be"),
    ({"outputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}]}, "names must be unique"),
    ({"intra_op_threads": -1}, "intra_op_threads must be"),
    ({"prepack_weights": "yes"}, "prepack_weights must be true or false"),
])
def test_a_model_json_the_runtime_would_refuse_is_refused_at_build(tmp_path: Path, change,
                                                                   message: str):
    """The bundler checks model.json with the runtime's own rules, so a bundle never
    carries a model that only fails once installed."""
    spec = make_spec_dir(tmp_path)
    mj = tmp_path / "models" / "alpha" / "model.json"
    mj.write_text(json.dumps({**json.loads(mj.read_text()), **change}))
    with pytest.raises(SpecError, match=message) as info:
        load_spec(spec)
    assert str(info.value).startswith(f"model alpha: {mj}") and "\n" not in str(info.value)


def test_symlink_in_model_directory_is_refused(tmp_path: Path, vendor: PrivateKey):
    spec = make_spec_dir(tmp_path)
    (tmp_path / "models" / "beta" / "link").symlink_to("/etc/passwd")
    with pytest.raises(SpecError, match="not a regular file"):
        build_bundle(load_spec(spec), tmp_path / "b.tar", [vendor])


def test_default_services_one_per_model(tmp_path: Path, vendor: PrivateKey):
    spec = make_spec_dir(tmp_path)
    text = spec.read_text()
    spec.write_text(text[: text.index("services:")])
    m = build_bundle(load_spec(spec), tmp_path / "b.tar", [vendor])
    assert [(s.name, s.models, s.port) for s in m.services] == [
        ("alpha", ["alpha"], 8000), ("beta", ["beta"], 8001)]


def test_inspect_reads_without_trusting(built: Built):
    manifest, env = read_manifest_unverified(built.path)
    assert manifest == built.manifest
    assert len(env.signatures) == 1


def test_real_onnx_model_from_samples_bundles_and_verifies(tmp_path: Path, vendor: PrivateKey,
                                                           root: TrustRoot):
    from bundler.samples import make_mlp_onnx

    make_mlp_onnx(tmp_path / "models" / "mlp")
    spec = write_spec(tmp_path, "name: s\nversion: '1'\nsequence: 1\nmodels:\n"
                                "  - {name: mlp, path: models/mlp, max_batch_size: 4}\n")
    m = build_bundle(load_spec(spec), tmp_path / "b.tar", [vendor])
    v = verify_bundle(tmp_path / "b.tar", root, now=m.created_at)
    assert v.manifest.model("mlp").inputs[0].shape == (-1, 64)
    assert m.model("mlp").max_batch_size == 4


def test_hash_thread_or_not_gives_the_same_bytes(vendor: PrivateKey, root: TrustRoot,
                                                 tmp_path: Path, monkeypatch):
    import bundler.build

    spec = make_spec_dir(tmp_path / "spec", beta=bytes(range(256)) * 12000)  # 3 MiB
    outs = []
    for threaded in (True, False):
        monkeypatch.setattr(bundler.build, "hash_thread_pays", lambda t=threaded: t)
        with source_date_epoch():
            build_bundle(load_spec(spec), tmp_path / f"{threaded}.tar", [vendor])
        outs.append((tmp_path / f"{threaded}.tar").read_bytes())
    assert outs[0] == outs[1]
    verify_bundle(tmp_path / "True.tar", root, now=NOW)
