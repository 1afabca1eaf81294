"""Where models run, asked of a real runtime (with the site token), and the one line that
names the likely cause when a `gpu: required` service runs on the CPU."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from appliance.bundle.manifest import Service
from appliance.site.devices import ModelDevice, ask_devices, likely_cause, refusal, site_token
from tests.runtime.conftest import start_server

REQUIRED = Service("seg", "runtime", ["unet"], gpu="required")
PREFERRED = Service("seg", "runtime", ["unet"], gpu="preferred")


def on_cpu(cause: str, detail: str = "") -> ModelDevice:
    return ModelDevice("unet", "cpu", cause, detail)


@pytest.mark.parametrize(("cause", "container", "words"), [
    ("no-gpu-visible", True, "NVIDIA container toolkit or its CDI spec"),
    ("no-gpu-visible", False, "NVIDIA driver or its NVML library"),
    ("no-cuda-provider", True, "runtime image is the CPU variant"),
    ("cuda-init-failed", True, "driver 470.82, CUDA 11.4 is likely older"),
    ("no-gpu-memory", True, "too little free memory"),
    ("", True, "does not say why"),
])
def test_each_cause_names_what_to_do(cause: str, container: bool, words: str) -> None:
    line = refusal(REQUIRED, [ModelDevice("unet", "cuda:0"), on_cpu(cause, "seen")],
                   container=container, driver="470.82", cuda="11.4")
    assert line is not None and "\n" not in line
    assert line.startswith("service 'seg' requires a GPU but model 'unet' runs on the CPU: ")
    assert words in line


def test_only_required_services_on_the_cpu_are_refused() -> None:
    assert refusal(PREFERRED, [on_cpu("no-gpu-visible")], container=True) is None
    assert refusal(REQUIRED, [ModelDevice("unet", "cuda:1")], container=True) is None
    # a runtime that did not answer is the health wait's business, not a GPU refusal
    assert refusal(REQUIRED, [ModelDevice("unet", "?")], container=True) is None
    assert "toolkit" in likely_cause(on_cpu("no-gpu-visible"), container=True)


@pytest.mark.slow
def test_devices_are_asked_of_the_runtime_with_the_site_token(tmp_path: Path) -> None:
    from bundler.samples import make_mlp_onnx
    models_dir = tmp_path / "models"
    make_mlp_onnx(models_dir / "mlp" / "1")
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-site-token\n")
    os.chmod(token_file, 0o600)
    server = start_server(models_dir, tmp_path / "data", token="s3cret-site-token",
                          extra_env={"RUNTIME_DEVICE": "cpu"})
    try:
        assert site_token(tmp_path) == "s3cret-site-token"
        assert site_token(tmp_path / "nowhere") == ""
        with_token = ask_devices(server.url, ["mlp", "nosuch"], site_token(tmp_path))
        assert with_token == [ModelDevice("mlp", "cpu", "cpu-requested",
                                          "the runtime was started with device cpu"),
                              ModelDevice("nosuch", "?")]
        assert ask_devices(server.url, ["mlp"]) == [ModelDevice("mlp", "?")]  # 401 without
    finally:
        server.stop()
