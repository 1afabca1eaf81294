"""Where each model of a release really runs, as its runtime says, and why not on a GPU.

The runtime reports each model's `device` in its V2 metadata (`GET /v2/models/{m}`),
with `cpu_reason` (a cause code and what it saw) when the model runs on the CPU though
a GPU was possible. The install's health step asks it for every service whose bundle
says `gpu: required`: a model on the CPU there fails the install with one line naming
the likely cause from what the runtime could see. `gpu: preferred` services that fell
back are said plainly on the end screen and in `appliance status`.
"""

from __future__ import annotations

import json
import urllib.request
from contextlib import suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from appliance.bundle.manifest import Manifest, Service
from appliance.errors import GpuMissingError
from appliance.frontdoor.token import TOKEN_FILE
from appliance.site.placement import Placement

TIMEOUT_S = 5.0
# The runtime's cause codes in a few plain words, for status lines.
CAUSE_WORDS = {"no-gpu-visible": "no GPU visible", "no-cuda-provider": "CPU-only image",
               "cuda-init-failed": "CUDA did not start", "no-gpu-memory": "no GPU memory free",
               "cpu-requested": "asked for the CPU"}


@dataclass(frozen=True)
class ModelDevice:
    """One model of a service and where its runtime runs it."""

    model: str
    device: str  # "cpu", "cuda:N", or "?" when the runtime did not say
    cause: str = ""  # the runtime's cause code when on the CPU though a GPU was possible
    detail: str = ""

    @property
    def on_gpu(self) -> bool:
        return self.device.startswith("cuda")

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def site_token(root: Path) -> str:
    """The site's token, or "" when there is none or it cannot be read."""
    with suppress(OSError, UnicodeDecodeError):
        return (Path(root) / TOKEN_FILE).read_text().strip()
    return ""


def ask_devices(base_url: str, models: list[str], token: str = "",
                timeout_s: float = TIMEOUT_S) -> list[ModelDevice]:
    """Each model's device as the runtime at `base_url` reports it ("?" if it does not)."""
    out = []
    for name in models:
        req = urllib.request.Request(f"{base_url.rstrip('/')}/v2/models/{name}")  # noqa: S310
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=timeout_s) as r:  # noqa: S310 - loopback
                doc: Any = json.loads(r.read())
        except (OSError, ValueError):
            out.append(ModelDevice(name, "?"))
            continue
        reason = doc.get("cpu_reason") if isinstance(doc, dict) else None
        reason = reason if isinstance(reason, dict) else {}
        out.append(ModelDevice(name, str(doc.get("device", "?")) if isinstance(doc, dict)
                               else "?", str(reason.get("cause", "")),
                               str(reason.get("detail", ""))))
    return out


def likely_cause(d: ModelDevice, *, container: bool, driver: str = "", cuda: str = "") -> str:
    """What most likely keeps model `d` off its GPU, and what to do, in plain words."""
    seen = f" ({d.detail})" if d.detail else ""
    if d.cause == "no-gpu-visible":
        if container:
            return (f"no GPU is visible inside its container{seen}: the NVIDIA container "
                    "toolkit or its CDI spec did not pass the GPU in; regenerate the spec "
                    "(nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml), check "
                    "`nvidia-ctk cdi list`, and install again")
        return (f"the runtime sees no GPU{seen}: the NVIDIA driver or its NVML library is not "
                "usable by the service; check `nvidia-smi` on this server and install again")
    if d.cause == "no-cuda-provider":
        return (f"its runtime image is the CPU variant{seen}: rebuild the bundle with "
                "`runtime_image_gpu` so this service gets the CUDA variant")
    if d.cause == "cuda-init-failed":
        have = f"driver {driver}" + (f", CUDA {cuda}" if cuda else "") if driver else \
            "the driver"
        return (f"CUDA did not start{seen}: {have} is likely older than the runtime image's "
                "CUDA needs; update the NVIDIA driver and install again")
    if d.cause == "no-gpu-memory":
        return (f"its GPU had too little free memory when it started{seen}; stop other GPU "
                "work and install again")
    if d.cause == "cpu-requested":
        return "its command asks for --device cpu; remove that from the service's command"
    return "the runtime does not say why; read its log (appliance support export)"


def refusal(service: Service, devices: list[ModelDevice], *, container: bool,
            driver: str = "", cuda: str = "") -> str | None:
    """The one line that fails a `gpu: required` service with a model on the CPU, or None."""
    if service.gpu != "required":
        return None
    for d in devices:
        if d.device == "cpu":
            return (f"service {service.name!r} requires a GPU but model {d.model!r} runs on "
                    f"the CPU: {likely_cause(d, container=container, driver=driver, cuda=cuda)}")
    return None


def check_required(manifest: Manifest, service: str, base_url: str, token: str, *,
                   container: bool, driver: str = "", cuda: str = "") -> None:
    """Fail a `gpu: required` service whose runtime runs a model on the CPU.

    Raises:
        GpuMissingError: the service requires a GPU and a model runs on the CPU.
    """
    svc = next((s for s in manifest.services if s.name == service), None)
    if svc is None or svc.gpu != "required":
        return
    why = refusal(svc, ask_devices(base_url, list(svc.models), token), container=container,
                  driver=driver, cuda=cuda)
    if why is not None:
        raise GpuMissingError(why)


def cpu_lines(manifest: Manifest, placement: Placement,
              devices: dict[str, list[ModelDevice]], *, container: bool) -> list[str]:
    """One line per service that runs on the CPU though it prefers a GPU, saying why."""
    out = []
    for svc in manifest.services:
        if svc.gpu != "preferred":
            continue
        on_cpu = [d for d in devices.get(svc.name, []) if d.device == "cpu"]
        if not on_cpu:
            continue
        p = placement.for_service(svc.name)
        why = p.reason if p.device == "cpu" else likely_cause(on_cpu[0], container=container)
        out.append(f"{svc.name} runs on the CPU (gpu: preferred): {why}")
    return out


def device_lines(devices: dict[str, list[ModelDevice]]) -> list[str]:
    """One line per model: service, model, device."""
    return [f"{svc}: model {d.model} on {d.device}" for svc in sorted(devices)
            for d in devices[svc]]
