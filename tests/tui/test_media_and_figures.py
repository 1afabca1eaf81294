"""Finding bundles on media, and turning the runtime's /metrics into figures."""

from __future__ import annotations

import shutil

from installer_tui.figures import RuntimeFigures, p99_from_buckets, parse_metrics
from installer_tui.media import find_bundles
from tests.tui.kit import build_demo, key

METRICS = """\
# HELP runtime_requests_total Inference requests by outcome.
# TYPE runtime_requests_total counter
runtime_requests_total{{model="mlp",version="1",code="200"}} {n}
runtime_requests_total{{model="cnn",version="1",code="200"}} {n}
runtime_request_duration_seconds_bucket{{model="mlp",le="0.001"}} {fast}
runtime_request_duration_seconds_bucket{{model="mlp",le="0.01"}} {n}
runtime_request_duration_seconds_bucket{{model="mlp",le="+Inf"}} {n}
runtime_gpu_memory_used_bytes{{gpu="0"}} 1073741824
"""


def test_bundles_are_found_a_few_levels_down_and_split_ones_once(tmp_path, port):
    media = tmp_path / "media"
    whole = build_demo(media / "alice" / "USB1", 1, port, key(1))
    split_dir = media / "bob" / "USB2"
    split_dir.mkdir(parents=True)
    data = whole.read_bytes()
    for i, cut in enumerate(range(0, len(data), 8192), start=1):
        (split_dir / f"update.tar.{i:03d}").write_bytes(data[cut:cut + 8192])
    (media / "alice" / "USB1" / "readme.txt").write_text("not a bundle " * 100)
    (media / "alice" / "USB1" / "other.tar").write_bytes(b"\0" * 1024)
    shutil.copy(whole, media / "alice" / "USB1" / ".hidden.tar")
    shutil.copy(whole, media / "alice" / "USB1" / "scan-0001.dcm")  # not a bundle's name

    found = find_bundles([media, tmp_path / "not-mounted"])

    assert [b.path for b in found] == [whole, split_dir / "update.tar.001"]
    assert found[0].parts == 1 and found[0].size == len(data)
    assert found[1].parts == len(range(0, len(data), 8192)) and found[1].size == len(data)
    assert found[0].trust_root_beside is None


def _buckets(text: str) -> dict[float, float]:
    return {float(labels["le"].replace("+Inf", "inf")): v
            for labels, v in parse_metrics(text)["runtime_request_duration_seconds_bucket"]}


def test_rate_and_p99_come_from_differences_between_two_reads():
    after = METRICS.format(n=300, fast=100)
    assert sum(v for _, v in parse_metrics(after)["runtime_requests_total"]) == 600
    assert parse_metrics(after)["runtime_gpu_memory_used_bytes"] == [({"gpu": "0"}, 2.0**30)]
    before = _buckets(METRICS.format(n=100, fast=100))
    # all 200 new requests took between 1 and 10 ms: p99 is that bucket's bound
    assert p99_from_buckets(before, _buckets(after)) == 0.01
    assert p99_from_buckets(_buckets(after), _buckets(after)) is None  # nothing new


def test_runtime_figures_say_nothing_when_the_runtime_does_not_answer(port):
    figures = RuntimeFigures([f"http://127.0.0.1:{port}"])
    assert figures.sample() is None
    assert figures.sample() is None
    assert figures.history() == []


def test_log_export_defaults_to_the_stick_the_bundle_came_from(tmp_path, port):
    from appliance.site.gpu import GpuReport, RecordedProbe
    from appliance.site.layout import Site
    from installer_tui.config import InstallerConfig
    from tests.site.bundlekit import make_bundle, vendor
    media = tmp_path / "media"
    stick = media / "nurse" / "VENDOR-USB"
    stick.mkdir(parents=True)
    other = media / "aaa-other"  # sorts first: /media itself used to be the default
    other.mkdir()
    cfg = InstallerConfig(site=Site(tmp_path / "site"), engine=lambda s: None,  # type: ignore
                          gpu_probe=RecordedProbe(GpuReport()), media_roots=[media])
    assert cfg.default_export_dir() == media  # nothing on any stick yet
    bundle = make_bundle(stick, vendor(tmp_path), 1, port=port)
    assert cfg.default_export_dir() == stick  # found on the media
    cfg.opened_bundle = bundle
    assert cfg.default_export_dir() == stick
