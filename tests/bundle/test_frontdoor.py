"""The front door's proxy image rides in the bundle unchanged, beside the service images."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import tarfile
from pathlib import Path

import pytest

from appliance.bundle import verify_bundle
from appliance.bundle.imagearchive import write_image_archive
from appliance.bundle.manifest import FRONTDOOR_IMAGE, Manifest, Service, image_blobs
from appliance.bundle.store import ContentStore
from appliance.cli import main
from appliance.errors import ManifestError, SpecError
from bundler.build import build_bundle
from bundler.spec import load_spec
from signing import PrivateKey, TrustRoot
from tests.bundle.conftest import Built, make_door_spec_dir, make_spec_dir
from tests.bundle.kit import NOW, assert_store_clean, read_entries, source_date_epoch, write_spec
from tests.bundle.runtimes import (
    gzip_docker_archive,
    gzip_proxy_docker_archive,
    proxy_oci_layout,
    proxy_parts,
    runtime_parts,
)

REPO = Path(__file__).resolve().parents[2]


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _blobs(path: Path) -> list[str]:
    return ["sha256:" + e.name.rsplit("/", 1)[1] for e in read_entries(path)
            if e.name.startswith("blobs/")]


def _member(path: Path, name: str) -> bytes:
    return next(e.data for e in read_entries(path) if e.name == name)


def test_frontdoor_image_is_carried_unchanged(door_built: Built, root: TrustRoot):
    m = verify_bundle(door_built.path, root, now=NOW).manifest
    door = m.frontdoor_image()
    assert door is not None and door.name == FRONTDOOR_IMAGE
    assert door.reference == "appliance/test-frontdoor:1.0.0"
    layers, config = proxy_parts()
    assert door.layers == [_sha(x) for x in layers]
    assert door.config_digest == _sha(config), "the config's bytes are the proxy's own"
    assert _member(door_built.path, "blobs/sha256/" + door.config_digest[7:]) == config
    oci = json.loads(_member(door_built.path, "blobs/sha256/" + door.manifest_digest[7:]))
    assert [x["digest"] for x in oci["layers"]] == door.layers
    assert oci["config"] == {"mediaType": "application/vnd.oci.image.config.v1+json",
                             "digest": door.config_digest, "size": len(config)}
    assert all(s.image != FRONTDOOR_IMAGE for s in m.services)
    assert all(x.image != FRONTDOOR_IMAGE for x in m.models)


def test_frontdoor_shares_the_base_layer_stored_once(door_built: Built):
    m = door_built.manifest
    door = m.frontdoor_image()
    assert door is not None
    base = _sha(runtime_parts()[0][0])
    assert door.layers[0] == base == m.image("svc-a").layers[0]
    blobs = _blobs(door_built.path)
    assert len(blobs) == len(set(blobs)) == len(image_blobs(m.images))
    assert blobs.count(base) == 1


def test_frontdoor_is_named_in_both_indexes(door_built: Built):
    door = door_built.manifest.frontdoor_image()
    assert door is not None
    index = json.loads(_member(door_built.path, "index.json"))
    named = [d for d in index["manifests"]
             if d["annotations"]["org.opencontainers.image.ref.name"] == door.reference]
    assert [d["digest"] for d in named] == [door.manifest_digest]
    docker = json.loads(_member(door_built.path, "manifest.json"))
    entry = next(e for e in docker if e["RepoTags"] == [door.reference])
    assert entry["Config"] == "blobs/sha256/" + door.config_digest[7:]
    assert entry["Layers"] == ["blobs/sha256/" + d[7:] for d in door.layers]


def test_same_inputs_give_the_same_bytes_with_a_front_door(door_built: Built,
                                                          vendor: PrivateKey, tmp_path: Path):
    spec = make_door_spec_dir(tmp_path)
    with source_date_epoch():
        build_bundle(load_spec(spec), tmp_path / "again.tar", [vendor])
    assert (tmp_path / "again.tar").read_bytes() == door_built.path.read_bytes()


def test_oci_source_keeps_its_own_image_manifest(tmp_path: Path, vendor: PrivateKey,
                                                 root: TrustRoot):
    spec = make_spec_dir(tmp_path)
    layout = proxy_oci_layout(tmp_path / "proxy-layout")
    write_spec(tmp_path, spec.read_text() + "frontdoor_image:\n  oci_layout: proxy-layout\n")
    m = build_bundle(load_spec(spec), tmp_path / "b.tar", [vendor])
    verify_bundle(tmp_path / "b.tar", root, now=m.created_at)
    door = m.frontdoor_image()
    assert door is not None
    source = json.loads((layout / "index.json").read_text())["manifests"][0]["digest"]
    assert door.manifest_digest == source, "the layout's manifest, not one written anew"
    # weights-only service images: the proxy brings every one of its layers itself
    assert set(door.layers).isdisjoint(m.image("svc-a").layers)


def test_gzip_layers_shared_by_runtime_and_proxy_are_stored_once(tmp_path: Path,
                                                                 vendor: PrivateKey,
                                                                 root: TrustRoot):
    # gzip'd docker-archive layers state no digest: found equal only by hashing first
    spec = make_spec_dir(tmp_path)
    gzip_docker_archive(tmp_path / "rt.tar")
    gzip_proxy_docker_archive(tmp_path / "proxy.tar")
    write_spec(tmp_path, spec.read_text().replace(
        "models:\n", "runtime_image: {archive: rt.tar}\nfrontdoor_image: {archive: proxy.tar}\n"
        "models:\n", 1))
    m = build_bundle(load_spec(spec), tmp_path / "b.tar", [vendor])
    verify_bundle(tmp_path / "b.tar", root, now=m.created_at)
    door = m.frontdoor_image()
    assert door is not None and door.layers[0] == m.image("svc-a").layers[0]
    blobs = _blobs(tmp_path / "b.tar")
    assert len(blobs) == len(set(blobs))


def test_weights_only_update_omits_every_proxy_blob(door_built: Built, vendor: PrivateKey,
                                                    root: TrustRoot, tmp_path: Path):
    d = tmp_path / "v2"
    spec = make_door_spec_dir(d, sequence=2, beta=b"new beta weights" * 40)
    with source_date_epoch():
        m = build_bundle(load_spec(spec), d / "delta.tar", [vendor], base=door_built.manifest)
    door = m.frontdoor_image()
    assert door is not None and door == door_built.manifest.frontdoor_image()
    carried = set(_blobs(d / "delta.tar"))
    proxy = {*door.layers, door.config_digest, door.manifest_digest}
    assert carried.isdisjoint(proxy), "no proxy blob travels again"
    assert m.model("beta").weights_digest in carried
    store = ContentStore(tmp_path / "site")
    verify_bundle(door_built.path, root, now=NOW, store=store)
    v = verify_bundle(d / "delta.tar", root, now=NOW, store=store, last_sequence=1)
    assert_store_clean(store)
    with open(tmp_path / "images.tar", "wb") as f:
        write_image_archive(f, store, [door])
    names = {e.name for e in read_entries(tmp_path / "images.tar")}
    assert {"blobs/sha256/" + x[7:] for x in proxy} <= names
    assert v.manifest.frontdoor_image() == door


_RT = "runtime_image: {archive: rt.tar}\n"


@pytest.mark.parametrize(("edit", "message"), [
    (lambda s: s.replace("name: svc-a", "name: frontdoor"), "reserved for the front door"),
    (lambda s: s + "frontdoor_image: {archive: proxy.tar, command: [sh]}\n",
     "frontdoor_image is carried unchanged"),
    (lambda s: s + "frontdoor_image: {archive: nope.tar}\n", r"make proxy-image"),
    (lambda s: s + "frontdoor_image: {archive: proxy.tar, oci_layout: x}\n",
     "frontdoor_image needs exactly one"),
    (lambda s: s + "frontdoor_image: proxy.tar\n", "frontdoor_image must be a mapping"),
])
def test_bad_frontdoor_specs_are_refused_with_one_line(tmp_path: Path, edit, message: str):
    spec = make_door_spec_dir(tmp_path)
    body = spec.read_text()
    body = body[:body.index("frontdoor_image:")] + body[body.index("models:\n"):]
    write_spec(tmp_path, edit(body))
    with pytest.raises(SpecError, match=message) as e:
        load_spec(spec)
    assert "\n" not in str(e.value)


def test_a_model_named_frontdoor_without_services_is_refused(tmp_path: Path):
    spec = make_spec_dir(tmp_path)
    body = spec.read_text()
    write_spec(tmp_path, body[:body.index("services:")].replace("name: alpha", "name: frontdoor"))
    with pytest.raises(SpecError, match="'frontdoor' takes the name reserved"):
        load_spec(spec)


def test_a_proxy_image_for_another_platform_is_refused(tmp_path: Path, vendor: PrivateKey):
    spec = make_door_spec_dir(tmp_path)
    write_spec(tmp_path, "platform: linux/arm64\n" + spec.read_text())
    with pytest.raises(SpecError, match="front door image is for linux/amd64, the bundle for "
                                        "linux/arm64"):
        build_bundle(load_spec(spec), tmp_path / "b.tar", [vendor])
    assert not (tmp_path / "b.tar").exists()


def test_a_damaged_proxy_layer_is_refused_and_leaves_no_bundle(tmp_path: Path,
                                                               vendor: PrivateKey):
    spec = make_spec_dir(tmp_path)
    layout = proxy_oci_layout(tmp_path / "proxy-layout")
    layer = layout / "blobs" / "sha256" / _sha(proxy_parts()[0][1])[7:]
    data = bytearray(layer.read_bytes())
    data[600] ^= 1
    layer.write_bytes(bytes(data))
    write_spec(tmp_path, spec.read_text() + "frontdoor_image:\n  oci_layout: proxy-layout\n")
    with pytest.raises(SpecError, match="front door image layer does not match its digest"):
        build_bundle(load_spec(spec), tmp_path / "b.tar", [vendor])
    assert not (tmp_path / "b.tar").exists()


def test_a_proxy_config_that_does_not_match_its_digest_is_refused(tmp_path: Path,
                                                                  vendor: PrivateKey):
    spec = make_spec_dir(tmp_path)
    layout = proxy_oci_layout(tmp_path / "proxy-layout")
    config = layout / "blobs" / "sha256" / _sha(proxy_parts()[1])[7:]
    config.write_bytes(config.read_bytes().replace(b"10002", b"00000"))
    write_spec(tmp_path, spec.read_text() + "frontdoor_image:\n  oci_layout: proxy-layout\n")
    with pytest.raises(SpecError, match=r"front door image .*config does not match its digest"):
        build_bundle(load_spec(spec), tmp_path / "b.tar", [vendor])


@pytest.mark.parametrize("field", ["service", "model"])
def test_manifest_refuses_a_service_or_model_on_the_frontdoor_image(door_built: Built,
                                                                     field: str):
    m = door_built.manifest
    if field == "service":
        bad = dataclasses.replace(m, services=[*m.services, Service("door", FRONTDOOR_IMAGE,
                                                                    ["alpha"])])
    else:
        bad = dataclasses.replace(m, models=[dataclasses.replace(
            m.models[0], image=FRONTDOOR_IMAGE), *m.models[1:]])
    with pytest.raises(ManifestError, match="front door's image"):
        Manifest.from_json(bad.to_json())


def test_verify_and_inspect_show_the_front_door(door_built: Built, built: Built,
                                                tmp_path: Path, root: TrustRoot,
                                                capsys: pytest.CaptureFixture[str]):
    (tmp_path / "root.json").write_bytes(root.to_json())
    door = door_built.manifest.frontdoor_image()
    assert door is not None
    assert main(["bundle", "verify", str(door_built.path), "--trust",
                 str(tmp_path / "root.json"), "--now", "2026-09-22T00:00:00Z"]) == 0
    assert f"front door {door.reference}" in capsys.readouterr().out
    assert main(["bundle", "inspect", str(door_built.path)]) == 0
    out = capsys.readouterr().out
    assert ("frontdoor the bundle carries the front door's proxy image "
            f"{door.reference} ({door.manifest_digest[:19]}, 2 layers)") in out
    assert main(["bundle", "inspect", str(built.path)]) == 0
    assert "frontdoor none" in capsys.readouterr().out


def test_the_real_proxy_image_rides_with_the_real_runtime(tmp_path: Path, vendor: PrivateKey,
                                                          root: TrustRoot):
    """`make runtime-image proxy-image`: the debootstrap base is carried once for both."""
    runtime, proxy = REPO / "out" / "runtime-image.tar", REPO / "out" / "proxy-image.tar"
    missing = [p.name for p in (runtime, proxy) if not p.is_file()]
    if missing:
        pytest.skip(f"{', '.join(missing)} not built here (make runtime-image proxy-image)")
    if shutil.disk_usage(tmp_path).free < 3 * (runtime.stat().st_size + proxy.stat().st_size):
        pytest.skip("not enough free disk for a bundle of the real images")
    spec = make_spec_dir(tmp_path)
    write_spec(tmp_path, spec.read_text().replace(
        "models:\n", f"runtime_image: {{archive: {runtime}}}\n"
        f"frontdoor_image: {{archive: {proxy}}}\nmodels:\n", 1))
    m = build_bundle(load_spec(spec), tmp_path / "b.tar", [vendor])
    verify_bundle(tmp_path / "b.tar", root, now=m.created_at)
    door = m.frontdoor_image()
    assert door is not None and door.layers[0] == m.image("svc-a").layers[0]
    blobs = _blobs(tmp_path / "b.tar")
    assert len(blobs) == len(set(blobs))
    with tarfile.open(proxy) as tar:
        saved = json.loads(tar.extractfile("manifest.json").read())[0]  # type: ignore[union-attr]
        config = tar.extractfile(saved["Config"]).read()  # type: ignore[union-attr]
    assert door.config_digest == _sha(config), "the proxy keeps the image id it was built with"


def test_demo_bundle_carries_the_proxy_image_it_is_given(tmp_path: Path):
    from bundler.demo import make_demo_bundle
    from tests.bundle.runtimes import docker_archive, proxy_docker_archive

    runtime = docker_archive(tmp_path / "runtime-image.tar")
    proxy = proxy_docker_archive(tmp_path / "proxy-image.tar")
    r = make_demo_bundle(tmp_path / "demo", runtime_archive=runtime, proxy_archive=proxy)
    door = r.verified.manifest.frontdoor_image()
    assert door is not None and door.reference == "appliance/demo-frontdoor:1.0.0"


def test_demo_serves_without_a_front_door_when_it_has_no_runtime_image():
    from appliance.cli.demo_site import proxy_image

    said: list[str] = []
    assert proxy_image(None, said.append) is None and said == []
