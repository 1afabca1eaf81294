"""A GPU assigned on a box whose onnxruntime has no CUDA provider runs on CPU, and GPU
figures from recorded NVML states reach /metrics."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from modelcontract import GpuState, discover
from runtime.gpu import RecordedSource
from runtime.history import MetricsHistory
from runtime.metrics import Metrics
from runtime.settings import Settings
from runtime.state import ModelRegistry

GPU = GpuState(0, "A100", 40960, 30000, 37.0, 55.0)


def test_assigned_gpu_without_cuda_provider_falls_back_to_cpu(
        onnx_models_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="runtime")
    settings = Settings(models=onnx_models_dir, data_dir=tmp_path)
    registry = ModelRegistry(settings, discover(onnx_models_dir), gpu=RecordedSource([GPU]),
                             log_sink=None, history=None)

    async def go() -> str:
        await registry.start(asyncio.get_running_loop())
        deadline = time.monotonic() + 30
        while not registry.ready:
            assert registry.failure is None, registry.failure
            assert time.monotonic() < deadline, "models never became ready"
            await asyncio.sleep(0.02)
        device = registry.get("mlp", None).device
        await registry.stop()
        return device

    device = asyncio.run(go())
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        assert device == "cuda:0"
    else:
        assert device == "cpu"
        assert "no CUDA provider" in caplog.text and "on cuda:0" in caplog.text


def test_gpu_figures_are_exported_when_present() -> None:
    m = Metrics()
    m.gpus = [GPU]
    fams = {f.name: f for f in text_string_to_metric_families(m.render())}
    util = fams["runtime_gpu_utilization_percent"].samples[0]
    assert util.labels == {"gpu": "0"} and util.value == 37.0
    used = fams["runtime_gpu_memory_used_bytes"].samples[0].value
    assert used == (40960 - 30000) * 1024 * 1024
    assert fams["runtime_gpu_temperature_celsius"].samples[0].value == 55.0


def test_gpu_gauges_and_model_devices_reach_metrics_and_history_with_models_on_cpu(
        onnx_models_dir: Path, tmp_path: Path) -> None:
    settings = Settings(models=onnx_models_dir, data_dir=tmp_path, device="cpu",
                        history_interval_s=0.1)
    history = MetricsHistory(tmp_path / "history", 1 << 20, 3600)
    registry = ModelRegistry(settings, discover(onnx_models_dir), gpu=RecordedSource([GPU]),
                             log_sink=None, history=history)

    async def go() -> str:
        await registry.start(asyncio.get_running_loop())
        deadline = time.monotonic() + 30
        while not (registry.ready and any(s["gpus"] for s in history.read())):
            assert registry.failure is None, registry.failure
            assert time.monotonic() < deadline, "no ready model and GPU history sample"
            await asyncio.sleep(0.02)
        text = registry.render_metrics()
        await registry.stop()
        return text

    text = asyncio.run(go())
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    temp = fams["runtime_gpu_temperature_celsius"].samples[0]
    assert temp.labels == {"gpu": "0"} and temp.value == 55.0
    ready = fams["runtime_model_ready"].samples[0]
    assert ready.labels == {"model": "mlp", "version": "1", "device": "cpu"}
    sample = next(s for s in history.read() if s["gpus"])
    assert sample["gpus"][0]["utilization_pct"] == 37.0
    assert sample["gpus"][0]["temperature_c"] == 55.0
