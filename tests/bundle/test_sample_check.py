"""The bundler refuses a signed sample that does not fit its model, in one line."""

from __future__ import annotations

import pytest
import yaml

from appliance.errors import SpecError
from tests.site.bundlekit import make_bundle, sample, vendor

GOOD = sample([1, 2], [2, 4])


def _with(**change):
    s = {"inputs": {k: dict(v) for k, v in GOOD["inputs"].items()},
         "outputs": {k: dict(v) for k, v in GOOD["outputs"].items()},
         "tolerance": GOOD["tolerance"]}
    for path, value in change.items():
        side, name, field = path.split("__")
        if field == "whole":
            s[side][name] = value
        else:
            s[side][name][field] = value
    return s


BAD = {
    "not a tensor mapping": (_with(inputs__x__whole=[[1, 2]]), "must be a mapping of datatype"),
    "unknown input": ({**GOOD, "inputs": {"z": GOOD["inputs"]["x"]}}, "input 'z' is not one"),
    "unknown output": ({**GOOD, "outputs": {"q": GOOD["outputs"]["y"]}}, "output 'q' is not"),
    "wrong datatype": (_with(inputs__x__datatype="INT64"), "datatype 'INT64', but the model"),
    "wrong shape": (_with(inputs__x__shape=[1, 3]), r"shape \[1, 3\] does not fit"),
    "too few values": (_with(inputs__x__data=[1]), "1 values for shape"),
    "boolean as FP32": (_with(inputs__x__data=[True, 2]), "True is not a number"),
    "over FP32": (_with(outputs__y__data=[1e39, 2]), "does not fit FP32"),
    "negative tolerance": ({**GOOD, "tolerance": -1}, "tolerance -1.0 must be"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_the_bundler_refuses_a_sample_that_does_not_fit_the_model(tmp_path, case):
    bad, message = BAD[case]
    with pytest.raises(SpecError, match=message) as info:
        make_bundle(tmp_path, vendor(tmp_path), 1, samples=[bad])
    assert "model mlp sample 0" in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "bundle-1.tar").exists()


def test_a_good_sample_is_signed_into_the_bundle(tmp_path):
    from appliance.bundle import read_manifest_unverified
    m, _ = read_manifest_unverified(make_bundle(tmp_path, vendor(tmp_path), 1, samples=[GOOD]))
    assert m.models[0].samples[0].inputs == GOOD["inputs"]


def test_bundle_build_names_the_bad_sample_in_one_line(tmp_path, capsys):
    from appliance.cli import main
    v = vendor(tmp_path)
    with pytest.raises(SpecError):
        make_bundle(tmp_path, v, 1, samples=[_with(inputs__x__whole=[[1, 2]])])
    key = tmp_path / "key.pem"
    key.write_bytes(v.key.to_pem())
    spec = tmp_path / "spec-1" / "appliance.yaml"
    assert yaml.safe_load(spec.read_text())["models"][0]["samples"]
    code = main(["bundle", "build", "-f", str(spec), "-o", str(tmp_path / "b.tar"),
                 "--key", str(key), "-q"])
    err = capsys.readouterr().err
    assert code != 0 and err.count("\n") == 1
    assert "model mlp sample 0 input 'x': must be a mapping of datatype" in err
