"""A service may name a fallback service for the front door: another service of the bundle
serving the same models. The spec and the signed manifest refuse anything else."""

from __future__ import annotations

import dataclasses

import pytest

from appliance.bundle.manifest import Manifest
from appliance.errors import ManifestError, SpecError
from bundler.build import build_bundle
from bundler.spec import load_spec
from signing import PrivateKey
from tests.bundle.conftest import make_spec_dir
from tests.bundle.kit import write_spec


def _spec(tmp_path, fallback_line: str):
    spec = make_spec_dir(tmp_path)
    text = spec.read_text().replace("    port: 8000\n", f"    port: 8000\n{fallback_line}", 1)
    return write_spec(tmp_path, text)


def test_a_fallback_serving_the_same_models_is_signed_into_the_manifest(
        tmp_path, vendor: PrivateKey):
    manifest = build_bundle(load_spec(_spec(tmp_path, "    fallback: svc-b\n")),
                            tmp_path / "b.tar", [vendor])
    by_name = {s.name: s for s in manifest.services}
    assert by_name["svc-a"].fallback == "svc-b" and by_name["svc-b"].fallback == ""
    again = Manifest.from_json(manifest.to_json())
    assert again == manifest
    assert b'"fallback":"svc-b"' in manifest.to_json()
    assert manifest.to_json().count(b'"fallback"') == 1  # none written where there is none


@pytest.mark.parametrize("line", ["    fallback: nowhere\n", "    fallback: svc-a\n",
                                  "    fallback: [svc-b]\n"])
def test_the_spec_refuses_a_fallback_that_is_not_another_service(tmp_path, line):
    with pytest.raises(SpecError, match="fallback"):
        load_spec(_spec(tmp_path, line))


def test_the_manifest_refuses_a_fallback_that_does_not_serve_the_same_models(
        tmp_path, vendor: PrivateKey):
    manifest = build_bundle(load_spec(_spec(tmp_path, "    fallback: svc-b\n")),
                            tmp_path / "b.tar", [vendor])
    b_only_beta = [dataclasses.replace(s, models=["beta"]) if s.name == "svc-b" else s
                   for s in manifest.services]
    with pytest.raises(ManifestError, match="does not serve"):
        dataclasses.replace(manifest, services=b_only_beta).validate()
    chained = [dataclasses.replace(s, fallback="svc-a") if s.name == "svc-b" else s
               for s in manifest.services]
    with pytest.raises(ManifestError, match="no fallback of its own"):
        dataclasses.replace(manifest, services=chained).validate()
