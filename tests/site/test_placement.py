"""Placement over recorded NVML states: several GPUs, uneven load, none at all."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance.errors import PlacementError
from appliance.site.gpu import GpuReport, NvmlProbe, RecordedProbe
from appliance.site.placement import Placement, plan_placement
from modelcontract import GpuState
from tests.site.factory import manifest

STATES = Path(__file__).parent / "gpu_states"


def report(name: str) -> GpuReport:
    return RecordedProbe.from_file(STATES / f"{name}.json").probe()


def test_service_goes_to_gpu_with_most_free_memory_under_uneven_load():
    m = manifest([("mlp", [("mlp", 4000)], "preferred")])
    p = plan_placement(m, report("two_uneven"))
    s = p.for_service("mlp")
    assert (s.device, s.gpu_index, s.gpu_uuid) == ("gpu", 1, "GPU-1b")
    assert not p.cpu_only


def test_services_spread_largest_first_and_free_memory_is_consumed():
    m = manifest([("small", [("small", 1000)], "preferred"),
                  ("big", [("big", 20000)], "required"),
                  ("mid", [("mid", 11000)], "preferred"),
                  ("mid2", [("mid2", 11500)], "preferred")])
    p = plan_placement(m, report("four_l4"))
    where = {s.service: s.gpu_index for s in p.services}
    # big takes GPU0 (22000 free, lowest index on a tie); mid2 then GPU2 (22000);
    # mid: GPU1 12000 vs GPU2 10500 left -> GPU1; small: GPU2 (10500) over GPU1 (1000)
    assert where == {"big": 0, "mid2": 2, "mid": 1, "small": 2}
    assert [s.service for s in p.services] == ["small", "big", "mid", "mid2"]


def test_plan_that_does_not_fit_is_refused_naming_model_need_and_free():
    m = manifest([("llm", [("enc", 30000), ("dec", 12000)], "preferred")])
    with pytest.raises(PlacementError) as e:
        plan_placement(m, report("two_uneven"))
    msg = str(e.value)
    assert "enc needs 30000 MiB" in msg and "dec needs 12000 MiB" in msg
    assert "42000 MiB in all" in msg
    assert "GPU 0 (NVIDIA A100-SXM4-40GB) has 6000 MiB free" in msg
    assert "GPU 1 (NVIDIA A100-SXM4-40GB) has 38000 MiB free" in msg


def test_second_service_refused_when_first_took_the_memory():
    m = manifest([("a", [("a", 30000)], "required"), ("b", [("b", 9000)], "required")])
    with pytest.raises(PlacementError, match=r"'b' does not fit.*GPU 1 .* has 8000 MiB free"):
        plan_placement(m, report("two_uneven"))


def test_no_gpu_places_on_cpu_and_says_so_plainly():
    m = manifest([("mlp", [("mlp", 2000)], "preferred"), ("cnn", [("cnn", 0)], "none")])
    p = plan_placement(m, report("none"))
    assert p.cpu_only
    assert all(s.device == "cpu" for s in p.services)
    lines = p.lines()
    assert "no GPU on this server" in lines[0] and "NVML did not start" in lines[0]
    assert "GPU policy is none" in lines[1]
    assert lines[-1].startswith("All services run on the CPU")


def test_gpu_required_without_gpu_is_refused():
    m = manifest([("mlp", [("mlp", 100)], "required")])
    with pytest.raises(PlacementError, match="requires a GPU but this server has none"):
        plan_placement(m, report("none"))


def test_placement_round_trips_through_json():
    m = manifest([("mlp", [("mlp", 4000)], "preferred")])
    p = plan_placement(m, report("two_uneven"))
    assert Placement.from_dict(json.loads(p.to_json())) == p


def test_gpu_table_rows_carry_driver_and_cuda():
    rows = report("two_uneven").table()
    assert rows[1] == ("1", "NVIDIA A100-SXM4-40GB", "40960", "38000", "3%", "550.54.15", "12.4")


def test_malformed_recorded_state_is_refused(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text('{"gpus": [{"index": 0}]}')
    with pytest.raises(PlacementError, match="malformed"):
        RecordedProbe.from_file(p)


def test_nvml_probe_on_a_server_without_driver_reports_why():
    r = NvmlProbe().probe()
    # This machine has no NVIDIA driver; on one that has, the probe must list GPUs.
    assert r.gpus or r.unavailable


def test_nvml_probe_reads_devices_through_pynvml(monkeypatch):
    """NVML itself cannot run here; its answers are stood in for at the pynvml calls."""
    import types

    import pynvml

    mem = [types.SimpleNamespace(total=40960 * 2**20, free=6000 * 2**20),
           types.SimpleNamespace(total=40960 * 2**20, free=38000 * 2**20)]

    def util(h):
        if h == 1:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return types.SimpleNamespace(gpu=87)

    calls = {"nvmlInit": lambda: None, "nvmlShutdown": lambda: None,
             "nvmlSystemGetDriverVersion": lambda: b"550.54.15",
             "nvmlSystemGetCudaDriverVersion": lambda: 12040,
             "nvmlDeviceGetCount": lambda: 2, "nvmlDeviceGetHandleByIndex": lambda i: i,
             "nvmlDeviceGetMemoryInfo": lambda h: mem[h],
             "nvmlDeviceGetUtilizationRates": util,
             "nvmlDeviceGetTemperature": lambda h, _sensor: 41 + h,
             "nvmlDeviceGetName": lambda h: "NVIDIA A100-SXM4-40GB",
             "nvmlDeviceGetUUID": lambda h: f"GPU-{h}"}
    for name, fn in calls.items():
        monkeypatch.setattr(pynvml, name, fn)
    r = NvmlProbe().probe()
    assert (r.driver, r.cuda, r.unavailable) == ("550.54.15", "12.4", "")
    assert r.gpus == [GpuState(0, "NVIDIA A100-SXM4-40GB", 40960, 6000, 87, 41.0, uuid="GPU-0"),
                      GpuState(1, "NVIDIA A100-SXM4-40GB", 40960, 38000, 0, 42.0,
                               uuid="GPU-1")]


def test_nvml_that_does_not_start_gives_an_empty_report_saying_why(monkeypatch):
    import pynvml

    def fail():
        raise pynvml.NVMLError(pynvml.NVML_ERROR_DRIVER_NOT_LOADED)

    monkeypatch.setattr(pynvml, "nvmlInit", fail)
    r = NvmlProbe().probe()
    assert r.gpus == [] and r.unavailable.startswith("NVML did not start (Driver Not Loaded)")
