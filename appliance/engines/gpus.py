"""GPUs into containers: which way an engine takes them, and a service's part of the spec.

Three ways, one per kind of engine:

- Podman: CDI devices (`nvidia.com/gpu=<uuid>`, from `nvidia-ctk cdi generate`)
  through its libpod API (`appliance.engines.libpod`). Its Docker-compatible API
  accepts a device request and drops it: the container starts with no GPU.
- Docker with CDI (25 and newer, `CDISpecDirs` in `docker info`): a device request
  with the `cdi` driver naming the same CDI device.
- Docker with the NVIDIA container toolkit: a device request with the `nvidia`
  driver for the placed GPU's UUID; dockerd then runs `nvidia-container-runtime-hook`
  with `NVIDIA_VISIBLE_DEVICES` set to it.

A service placed on the CPU gets `NVIDIA_VISIBLE_DEVICES=void`, so a default
NVIDIA runtime hands it no GPU either.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from appliance.site.engine import Launch
from appliance.site.preflight import CDI_DIRS, CDI_KIND, cdi_specs

GpuMode = Literal["nvidia", "cdi", "podman-cdi"]
CDI_DEVICES = "cdi_devices"  # spec key the libpod path takes; never given to the docker SDK


def is_podman(version: dict[str, Any]) -> bool:
    """Whether `docker version`'s answer comes from Podman."""
    return any("Podman" in str(c.get("Name", "")) for c in version.get("Components") or [])


def gpu_mode(version: dict[str, Any], info: dict[str, Any]) -> GpuMode:
    """How this engine takes a GPU, from its `version` and `info` answers."""
    if is_podman(version):
        return "podman-cdi"
    if info.get("CDISpecDirs"):
        return "cdi"
    return "nvidia"


def takes_gpus(version: dict[str, Any], info: dict[str, Any],
               cdi_dirs: Iterable[Path] = CDI_DIRS) -> bool:
    """Whether containers started by this engine can be given NVIDIA GPUs."""
    mode = gpu_mode(version, info)
    if mode != "nvidia":
        return bool(cdi_specs(cdi_dirs))
    runtimes = info.get("Runtimes") or {}
    return "nvidia" in runtimes or info.get("DefaultRuntime") == "nvidia"


def cdi_name(launch: Launch) -> str:
    """The CDI device of the GPU a service is placed on."""
    return f"{CDI_KIND}={launch.gpu_uuid or launch.gpu_index}"


def add_gpus(spec: dict[str, Any], launch: Launch, mode: GpuMode) -> None:
    """Give the container the GPU its service is placed on, or hide every GPU from it."""
    from docker.types import DeviceRequest
    if launch.gpu_index is None:
        spec.setdefault("environment", {})["NVIDIA_VISIBLE_DEVICES"] = "void"
    elif mode == "podman-cdi":
        spec[CDI_DEVICES] = [cdi_name(launch)]
    elif mode == "cdi":
        spec["device_requests"] = [DeviceRequest(driver="cdi", device_ids=[cdi_name(launch)])]
    else:
        spec["device_requests"] = [DeviceRequest(
            driver="nvidia", device_ids=[launch.gpu_uuid or str(launch.gpu_index)],
            capabilities=[["gpu"]])]
