"""Live figures from the serving runtime: request rate, latency, per-GPU figures; log export.

The runtime answers `/metrics` (Prometheus text) and `/appliance/metrics/history`
(its own bounded on-disk history), both on 127.0.0.1. The status screen asks
for the history once (to fill its sparklines) and then polls `/metrics`,
turning counter differences into a rate and histogram differences into a
99th percentile. Nothing here imports the runtime package: it speaks HTTP,
so it works the same for a container and for a local process.
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from appliance.fsutil import atomic_write
from installer_tui.errors import LogExportError

HISTORY_PATH = "/appliance/metrics/history"
EXPORT_PATH = "/appliance/logs/export"
TIMEOUT_S = 5.0
EXPORT_TIMEOUT_S = 120.0
_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")


@dataclass(frozen=True)
class GpuFigure:
    """One GPU's figures at one point: utilisation, memory used, temperature."""

    index: int
    utilization_pct: float
    memory_used_mib: float
    temperature_c: float


@dataclass(frozen=True)
class FigureSample:
    """One point of the status screen's sparklines (None: nothing to show)."""

    rps: float
    p99_ms: float | None
    gpu_memory_mib: float | None
    gpus: tuple[GpuFigure, ...] = ()  # per GPU, as NVML reports it to the runtime


class FiguresSource(Protocol):
    """Where the status screen gets its figures (the runtime, or recorded ones in tests)."""

    def history(self) -> list[FigureSample]:
        """Earlier samples, oldest first (empty when the runtime keeps none)."""
        ...

    def sample(self) -> FigureSample | None:
        """The figures since the last call; None on the first call or when unreachable."""
        ...


Series = list[tuple[dict[str, str], float]]


def parse_metrics(text: str) -> dict[str, Series]:
    """Prometheus text to name -> [(labels, value)]; comments and odd lines are skipped."""
    out: dict[str, Series] = {}
    for line in text.splitlines():
        m = _LINE.match(line)
        if m is None:
            continue
        try:
            value = float(m.group(3))
        except ValueError:
            continue
        labels = dict(_LABEL.findall(m.group(2) or ""))
        out.setdefault(m.group(1), []).append((labels, value))
    return out


@dataclass
class _Totals:
    at: float
    requests: float
    buckets: dict[float, float] = field(default_factory=dict)  # le -> cumulative count
    gpu_used_mib: float | None = None
    gpus: tuple[GpuFigure, ...] = ()


def gpu_figures(metrics: dict[str, Series]) -> tuple[GpuFigure, ...]:
    """Per-GPU utilisation, memory used and temperature from the runtime's /metrics."""
    by_gpu: dict[int, dict[str, float]] = {}
    for name, key in (("runtime_gpu_utilization_percent", "util"),
                      ("runtime_gpu_memory_used_bytes", "mem"),
                      ("runtime_gpu_temperature_celsius", "temp")):
        for labels, v in metrics.get(name, []):
            if labels.get("gpu", "").isdigit():
                by_gpu.setdefault(int(labels["gpu"]), {})[key] = v
    return tuple(GpuFigure(i, f.get("util", 0.0), f.get("mem", 0.0) / (1024 * 1024),
                           f.get("temp", 0.0)) for i, f in sorted(by_gpu.items()))


def _totals(metrics: dict[str, Series], at: float) -> _Totals:
    t = _Totals(at, sum(v for _, v in metrics.get("runtime_requests_total", [])))
    for labels, v in metrics.get("runtime_request_duration_seconds_bucket", []):
        le = float(labels.get("le", "inf").replace("+Inf", "inf"))
        t.buckets[le] = t.buckets.get(le, 0.0) + v
    gpu = metrics.get("runtime_gpu_memory_used_bytes")
    if gpu:
        t.gpu_used_mib = sum(v for _, v in gpu) / (1024 * 1024)
    t.gpus = gpu_figures(metrics)
    return t


def p99_from_buckets(before: dict[float, float], after: dict[float, float]) -> float | None:
    """The 99th percentile (seconds, bucket upper bound) of what arrived between two reads."""
    bounds = sorted(after)
    delta = [after[b] - before.get(b, 0.0) for b in bounds]
    total = delta[-1] if delta else 0.0
    if total <= 0:
        return None
    finite = [b for b in bounds if b != float("inf")]
    for b, cum in zip(bounds, delta, strict=True):
        if cum >= 0.99 * total:
            return b if b != float("inf") else (finite[-1] if finite else None)
    return None


class RuntimeFigures:
    """Figures from the runtimes of the serving release's services, added together."""

    def __init__(self, base_urls: Sequence[str], clock: Callable[[], float] = time.monotonic,
                 ) -> None:
        self.base_urls = [u.rstrip("/") for u in base_urls]
        self._clock = clock
        self._last: dict[str, _Totals] = {}

    def history(self) -> list[FigureSample]:
        """The first service's recorded history (sampled by the runtime every few seconds)."""
        for url in self.base_urls:
            try:
                docs = json.loads(_get(url + HISTORY_PATH))
            except (OSError, ValueError):
                continue
            return [_from_history(d) for d in docs if isinstance(d, dict)]
        return []

    def sample(self) -> FigureSample | None:
        """Rate, p99 and GPU memory since the previous call (summed over services)."""
        rps, p99s, gpu = 0.0, [], None
        gpus: dict[int, GpuFigure] = {}  # services on one server see the same GPUs
        fresh = False
        for url in self.base_urls:
            try:
                now = _totals(parse_metrics(_get(url + "/metrics").decode()), self._clock())
            except (OSError, UnicodeDecodeError):
                self._last.pop(url, None)
                continue
            before = self._last.get(url)
            self._last[url] = now
            if now.gpu_used_mib is not None:
                gpu = max(gpu or 0.0, now.gpu_used_mib)
            gpus.update({g.index: g for g in now.gpus})
            if before is None:
                continue
            fresh = True
            dt = max(now.at - before.at, 1e-6)
            rps += max(now.requests - before.requests, 0.0) / dt
            p = p99_from_buckets(before.buckets, now.buckets)
            if p is not None:
                p99s.append(p * 1000)
        if not fresh:
            return None
        return FigureSample(round(rps, 3), max(p99s) if p99s else None, gpu,
                            tuple(gpus[i] for i in sorted(gpus)))


def _from_history(doc: dict[str, Any]) -> FigureSample:
    gpus = doc.get("gpus") or []
    used = sum(float(g.get("memory_total_mib", 0)) - float(g.get("memory_free_mib", 0))
               for g in gpus if isinstance(g, dict)) if gpus else None
    p99 = doc.get("p99_ms")
    per_gpu = tuple(
        GpuFigure(int(g.get("index", i)), float(g.get("utilization_pct") or 0.0),
                  float(g.get("memory_total_mib", 0)) - float(g.get("memory_free_mib", 0)),
                  float(g.get("temperature_c") or 0.0))
        for i, g in enumerate(gpus) if isinstance(g, dict))
    return FigureSample(float(doc.get("rps") or 0.0),
                        float(p99) if isinstance(p99, int | float) else None, used, per_gpu)


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=TIMEOUT_S) as r:  # noqa: S310 - local http only
        return bytes(r.read())


def export_logs(base_url: str, directory: Path, prefix: str = "") -> Path:
    """Ask the runtime for its log archive and write it into `directory` (temp name, rename).

    Raises:
        LogExportError: the runtime did not answer, or the directory cannot be written.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise LogExportError(f"{directory} is not a directory; mount the stick or type an "
                          "existing directory")
    req = urllib.request.Request(base_url.rstrip("/") + EXPORT_PATH,  # noqa: S310 - local
                                 method="POST")
    try:
        with urllib.request.urlopen(req, timeout=EXPORT_TIMEOUT_S) as r:  # noqa: S310
            data = bytes(r.read())
            disposition = r.headers.get("content-disposition", "")
    except urllib.error.HTTPError as e:
        raise LogExportError(f"the runtime refused the export ({e.code}); is the serving release "
                          "running? see its status") from e
    except OSError as e:
        raise LogExportError(f"the runtime at {base_url} does not answer ({e}); check the status "
                          "screen, then try again") from e
    m = re.search(r'filename="([^"]+)"', disposition)
    name = m.group(1) if m and _SAFE_NAME.match(m.group(1)) else \
        time.strftime("appliance-logs-%Y%m%dT%H%M%SZ.tar.gz", time.gmtime())
    dest = directory / f"{prefix}{name}"
    try:
        atomic_write(dest, data)
    except OSError as e:
        raise LogExportError(f"cannot write {dest}: {e.strerror}; choose another directory") from e
    return dest
