"""Names: what containerd's CRI looks images up by, and what Kubernetes accepts as names."""

from __future__ import annotations

import re

import pytest

from appliance.bundle.imageref import pinned_reference, split_reference
from appliance.errors import ManifestError
from appliance.k8s.names import dns_label, label_value

D = "sha256:" + "0" * 64


@pytest.mark.parametrize(("ref", "want"), [
    ("appliance/demo-mlp:1.0.0", ("docker.io/appliance/demo-mlp", "1.0.0", None)),
    ("busybox", ("docker.io/library/busybox", None, None)),
    ("localhost/x/y:2", ("localhost/x/y", "2", None)),
    ("registry.local:5000/team/m:v1", ("registry.local:5000/team/m", "v1", None)),
    (f"quay.io/a/b@{D}", ("quay.io/a/b", None, D)),
    (f"a/b:t@{D}", ("docker.io/a/b", "t", D)),
])
def test_references_normalize_as_containerd_does(ref: str, want: tuple[str, ...]) -> None:
    assert split_reference(ref) == want


@pytest.mark.parametrize("ref", ["", ":tag", "Upper/Case:1", "a//b", "a/b:"])
def test_bad_references_are_refused(ref: str) -> None:
    with pytest.raises(ManifestError, match="reference"):
        split_reference(ref)


def test_pinned_reference_drops_the_tag() -> None:
    assert pinned_reference("appliance/m:1", D) == f"docker.io/appliance/m@{D}"


@pytest.mark.parametrize("parts", [("demo", "mlp"), ("Demo", "m_l.p"), ("9x", "y"),
                                   ("d" * 50, "s" * 50), ("-", "--")])
def test_dns_labels_are_valid_rfc1035(parts: tuple[str, str]) -> None:
    name = dns_label(*parts)
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name), name
    assert len(name) <= 63


def test_long_dns_labels_stay_distinct() -> None:
    assert dns_label("d" * 60, "one") != dns_label("d" * 60, "two")


def test_label_values_are_valid() -> None:
    assert label_value("1.0.0+build/7") == "1.0.0-build-7"
    assert len(label_value("v" * 100)) == 63
