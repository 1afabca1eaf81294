"""Placement: which GPU (or the CPU) each service of a release runs on.

Pure: a manifest and a `GpuReport` in, a `Placement` out, or a `PlacementError`
naming the model, what it needs and what is free. A service's models share one
process, so a service goes whole onto one device: the GPU with the most free
memory that still fits the sum of its models' declared needs. Services are
placed largest first so a big one is not starved by small ones.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from appliance.bundle.manifest import Manifest, Service
from appliance.errors import PlacementError
from appliance.site.gpu import GpuReport


@dataclass(frozen=True)
class ServicePlacement:
    """Where one service runs and why."""

    service: str
    device: str  # "gpu" or "cpu"
    gpu_index: int | None
    gpu_uuid: str
    need_mib: int
    reason: str

    def describe(self) -> str:
        """One plain line for the operator."""
        where = f"GPU {self.gpu_index}" if self.device == "gpu" else "CPU"
        return f"{self.service}: {where} ({self.reason})"


@dataclass(frozen=True)
class Placement:
    """The plan for every service of a release."""

    services: list[ServicePlacement]
    cpu_only: bool  # no service got a GPU

    def for_service(self, name: str) -> ServicePlacement:
        """The placement of service `name`.

        Raises:
            PlacementError: the plan has no such service.
        """
        for s in self.services:
            if s.service == name:
                return s
        raise PlacementError(f"placement has no service {name!r}; run the install again")

    def lines(self) -> list[str]:
        """Plain lines for the operator, one per service, CPU placement said plainly."""
        out = [s.describe() for s in self.services]
        if self.cpu_only and self.services:
            out.append("All services run on the CPU: expect lower throughput than on a GPU.")
        return out

    def to_json(self) -> bytes:
        return json.dumps({"services": [asdict(s) for s in self.services],
                           "cpu_only": self.cpu_only}, indent=2, sort_keys=True).encode() + b"\n"

    @classmethod
    def from_dict(cls, doc: Any) -> Placement:
        """Read a placement written by `to_json`."""
        return cls([ServicePlacement(**s) for s in doc["services"]], bool(doc["cpu_only"]))


def service_need_mib(manifest: Manifest, service: Service) -> int:
    """GPU memory a service needs: the sum of its models' declared needs."""
    return sum(manifest.model(m).gpu_memory_mib for m in service.models)


def plan_placement(manifest: Manifest, report: GpuReport) -> Placement:
    """Place every service of `manifest` on the GPUs of `report`, or on the CPU.

    Raises:
        PlacementError: a service that must (or, with GPUs present, should) run
            on a GPU fits on none; the message names its models, their need
            and what each GPU has free.
    """
    free = {g.index: g.memory_free_mib for g in report.gpus}
    gpus = {g.index: g for g in report.gpus}
    placed: dict[str, ServicePlacement] = {}
    order = sorted(manifest.services, key=lambda s: (-service_need_mib(manifest, s), s.name))
    for svc in order:
        need = service_need_mib(manifest, svc)
        if svc.gpu == "none":
            placed[svc.name] = ServicePlacement(svc.name, "cpu", None, "", need,
                                                "GPU policy is none")
            continue
        if not gpus:
            why = report.unavailable or "NVML found no GPU"
            if svc.gpu == "required":
                raise PlacementError(
                    f"service {svc.name!r} requires a GPU but this server has none ({why}); "
                    "install the NVIDIA driver or use a bundle whose service allows the CPU"
                )
            placed[svc.name] = ServicePlacement(svc.name, "cpu", None, "", need,
                                                f"no GPU on this server: {why}")
            continue
        fits = [i for i, f in free.items() if f >= need]
        if not fits:
            raise PlacementError(_no_fit_message(manifest, svc, need, free, report))
        best = max(fits, key=lambda i: (free[i], -i))
        free[best] -= need
        g = gpus[best]
        placed[svc.name] = ServicePlacement(
            svc.name, "gpu", best, g.uuid, need,
            f"{g.name}, needs {need} MiB, {free[best] + need} MiB free before")
    services = [placed[s.name] for s in manifest.services]
    return Placement(services, cpu_only=all(s.device == "cpu" for s in services))


def _no_fit_message(manifest: Manifest, svc: Service, need: int, free: dict[int, int],
                    report: GpuReport) -> str:
    models = ", ".join(f"{m} needs {manifest.model(m).gpu_memory_mib} MiB" for m in svc.models)
    names = {g.index: g.name for g in report.gpus}
    frees = ", ".join(f"GPU {i} ({names[i]}) has {f} MiB free" for i, f in sorted(free.items()))
    return (f"service {svc.name!r} does not fit on any GPU: {models} ({need} MiB in all); "
            f"{frees}; stop other GPU work, or install on a server with more GPU memory")
