"""GPU probe: what NVML says about this server's GPUs, behind one small seam.

`NvmlProbe` asks the NVIDIA driver; `RecordedProbe` replays a recorded state
(JSON) so placement and the screens are tested on machines without a GPU.
A server with no driver is not an error: the report says why there are no
GPUs and the plan places everything on the CPU.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from appliance.errors import PlacementError
from modelcontract import GpuState

MIB = 1024 * 1024


@dataclass(frozen=True)
class GpuReport:
    """The GPUs of this server, the driver and CUDA versions, or why there are none."""

    gpus: list[GpuState] = field(default_factory=list)
    driver: str = ""
    cuda: str = ""
    unavailable: str = ""  # why NVML gave no answer ("" when it did)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: Any) -> GpuReport:
        """Build a report from its JSON form.

        Raises:
            PlacementError: the document is not a GPU report.
        """
        try:
            return cls(
                gpus=[GpuState(index=int(g["index"]), name=str(g["name"]),
                               uuid=str(g.get("uuid", "")),
                               memory_total_mib=int(g["memory_total_mib"]),
                               memory_free_mib=int(g["memory_free_mib"]),
                               utilization_pct=float(g.get("utilization_pct", 0)),
                               temperature_c=float(g.get("temperature_c", 0)))
                      for g in doc.get("gpus", [])],
                driver=str(doc.get("driver", "")),
                cuda=str(doc.get("cuda", "")),
                unavailable=str(doc.get("unavailable", "")),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise PlacementError(f"recorded GPU state is malformed ({e}); re-record it") from e

    def table(self) -> list[tuple[str, ...]]:
        """Rows for a GPU table: index, name, memory total/free (MiB), util, driver, CUDA."""
        return [(str(g.index), g.name, str(g.memory_total_mib), str(g.memory_free_mib),
                 f"{g.utilization_pct:.0f}%", self.driver, self.cuda) for g in self.gpus]


TABLE_HEADER = ("GPU", "Name", "Total MiB", "Free MiB", "Util", "Driver", "CUDA")


class GpuProbe(Protocol):
    """Anything that can say which GPUs this server has right now."""

    def probe(self) -> GpuReport:
        """Report the GPUs; never raises for a missing driver (the report says why)."""
        ...


class NvmlProbe:
    """Asks the NVIDIA driver through NVML (nvidia-ml-py)."""

    def probe(self) -> GpuReport:
        """Query every GPU; a missing library or driver gives an empty report saying why."""
        try:
            import pynvml
        except ImportError:
            return GpuReport(unavailable="nvidia-ml-py is not installed")
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as e:
            return GpuReport(unavailable=f"NVML did not start ({e}); no NVIDIA driver loaded")
        try:
            driver = _text(pynvml.nvmlSystemGetDriverVersion())
            cuda_int = int(pynvml.nvmlSystemGetCudaDriverVersion())
            cuda = f"{cuda_int // 1000}.{cuda_int % 1000 // 10}"
            gpus = []
            for i in range(pynvml.nvmlDeviceGetCount()):
                h = pynvml.nvmlDeviceGetHandleByIndex(i)
                mem = pynvml.nvmlDeviceGetMemoryInfo(h)
                try:
                    util = int(pynvml.nvmlDeviceGetUtilizationRates(h).gpu)
                except pynvml.NVMLError:
                    util = 0  # some boards (MIG, vGPU) do not report utilisation
                try:
                    temp = float(pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU))
                except pynvml.NVMLError:
                    temp = 0.0  # nor temperature (vGPU)
                gpus.append(GpuState(index=i, name=_text(pynvml.nvmlDeviceGetName(h)),
                                     uuid=_text(pynvml.nvmlDeviceGetUUID(h)),
                                     memory_total_mib=int(mem.total) // MIB,
                                     memory_free_mib=int(mem.free) // MIB, utilization_pct=util,
                                     temperature_c=temp))
            return GpuReport(gpus, driver, cuda)
        except pynvml.NVMLError as e:
            return GpuReport(unavailable=f"NVML query failed: {e}")
        finally:
            with contextlib.suppress(pynvml.NVMLError):
                pynvml.nvmlShutdown()


class RecordedProbe:
    """Replays a recorded GPU state: a `GpuReport` or its JSON file."""

    def __init__(self, report: GpuReport) -> None:
        self.report = report

    @classmethod
    def from_file(cls, path: Path) -> RecordedProbe:
        """Load a recorded state written by `GpuReport.to_dict`.

        Raises:
            PlacementError: the file is unreadable or not a GPU report.
        """
        try:
            doc = json.loads(Path(path).read_bytes())
        except (OSError, ValueError) as e:
            raise PlacementError(f"cannot read recorded GPU state {path}: {e}") from e
        return cls(GpuReport.from_dict(doc))

    def probe(self) -> GpuReport:
        return self.report


def _text(v: object) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)
