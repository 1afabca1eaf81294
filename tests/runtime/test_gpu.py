"""GPU choice over recorded NVML states: most free memory that fits, CPU otherwise."""

from __future__ import annotations

import logging

import pytest

from modelcontract import GpuState
from runtime.gpu import MIB, NvmlSource, RecordedSource, choose_device, plan_devices

A100 = GpuState(0, "A100", 40960, 30000, 12.0, 40.0)
T4 = GpuState(1, "T4", 15360, 15000, 0.0, 35.0)
BUSY = GpuState(2, "A100", 40960, 2000, 99.0, 80.0)


def test_choose_picks_most_free_memory_that_fits() -> None:
    assert choose_device([A100, T4, BUSY], 1000) == 0
    assert choose_device([T4, BUSY], 1000) == 1
    assert choose_device([A100, T4], 35000) is None
    assert choose_device([], 0) is None


def test_plan_takes_placed_memory_off_the_device() -> None:
    source = RecordedSource([GpuState(0, "g0", 16000, 10000), GpuState(1, "g1", 16000, 9000)])
    plan = plan_devices([("a:1", 8000), ("b:1", 6000), ("c:1", 5000)], source)
    # a (largest) on g0 -> 2000 left; b fits only g1 -> 3000 left; c fits nowhere.
    assert plan == {"a:1": "cuda:0", "b:1": "cuda:1", "c:1": "cpu"}


def test_no_nvml_means_cpu_with_one_clear_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="runtime")
    plan = plan_devices([("a:1", 0), ("b:1", 100)], RecordedSource(None))
    assert plan == {"a:1": "cpu", "b:1": "cpu"}
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "no GPU" in lines[0] and "CPU" in lines[0]


def test_no_device_means_cpu(caplog: pytest.LogCaptureFixture) -> None:
    assert plan_devices([("a:1", 0)], RecordedSource([])) == {"a:1": "cpu"}
    assert "no GPU" in caplog.text


def test_device_setting_cpu_and_pinned_cuda() -> None:
    source = RecordedSource([A100, T4])
    assert plan_devices([("a:1", 10)], source, "cpu") == {"a:1": "cpu"}
    assert plan_devices([("a:1", 10)], source, "cuda:1") == {"a:1": "cuda:1"}


def test_real_nvml_on_this_box_degrades_cleanly() -> None:
    # No NVIDIA driver here: the real source must raise our error, and the plan is CPU.
    plan = plan_devices([("a:1", 0)], NvmlSource())
    assert plan["a:1"] in ("cpu", "cuda:0")


def test_nvml_board_without_utilisation_or_temperature_is_still_a_gpu(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """NVML cannot run here; its answers are stood in for at the pynvml calls. A MIG or
    vGPU board refuses utilisation and temperature: it must still count as a GPU."""
    import types

    import pynvml

    def refuse(*_a: object) -> None:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)

    calls = {"nvmlInit": lambda: None, "nvmlDeviceGetCount": lambda: 1,
             "nvmlDeviceGetHandleByIndex": lambda i: i,
             "nvmlDeviceGetMemoryInfo": lambda h: types.SimpleNamespace(
                 total=20480 * MIB, free=10240 * MIB),
             "nvmlDeviceGetName": lambda h: b"NVIDIA A100 MIG 2g.20gb",
             "nvmlDeviceGetUtilizationRates": refuse, "nvmlDeviceGetTemperature": refuse}
    for name, fn in calls.items():
        monkeypatch.setattr(pynvml, name, fn)
    assert NvmlSource().devices() == [GpuState(0, "NVIDIA A100 MIG 2g.20gb", 20480, 10240,
                                               0.0, 0.0)]
    assert plan_devices([("a:1", 100)], NvmlSource()) == {"a:1": "cuda:0"}
