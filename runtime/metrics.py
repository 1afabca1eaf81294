"""The runtime's figures: prometheus-client metrics in a registry of this server's own.

prometheus-client writes the exposition from metric families built at scrape time by one
collector. The event-loop thread counts into plain dicts (a prometheus-client child takes
a lock and costs several times more per increment on the hot path). What the library
lacks is kept here: the latency buckets observed since the last history sample (all
models together), from which the on-disk history's windowed percentiles are estimated.
"""

from __future__ import annotations

import bisect
import os
import time
from collections.abc import Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from modelcontract import GpuState

LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                   0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

Labels = tuple[str, ...]


class Counter:
    """A counter per label set, counted in a dict by the event-loop thread."""

    def __init__(self, name: str, help: str, labels: Sequence[str]) -> None:
        self.name, self.help, self.label_names = name, help, list(labels)
        self.values: dict[Labels, float] = {}

    def inc(self, labels: Labels, by: float = 1.0) -> None:
        """Add `by`."""
        self.values[labels] = self.values.get(labels, 0.0) + by

    def total(self) -> float:
        """Sum over every label set."""
        return sum(self.values.values())

    def family(self) -> Metric:
        """The prometheus-client family of this counter."""
        fam = CounterMetricFamily(self.name, self.help, labels=self.label_names)
        for k, v in sorted(self.values.items()):
            fam.add_metric(list(k), v)
        return fam


class Histogram:
    """Bucketed observations per label set, plus one unlabelled window for percentiles."""

    def __init__(self, name: str, help: str, labels: Sequence[str],
                 buckets: Sequence[float]) -> None:
        self.name, self.help, self.label_names = name, help, list(labels)
        self.buckets = tuple(float(b) for b in buckets)
        self._les = [floatToGoString(b)  # type: ignore[no-untyped-call]
                     for b in self.buckets] + ["+Inf"]
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

    def family(self) -> Metric:
        """The prometheus-client family of this histogram (cumulative buckets)."""
        fam = HistogramMetricFamily(self.name, self.help, labels=self.label_names)
        for k, s in sorted(self.series.items()):
            cum, buckets = 0.0, []
            for le, count in zip(self._les, s[:-1], strict=True):
                cum += count
                buckets.append((le, cum))
            fam.add_metric(list(k), buckets, s[-1])
        return fam


class _StateCollector(Collector):
    """Every family of the `Metrics` object, built at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self._m = metrics

    def collect(self) -> Iterator[Metric]:
        """Counters, histograms, then gauges."""
        m = self._m
        for c in (m.requests, m.errors):
            yield c.family()
        for h in (m.latency, m.queue, m.compute, m.batch):
            yield h.family()
        depth = GaugeMetricFamily("runtime_queue_depth", "Requests waiting per model.",
                                  labels=["model"])
        for name, v in sorted(m.queue_depth.items()):
            depth.add_metric([name], v)
        yield depth
        ready = GaugeMetricFamily("runtime_model_ready", "1 when the model has warmed up; "
                                  "device is where it runs (cpu, cuda:N).",
                                  labels=["model", "version", "device"])
        for (name, version), ok in sorted(m.ready_models.items()):
            ready.add_metric([name, version, m.model_devices.get((name, version), "")],
                             float(ok))
        yield ready
        proc = m.scrape_process
        if proc:
            yield CounterMetricFamily("process_cpu_seconds", "User and system CPU time of "
                                      "the runtime.", proc["cpu_seconds"])
            yield GaugeMetricFamily("process_resident_memory_bytes", "Resident memory.",
                                    proc["rss_bytes"])
            yield GaugeMetricFamily("runtime_cpu_percent", "CPU use since the last sample, "
                                    "percent of one core.", proc["cpu_percent"])
        yield GaugeMetricFamily("process_start_time_seconds", "Start time, seconds since "
                                "the epoch.", m.started)
        if m.gpus:
            for name, help, attr, scale in (
                ("runtime_gpu_utilization_percent", "GPU utilisation.", "utilization_pct", 1),
                ("runtime_gpu_memory_used_bytes", "GPU memory in use.", "memory_used_mib",
                 1024 * 1024),
                ("runtime_gpu_memory_total_bytes", "GPU memory.", "memory_total_mib",
                 1024 * 1024),
                ("runtime_gpu_temperature_celsius", "GPU temperature.", "temperature_c", 1),
            ):
                g = GaugeMetricFamily(name, help, labels=["gpu"])
                for dev in m.gpus:
                    g.add_metric([str(dev.index)], float(getattr(dev, attr)) * scale)
                yield g


class Metrics:
    """Every figure the runtime exports, in a registry of its own (one per server)."""

    def __init__(self) -> None:
        self.started = time.time()
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("runtime_requests", "Inference requests by outcome.",
                                ("model", "version", "code"))
        self.errors = Counter("runtime_errors", "Requests answered with an error.",
                              ("model", "code"))
        self.latency = Histogram("runtime_request_duration_seconds",
                                 "Inference request latency, first byte in to response out.",
                                 ("model", "device"), LATENCY_BUCKETS)
        self.queue = Histogram("runtime_queue_duration_seconds",
                               "Time a request waited for its batch to start.",
                               ("model",), LATENCY_BUCKETS)
        self.compute = Histogram("runtime_inference_duration_seconds",
                                 "Model compute time per batch.", ("model", "device"),
                                 LATENCY_BUCKETS)
        self.batch = Histogram("runtime_batch_size", "Rows per dispatched batch.",
                               ("model",), BATCH_BUCKETS)
        self.gpus: list[GpuState] = []
        self.queue_depth: dict[str, int] = {}
        self.ready_models: dict[tuple[str, str], bool] = {}
        self.model_devices: dict[tuple[str, str], str] = {}
        self.scrape_process: dict[str, float] = {}
        r.register(_StateCollector(self))
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
        """The whole exposition in Prometheus text format."""
        self.scrape_process = self.process() if proc is None else proc
        return generate_latest(self.registry).decode()

    # Text format 0.0.4, which every Prometheus reads; our names need none of 1.0.0's escaping.
    content_type = "text/plain; version=0.0.4; charset=utf-8"
