"""A service's GPU policy reaches the runtime: `required` on the CPU stays up but not ready
and says why; `preferred` serves on the CPU and says why in the model's metadata."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx
import pytest

from modelcontract import GpuState, discover
from runtime.app import V2App
from runtime.errors import SettingsError
from runtime.gpu import GpuSource, RecordedSource
from runtime.settings import Settings, from_args
from runtime.state import ModelRegistry

GPU = GpuState(0, "L4", 23034, 22000, 0.0, 40.0)


def _has_cuda_provider() -> bool:
    import onnxruntime

    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


def _settle(models: Path, tmp: Path, policy: str, gpu: GpuSource
            ) -> tuple[ModelRegistry, list[tuple[int, dict[str, object]]]]:
    """Start a registry under `policy`, wait until it is ready or refused, ask it over V2."""
    settings = Settings(models=models, data_dir=tmp, gpu_policy=policy)
    registry = ModelRegistry(settings, discover(models), gpu=gpu, log_sink=None, history=None)
    app = V2App(registry)

    async def go() -> list[tuple[int, dict[str, object]]]:
        await registry.start(asyncio.get_running_loop())
        deadline = time.monotonic() + 30
        while not (registry.ready or registry.failure):
            assert time.monotonic() < deadline, "neither ready nor refused"
            await asyncio.sleep(0.02)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            out = []
            for path in ("/v2/health/ready", "/v2/models/mlp"):
                r = await c.get(path)
                out.append((r.status_code, json.loads(r.content)))
        await registry.stop()
        return out

    return registry, asyncio.run(go())


def test_required_without_a_visible_gpu_is_not_ready_and_says_why(
        onnx_models_dir: Path, tmp_path: Path) -> None:
    registry, [(ready, body), (meta, doc)] = _settle(onnx_models_dir, tmp_path, "required",
                                                     RecordedSource(None))
    assert not registry.ready
    assert ready == 503 and "gpu required" in str(body["error"])
    assert "no-gpu-visible" in str(body["error"])
    assert meta == 200 and doc["device"] == "cpu"
    assert doc["cpu_reason"] == {"cause": "no-gpu-visible",
                                 "detail": "NVML unavailable (recorded)"}
    # refused before loading: no session was opened for nothing
    assert registry.get("mlp", None).backend is None


def test_required_with_a_gpu_but_no_cuda_provider_names_the_image(
        onnx_models_dir: Path, tmp_path: Path) -> None:
    if _has_cuda_provider():
        pytest.skip("this onnxruntime has a CUDA provider: the model would run on the GPU")
    registry, [(ready, body), (_, doc)] = _settle(onnx_models_dir, tmp_path, "required",
                                                  RecordedSource([GPU]))
    assert not registry.ready
    assert ready == 503 and "no-cuda-provider" in str(body["error"])
    assert doc["device"] == "cpu"
    assert isinstance(doc["cpu_reason"], dict)
    assert doc["cpu_reason"]["cause"] == "no-cuda-provider"
    assert "has no CUDA provider" in doc["cpu_reason"]["detail"]


def test_preferred_serves_on_the_cpu_and_says_why(onnx_models_dir: Path,
                                                  tmp_path: Path) -> None:
    registry, [(ready, _), (_, doc)] = _settle(onnx_models_dir, tmp_path, "preferred",
                                               RecordedSource(None))
    assert registry.ready and ready == 200
    assert doc["device"] == "cpu" and doc["cpu_reason"] == {
        "cause": "no-gpu-visible", "detail": "NVML unavailable (recorded)"}


def test_policy_none_runs_on_the_cpu_without_a_reason(onnx_models_dir: Path,
                                                      tmp_path: Path) -> None:
    registry, [(ready, _), (_, doc)] = _settle(onnx_models_dir, tmp_path, "none",
                                               RecordedSource([GPU]))
    assert registry.ready and ready == 200
    assert doc["device"] == "cpu" and doc["cpu_reason"] is None


def test_gpu_policy_comes_from_the_environment_and_flags() -> None:
    assert from_args([], {"RUNTIME_GPU_POLICY": "required"}).gpu_policy == "required"
    assert from_args(["--gpu-policy", "none"], {}).gpu_policy == "none"
    assert from_args([], {}).gpu_policy == "preferred"
    with pytest.raises(SettingsError, match="gpu_policy 'sometimes' is not one of"):
        from_args([], {"RUNTIME_GPU_POLICY": "sometimes"})
