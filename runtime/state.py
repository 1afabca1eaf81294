"""The served models and everything the server keeps about them: loading and warm-up,
readiness, metrics sampling, the on-disk history and log export."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelcontract import ModelSpec
from runtime.backends import Backend, load_backend, warm_up
from runtime.batching import Batcher, BatchStats
from runtime.errors import GpuUnavailableError, NotFoundError, ServeError
from runtime.export import write_export
from runtime.gpu import CpuReason, GpuSource, plan_with_reasons
from runtime.history import MetricsHistory
from runtime.logs import JsonLinesLog
from runtime.metrics import Metrics
from runtime.settings import Settings

log = logging.getLogger("runtime.state")


@dataclass
class LoadedModel:
    """One model version and where it stands."""

    spec: ModelSpec
    device: str = "cpu"
    backend: Backend | None = None
    batcher: Batcher | None = None
    ready: bool = False
    cpu_reason: CpuReason | None = None  # why it runs on the CPU, when a GPU was possible


def _version_key(v: str) -> tuple[int, int, str]:
    return (1, int(v), "") if v.isdigit() else (0, 0, v)


class ModelRegistry:
    """Loads the models off the event loop and answers what the HTTP layer asks."""

    def __init__(
        self, settings: Settings, specs: list[ModelSpec], *, gpu: GpuSource,
        log_sink: JsonLinesLog | None, history: MetricsHistory | None,
        on_fatal: Callable[[str], None] | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.log_sink = log_sink
        self.history = history
        self._gpu = gpu
        self._gpu_present = False
        self._on_fatal = on_fatal
        self.models = {(s.name, s.version): LoadedModel(s) for s in specs}
        self._latest: dict[str, str] = {}
        for name, version in self.models:
            if name not in self._latest or _version_key(version) > _version_key(
                    self._latest[name]):
                self._latest[name] = version
        self.ready = False
        self.failure: str | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._loader: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._last_sample = time.time()

    # -- lookups ------------------------------------------------------------
    def get(self, name: str, version: str | None) -> LoadedModel:
        """The model `name` at `version` (latest when None).

        Raises:
            NotFoundError: no such model or version.
        """
        if version is None:
            version = self._latest.get(name)
            if version is None:
                raise NotFoundError(f"unknown model {name!r}; GET /v2/repository/index lists "
                                    "the models")
        m = self.models.get((name, version))
        if m is None:
            raise NotFoundError(f"model {name!r} has no version {version!r}; it has "
                                f"{self.versions(name) or 'none'}")
        return m

    def versions(self, name: str) -> list[str]:
        """Versions of `name`, oldest first."""
        return sorted((v for n, v in self.models if n == name), key=_version_key)

    def not_ready_reason(self) -> str:
        """Why /v2/health/ready says no."""
        if self.failure:
            return f"not ready: {self.failure}"
        waiting = [f"{n}:{v}" for (n, v), m in self.models.items() if not m.ready]
        return f"not ready: warming up {', '.join(waiting)}"

    # -- life cycle ---------------------------------------------------------
    async def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Plan devices, start loading in a thread, start the sampler."""
        self._loop = loop
        needs = [(f"{n}:{v}", m.spec.gpu_memory_mib) for (n, v), m in self.models.items()]
        setting = "cpu" if self.settings.gpu_policy == "none" else self.settings.device
        plan, reasons = plan_with_reasons(needs, self._gpu, setting)
        # GPU figures are sampled whenever NVML sees a GPU, even with every model on CPU.
        try:
            self.metrics.gpus = self._gpu.devices()
        except GpuUnavailableError:
            self.metrics.gpus = []
        self._gpu_present = bool(self.metrics.gpus) or any(
            d.startswith("cuda") for d in plan.values())
        for (n, v), m in self.models.items():
            m.device = plan[f"{n}:{v}"]
            # gpu: none is the bundle's choice, not a fallback: nothing to explain
            m.cpu_reason = None if self.settings.gpu_policy == "none" else reasons.get(f"{n}:{v}")
        self._loader = threading.Thread(target=self._load_all, name="model-loader", daemon=True)
        self._loader.start()
        self._tasks.append(loop.create_task(self._sample_forever()))

    def _load_all(self) -> None:
        assert self._loop is not None
        for key, m in self.models.items():
            started = time.perf_counter()
            if self._refuse_cpu(key, m):
                return
            try:
                threads = m.spec.intra_op_threads or self.settings.threads
                backend = load_backend(m.spec, m.device, threads)
                warm_up(m.spec, backend)
            except ServeError as e:
                self.failure = str(e)
                log.error("cannot serve model %s version %s: %s", key[0], key[1], e)
                if self._on_fatal is not None:
                    self._loop.call_soon_threadsafe(self._on_fatal, str(e))
                return
            if backend.device == "cpu" and m.device != "cpu":
                m.cpu_reason = getattr(backend, "cpu_reason", None)
            m.backend, m.device = backend, backend.device
            if self._refuse_cpu(key, m):
                return
            m.batcher = Batcher(m.spec, backend, self._loop, self.settings.max_queue,
                                self._batch_observer(m.spec.name, m.device))
            m.ready = True
            self.metrics.model_devices[key] = m.device
            self.metrics.ready_models[key] = True
            log.info("model %s version %s ready on %s (load and warm-up %.0f ms)", key[0], key[1],
                     m.device, (time.perf_counter() - started) * 1000)
        self.ready = True
        log.info("ready: serving %d model(s) on %s:%d", len(self.models), self.settings.host,
                 self.settings.port)

    def _refuse_cpu(self, key: tuple[str, str], m: LoadedModel) -> bool:
        """With `gpu_policy` required, a model on the CPU keeps the server not ready.

        The server stays up (not ready, saying why) rather than exiting: a restart would
        find the same container, and the reason would be lost in a crash loop.
        """
        if self.settings.gpu_policy != "required" or m.device != "cpu":
            return False
        why = m.cpu_reason.line() if m.cpu_reason else "no GPU was assigned"
        self.failure = (f"gpu required but model {key[0]} version {key[1]} would run on "
                        f"the CPU ({why})")
        log.error("%s; not ready", self.failure)
        return True

    def _batch_observer(self, name: str, device: str) -> Callable[[BatchStats], None]:
        labels = (name,)
        placed = (name, device)
        metrics = self.metrics

        def observe(stats: BatchStats) -> None:
            metrics.batch.observe(labels, stats.rows)
            metrics.compute.observe(placed, stats.infer_s)
            for q in stats.queue_s:
                metrics.queue.observe(labels, q)
        return observe

    async def stop(self) -> None:
        """Stop the sampler and the model workers, write a last sample, flush logs."""
        for t in self._tasks:
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await t
        for m in self.models.values():
            if m.batcher is not None:
                m.batcher.stop()
        self._write_sample()
        if self.log_sink is not None:
            self.log_sink.flush()

    # -- monitoring ---------------------------------------------------------
    async def _sample_forever(self) -> None:
        interval = self.settings.history_interval_s
        next_sample = time.monotonic() + interval
        while True:
            await asyncio.sleep(min(1.0, interval))
            if self.log_sink is not None:
                self.log_sink.flush()
            if time.monotonic() >= next_sample:
                next_sample += interval
                if self._gpu_present:
                    with contextlib.suppress(GpuUnavailableError):
                        self.metrics.gpus = await asyncio.to_thread(self._gpu.devices)
                self._write_sample()

    def _write_sample(self) -> None:
        now = time.time()
        window = self.metrics.latency.take_window()
        count = sum(window)
        p50 = self.metrics.latency.quantile(window, 0.5)
        p99 = self.metrics.latency.quantile(window, 0.99)
        errors = self.metrics.errors.total()
        proc = self.metrics.process()
        sample: dict[str, Any] = {
            "t": round(now, 3), "interval_s": round(now - self._last_sample, 3),
            "requests": count, "rps": round(count / max(now - self._last_sample, 1e-9), 2),
            "p50_ms": None if p50 is None else round(p50 * 1000, 3),
            "p99_ms": None if p99 is None else round(p99 * 1000, 3),
            "errors_total": errors, "requests_total": self.metrics.requests.total(),
            "cpu_percent": proc.get("cpu_percent"), "rss_bytes": proc.get("rss_bytes"),
            "queue_depth": {f"{n}:{v}": m.batcher.depth for (n, v), m in self.models.items()
                            if m.batcher is not None},
            "gpus": [vars(g) for g in self.metrics.gpus],
        }
        self._last_sample = now
        if self.history is not None:
            try:
                self.history.append(sample, now)
            except OSError as e:
                log.warning("cannot write metrics history: %s", e)

    def render_metrics(self) -> str:
        """The /metrics text."""
        self.metrics.queue_depth = {
            n: m.batcher.depth for (n, _), m in self.models.items() if m.batcher is not None}
        return self.metrics.render()

    def render_metrics_for_scrape(self) -> tuple[str, str]:
        """The /metrics text and its content type."""
        return self.render_metrics(), self.metrics.content_type

    def history_samples(self, since: float = 0.0, limit: int = 10_000) -> list[dict[str, Any]]:
        """Samples from the on-disk history."""
        return self.history.read(since, limit) if self.history is not None else []

    async def export_bytes(self) -> tuple[bytes, str]:
        """Build the export archive in a temp dir and return its bytes and file name."""
        if self.log_sink is not None:
            self.log_sink.flush()

        def build() -> tuple[bytes, str]:
            with tempfile.TemporaryDirectory(prefix="runtime-export-") as d:
                path = write_export(self.settings.data_dir, Path(d),
                                    models_dir=self.settings.models, gpu=self._gpu)
                return path.read_bytes(), path.name
        return await asyncio.to_thread(build)
