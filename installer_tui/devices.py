"""Where each model of the serving release runs, as its runtime says: the end screen's
and the status screen's lines (a GPU-preferring service on the CPU says why)."""

from __future__ import annotations

from rich.text import Text

from appliance.bundle.manifest import Manifest
from appliance.site.devices import CAUSE_WORDS, ModelDevice, cpu_lines
from appliance.site.placement import Placement


def devices_text(devices: dict[str, list[ModelDevice]], manifest: Manifest | None = None,
                 placement: Placement | None = None, *, container: bool = True) -> Text:
    """`service: model m on cuda:0` lines, and why a `gpu: preferred` service is on CPU."""
    out = Text()
    if not devices:
        return out
    out.append("Devices (as each runtime reports them)\n", style="bold")
    for svc in sorted(devices):
        for d in devices[svc]:
            style = "green" if d.on_gpu else ("yellow" if d.device == "cpu" else "dim")
            out.append(f"  {svc}: model {d.model} on ")
            out.append(d.device, style=style)
            if d.cause:
                out.append(f" ({CAUSE_WORDS.get(d.cause, d.cause)})", style="dim")
            out.append("\n")
    if manifest is not None and placement is not None:
        for line in cpu_lines(manifest, placement, devices, container=container):
            out.append(f"{line}\n", style="yellow")
    return out
