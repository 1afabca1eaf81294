"""Prometheus text metrics kept by the event-loop thread (no locks on the hot path)."""

from __future__ import annotations

import bisect
import math
import os
import time
from collections.abc import Sequence
from typing import Any

from modelcontract import GpuState

LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                   0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

Labels = tuple[str, ...]


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: Sequence[str], values: Labels, extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _num(v: float) -> str:
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v))


class Counter:
    """A monotonically increasing figure per label set."""

    def __init__(self, name: str, help: str, labels: Sequence[str]) -> None:
        self.name, self.help, self.label_names = name, help, tuple(labels)
        self.values: dict[Labels, float] = {}

    def inc(self, labels: Labels, by: float = 1.0) -> None:
        """Add `by`."""
        self.values[labels] = self.values.get(labels, 0.0) + by

    def total(self) -> float:
        """Sum over every label set."""
        return sum(self.values.values())

    def render(self) -> list[str]:
        """Exposition lines."""
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        out += [f"{self.name}{_labels(self.label_names, k)} {_num(v)}"
                for k, v in sorted(self.values.items())]
        return out


class Histogram:
    """Bucketed observations per label set, plus one unlabelled window for percentiles."""

    def __init__(self, name: str, help: str, labels: Sequence[str],
                 buckets: Sequence[float]) -> None:
        self.name, self.help, self.label_names = name, help, tuple(labels)
        self.buckets = tuple(buckets)
        self.series: dict[Labels, list[float]] = {}  # counts per bucket + [+Inf, sum]
        self.window = [0] * (len(self.buckets) + 1)

    def observe(self, labels: Labels, value: float) -> None:
        """Record one value."""
        s = self.series.get(labels)
        if s is None:
            s = self.series[labels] = [0.0] * (len(self.buckets) + 2)
        i = bisect.bisect_left(self.buckets, value)
        s[i] += 1
        s[-1] += value
        self.window[i] += 1

    def take_window(self) -> list[int]:
        """Bucket counts observed since the last call (all labels together)."""
        w, self.window = self.window, [0] * (len(self.buckets) + 1)
        return w

    def quantile(self, counts: Sequence[int], q: float) -> float | None:
        """Estimate the q-quantile from bucket counts (linear within a bucket)."""
        total = sum(counts)
        if total == 0:
            return None
        rank = q * total
        seen = 0
        for i, c in enumerate(counts):
            if seen + c >= rank and c > 0:
                lo = self.buckets[i - 1] if i > 0 else 0.0
                hi = self.buckets[i] if i < len(self.buckets) else self.buckets[-1]
                return lo + (hi - lo) * ((rank - seen) / c)
            seen += c
        return self.buckets[-1]

    def render(self) -> list[str]:
        """Exposition lines."""
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        les = [f'le="{b}"' for b in self.buckets] + ['le="+Inf"']
        for k, s in sorted(self.series.items()):
            cum = 0.0
            for i, le in enumerate(les):
                cum += s[i]
                out.append(f"{self.name}_bucket{_labels(self.label_names, k, le)} {_num(cum)}")
            out.append(f"{self.name}_sum{_labels(self.label_names, k)} {_num(s[-1])}")
            out.append(f"{self.name}_count{_labels(self.label_names, k)} {_num(cum)}")
        return out


def _gauge(name: str, help: str, rows: Sequence[tuple[str, float]]) -> list[str]:
    out = [f"# HELP {name} {help}", f"# TYPE {name} gauge"]
    out += [f"{name}{labels} {_num(v)}" for labels, v in rows]
    return out


class Metrics:
    """Every figure the runtime exports."""

    def __init__(self) -> None:
        self.started = time.time()
        self.requests = Counter("runtime_requests_total", "Inference requests by outcome.",
                                ("model", "version", "code"))
        self.errors = Counter("runtime_errors_total", "Requests answered with an error.",
                              ("model", "code"))
        self.latency = Histogram("runtime_request_duration_seconds",
                                 "Inference request latency, first byte in to response out.",
                                 ("model",), LATENCY_BUCKETS)
        self.queue = Histogram("runtime_queue_duration_seconds",
                               "Time a request waited for its batch to start.",
                               ("model",), LATENCY_BUCKETS)
        self.compute = Histogram("runtime_inference_duration_seconds",
                                 "Model compute time per batch.", ("model",), LATENCY_BUCKETS)
        self.batch = Histogram("runtime_batch_size", "Rows per dispatched batch.",
                               ("model",), BATCH_BUCKETS)
        self.gpus: list[GpuState] = []
        self.queue_depth: dict[str, int] = {}
        self.ready_models: dict[tuple[str, str], bool] = {}
        self._proc: Any = None
        try:
            import psutil

            self._proc = psutil.Process(os.getpid())
            self._proc.cpu_percent(None)
        except ImportError:
            self._proc = None

    def process(self) -> dict[str, float]:
        """CPU and memory of this process now."""
        if self._proc is None:
            return {}
        with self._proc.oneshot():
            times = self._proc.cpu_times()
            return {
                "cpu_seconds": times.user + times.system,
                "cpu_percent": self._proc.cpu_percent(None),
                "rss_bytes": float(self._proc.memory_info().rss),
                "threads": float(self._proc.num_threads()),
            }

    def render(self, proc: dict[str, float] | None = None) -> str:
        """The whole exposition in Prometheus text format 0.0.4."""
        proc = self.process() if proc is None else proc
        lines: list[str] = []
        for m in (self.requests, self.errors):
            lines += m.render()
        for h in (self.latency, self.queue, self.compute, self.batch):
            lines += h.render()
        lines += _gauge("runtime_queue_depth", "Requests waiting per model.",
                        [(_labels(("model",), (k,)), float(v))
                         for k, v in sorted(self.queue_depth.items())])
        lines += _gauge("runtime_model_ready", "1 when the model has warmed up.",
                        [(_labels(("model", "version"), k), float(v))
                         for k, v in sorted(self.ready_models.items())])
        if proc:
            lines += [
                "# HELP process_cpu_seconds_total User and system CPU time of the runtime.",
                "# TYPE process_cpu_seconds_total counter",
                f"process_cpu_seconds_total {_num(proc['cpu_seconds'])}",
            ]
            lines += _gauge("process_resident_memory_bytes", "Resident memory.",
                            [("", proc["rss_bytes"])])
            lines += _gauge("runtime_cpu_percent", "CPU use since the last sample, percent "
                            "of one core.", [("", proc["cpu_percent"])])
        lines += _gauge("process_start_time_seconds", "Start time, seconds since the epoch.",
                        [("", self.started)])
        if self.gpus:
            def rows(attr: str, scale: float = 1.0) -> list[tuple[str, float]]:
                return [(_labels(("gpu",), (str(g.index),)), getattr(g, attr) * scale)
                        for g in self.gpus]
            lines += _gauge("runtime_gpu_utilization_percent", "GPU utilisation.",
                            rows("utilization_pct"))
            lines += _gauge("runtime_gpu_memory_used_bytes", "GPU memory in use.",
                            rows("memory_used_mib", 1024 * 1024))
            lines += _gauge("runtime_gpu_memory_total_bytes", "GPU memory.",
                            rows("memory_total_mib", 1024 * 1024))
            lines += _gauge("runtime_gpu_temperature_celsius", "GPU temperature.",
                            rows("temperature_c"))
        return "\n".join(lines) + "\n"
