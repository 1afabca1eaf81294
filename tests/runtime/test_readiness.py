"""Before warm-up the server is live but not ready, and says so as `{"error": ...}`."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx

from modelcontract import discover
from runtime.app import V2App
from runtime.gpu import RecordedSource
from runtime.settings import Settings
from runtime.state import ModelRegistry


def test_not_ready_until_models_warm_up(onnx_models_dir: Path, tmp_path: Path) -> None:
    settings = Settings(models=onnx_models_dir, data_dir=tmp_path)
    registry = ModelRegistry(settings, discover(onnx_models_dir), gpu=RecordedSource(None),
                             log_sink=None, history=None)
    app = V2App(registry)  # lifespan not run: nothing has loaded

    async def go() -> list[tuple[int, dict[str, object]]]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            out = []
            for method, path in [("GET", "/v2/health/live"), ("GET", "/v2/health/ready"),
                                 ("GET", "/v2/models/mlp/ready"),
                                 ("POST", "/v2/models/mlp/infer")]:
                r = await c.request(method, path, content=b"{}")
                out.append((r.status_code, json.loads(r.content)))
            return out

    live, ready, model_ready, infer = asyncio.run(go())
    assert live == (200, {"live": True})
    assert ready[0] == 503 and "warming up mlp:1" in str(ready[1]["error"])
    assert model_ready[0] == 503 and set(model_ready[1]) == {"error"}
    assert infer[0] == 503 and "not ready" in str(infer[1]["error"])
