"""Preflight lines: each check passes, warns or fails with what to do."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import cast

from appliance.bundle.manifest import Member
from appliance.site.engine import Engine
from appliance.site.gpu import GpuReport
from appliance.site.layout import Site
from appliance.site.preflight import (
    check_clock,
    check_disk,
    check_engine,
    check_gpu_runtime,
    check_gpus,
    check_trust,
)
from modelcontract import GpuState
from signing import PrivateKey, TrustRoot
from tests.site.factory import manifest

GPUS = GpuReport([GpuState(0, "NVIDIA L4", 23034, 22000, uuid="GPU-a")], "550.54", "12.4")


class FakeEngine:
    """Only the two answers preflight asks of an engine."""

    name = "docker"

    def __init__(self, gpu: bool) -> None:
        self.gpu = gpu

    def ping(self) -> str:
        return "Docker 20.10.24"

    def gpu_runtime(self) -> bool:
        return self.gpu


def fake_engine(gpu: bool) -> Engine:
    # deliberately partial: check_gpu_runtime asks only `name` and `gpu_runtime()`
    return cast(Engine, FakeEngine(gpu))


def with_blobs(m, sizes):
    members = [Member(f"blobs/sha256/{str(i) * 64}", s, str(i) * 64)
               for i, s in enumerate(sizes)]
    return replace(m, members=members)


def test_disk_counts_only_blobs_not_yet_in_the_store(tmp_path):
    site = Site(tmp_path)
    m = manifest([("mlp", [("mlp", 0)], "preferred")])
    d = site.store.add_bytes(b"x" * 100)
    hexd = d.removeprefix("sha256:")
    m = replace(m, members=[Member(f"blobs/sha256/{hexd}", 100, hexd),
                            Member("blobs/sha256/" + "1" * 64, 5 * 1024**2, "1" * 64)])
    c = check_disk(m, site.store)
    assert c.level == "pass" and c.message.startswith("5.0 MiB needed")


def test_disk_fails_when_the_blobs_do_not_fit(tmp_path):
    m = with_blobs(manifest([("mlp", [("mlp", 0)], "preferred")]), [10 * 1024**5])
    c = check_disk(m, Site(tmp_path).store)
    assert c.level == "fail" and "free" in c.message and "run again" in c.message


def test_trust_root_missing_unreadable_and_present(tmp_path):
    c, root = check_trust(tmp_path / "root.json")
    assert (c.level, root) == ("fail", None) and "pass --trust" in c.message
    (tmp_path / "root.json").write_text("{}")
    assert check_trust(tmp_path / "root.json")[0].level == "fail"
    key = PrivateKey.generate()
    (tmp_path / "root.json").write_bytes(TrustRoot.create([key.public_key]).to_json())
    c, root = check_trust(tmp_path / "root.json")
    assert c.level == "pass" and root is not None and "1 of 1 key" in c.message


def test_gpu_lines_for_found_missing_and_required():
    pref = manifest([("mlp", [("mlp", 100)], "preferred")])
    req = manifest([("mlp", [("mlp", 100)], "required")])
    none = GpuReport(unavailable="NVML did not start")
    assert check_gpus(GPUS, pref).message == "1 GPU(s) (NVIDIA L4), driver 550.54, CUDA 12.4"
    assert check_gpus(none, pref).level == "warn"
    assert "services will run on the CPU" in check_gpus(none, pref).message
    assert check_gpus(none, req).level == "fail"


def test_nvidia_container_runtime_needed_only_when_gpus_are_wanted():
    req = manifest([("mlp", [("mlp", 100)], "required")])
    pref = manifest([("mlp", [("mlp", 100)], "preferred")])
    cpu = manifest([("mlp", [("mlp", 0)], "none")])
    assert check_gpu_runtime(fake_engine(False), GPUS, cpu).level == "pass"
    assert check_gpu_runtime(fake_engine(True), GPUS, req).level == "pass"
    fail = check_gpu_runtime(fake_engine(False), GPUS, req)
    assert fail.level == "fail" and "nvidia-container-toolkit" in fail.message
    assert check_gpu_runtime(fake_engine(False), GPUS, pref).level == "warn"


def test_clock_plausibility_and_expiry():
    m = manifest([("mlp", [("mlp", 0)], "preferred")])  # made 2026-01-01, expires 2027-01-01
    assert check_clock(m, datetime(2026, 6, 1, tzinfo=UTC), False).level == "pass"
    early = check_clock(m, datetime(2025, 6, 1, tzinfo=UTC), False)
    assert early.level == "fail" and "before the bundle was made" in early.message
    assert "set the correct time" in check_clock(m, datetime(1970, 1, 2, tzinfo=UTC),
                                                 False).message
    late = check_clock(m, datetime(2027, 6, 1, tzinfo=UTC), False)
    assert late.level == "fail" and "--allow-expired" in late.message
    assert check_clock(m, datetime(2027, 1, 20, tzinfo=UTC), True).level == "warn"


def test_allow_expired_reaches_only_the_stated_days_past_expiry():
    from datetime import timedelta
    m = manifest([("mlp", [("mlp", 0)], "preferred")])  # expires 2027-01-01
    # five months past expiry: the default 30 days of --allow-expired do not reach it
    late = check_clock(m, datetime(2027, 6, 1, tzinfo=UTC), True)
    assert late.level == "fail"
    assert "expired 151 days ago" in late.message and "more than the 30 days" in late.message
    assert check_clock(m, datetime(2027, 6, 1, tzinfo=UTC), True,
                       timedelta(days=200)).level == "warn"


def test_unreachable_engine_is_a_fail_line(tmp_path):
    from appliance.engines.docker import DockerEngine
    eng = DockerEngine(Site(tmp_path), base_url=f"unix://{tmp_path}/none.sock")
    c = check_engine(eng)
    assert c.level == "fail" and c.line().startswith("FAIL  engine: the container engine")
