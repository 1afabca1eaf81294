"""Dynamic batching: dispatch at once when idle, merge while busy, split back exactly."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from bundler.samples import make_mlp_onnx, mlp_reference
from modelcontract import load_spec
from runtime.backends import OnnxBackend, Tensors
from runtime.batching import Batcher, BatchStats
from runtime.errors import UnavailableError


class GatedBackend:
    """The real ONNX backend, but each batch first waits for a gate and is recorded."""

    def __init__(self, inner: OnnxBackend) -> None:
        self.inner = inner
        self.device = "cpu"
        self.gate = threading.Event()
        self.gate.set()
        self.started = threading.Event()
        self.batches: list[int] = []

    def run(self, inputs: Tensors) -> Tensors:
        self.started.set()
        self.gate.wait(30)
        self.batches.append(int(inputs["x"].shape[0]))
        return self.inner.run(inputs)


@pytest.fixture(scope="module")
def mlp_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_mlp_onnx(tmp_path_factory.mktemp("b") / "mlp" / "1")


def _batcher(mlp_dir: Path, loop: asyncio.AbstractEventLoop, *, delay_ms: float = 0.0,
             max_batch: int = 32, max_queue: int = 1024, stats: list[BatchStats] | None = None
             ) -> tuple[Batcher, GatedBackend]:
    spec = dataclasses.replace(load_spec(mlp_dir / "model.json"),
                               max_queue_delay_ms=delay_ms, max_batch_size=max_batch)
    backend = GatedBackend(OnnxBackend(spec, "cpu", 1))
    return Batcher(spec, backend, loop, max_queue,
                   stats.append if stats is not None else None), backend


def _x(rows: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, 64)).astype(np.float32)


def test_lone_request_is_not_held_for_the_queue_delay(mlp_dir: Path) -> None:
    async def go() -> float:
        b, _ = _batcher(mlp_dir, asyncio.get_running_loop(), delay_ms=2000)
        try:
            t = time.perf_counter()
            out = await b.submit({"x": _x(1, 0)})
            np.testing.assert_allclose(out["y"], mlp_reference(_x(1, 0)), rtol=1e-4, atol=1e-5)
            return time.perf_counter() - t
        finally:
            b.stop()
    assert asyncio.run(go()) < 1.0  # far below the 2 s delay


def test_requests_queued_while_busy_merge_and_split_back(mlp_dir: Path) -> None:
    stats: list[BatchStats] = []

    async def go() -> tuple[list[Tensors], GatedBackend]:
        b, backend = _batcher(mlp_dir, asyncio.get_running_loop(), stats=stats)
        try:
            backend.gate.clear()
            first = b.submit({"x": _x(1, 100)})
            await asyncio.to_thread(backend.started.wait, 30)  # the worker is now busy
            rest = [b.submit({"x": _x(rows, seed)}) for seed, rows in enumerate([1, 2, 3, 4])]
            backend.gate.set()
            return [await first, *[await f for f in rest]], backend
        finally:
            b.stop()

    outs, backend = asyncio.run(go())
    assert backend.batches == [1, 10]  # 1+2+3+4 rows merged into one batch
    for (seed, rows), out in zip(enumerate([1, 2, 3, 4]), outs[1:], strict=True):
        np.testing.assert_allclose(out["y"], mlp_reference(_x(rows, seed)), rtol=1e-4, atol=1e-5)
    assert [s.rows for s in stats] == [1, 10] and stats[1].requests == 4


def test_merge_stops_at_max_batch_size(mlp_dir: Path) -> None:
    async def go() -> GatedBackend:
        b, backend = _batcher(mlp_dir, asyncio.get_running_loop(), max_batch=8)
        try:
            backend.gate.clear()
            first = b.submit({"x": _x(1, 0)})
            await asyncio.to_thread(backend.started.wait, 30)
            rest = [b.submit({"x": _x(3, i)}) for i in range(5)]  # 15 rows
            backend.gate.set()
            await first
            for f in rest:
                await f
            return backend
        finally:
            b.stop()
    assert asyncio.run(go()).batches == [1, 6, 6, 3]


def test_busy_model_waits_for_the_batch_to_fill_within_the_delay(mlp_dir: Path) -> None:
    async def go() -> GatedBackend:
        loop = asyncio.get_running_loop()
        b, backend = _batcher(mlp_dir, loop, delay_ms=2000, max_batch=4)
        try:
            backend.gate.clear()
            first = b.submit({"x": _x(1, 0)})
            await asyncio.to_thread(backend.started.wait, 30)
            two = [b.submit({"x": _x(1, i)}) for i in range(2)]
            backend.gate.set()
            await first
            await asyncio.sleep(0.05)  # arrives while the worker waits to fill the batch
            late = [b.submit({"x": _x(1, 9)}), b.submit({"x": _x(1, 8)})]
            for f in [*two, *late]:
                await f
            return backend
        finally:
            b.stop()
    assert asyncio.run(go()).batches == [1, 4]


def test_full_queue_is_refused(mlp_dir: Path) -> None:
    async def go() -> None:
        b, backend = _batcher(mlp_dir, asyncio.get_running_loop(), max_queue=2)
        try:
            backend.gate.clear()
            first = b.submit({"x": _x(1, 0)})
            await asyncio.to_thread(backend.started.wait, 30)
            queued = [b.submit({"x": _x(1, 1)}), b.submit({"x": _x(1, 2)})]
            with pytest.raises(UnavailableError, match="queued"):
                b.submit({"x": _x(1, 3)})
            backend.gate.set()
            for f in [first, *queued]:
                await f
        finally:
            b.stop()
    asyncio.run(go())


def test_a_failing_batch_fails_its_requests_only(mlp_dir: Path) -> None:
    async def go() -> None:
        b, _ = _batcher(mlp_dir, asyncio.get_running_loop())
        try:
            with pytest.raises(Exception, match=r"(?i)invalid|shape|dimension"):
                await b.submit({"x": np.zeros((1, 7), np.float32)})  # bypasses the codec
            out = await b.submit({"x": _x(1, 0)})
            assert out["y"].shape == (1, 10)
        finally:
            b.stop()
    asyncio.run(go())


def test_small_merged_batch_is_not_held_for_the_delay(mlp_dir: Path) -> None:
    async def go() -> tuple[float, GatedBackend]:
        b, backend = _batcher(mlp_dir, asyncio.get_running_loop(), delay_ms=5000)
        try:
            backend.gate.clear()
            first = b.submit({"x": _x(1, 0)})
            await asyncio.to_thread(backend.started.wait, 30)
            two = [b.submit({"x": _x(1, i)}) for i in range(2)]  # 2 of 32 rows: under half
            backend.gate.set()
            await first
            t = time.perf_counter()
            for f in two:
                await f
            return time.perf_counter() - t, backend
        finally:
            b.stop()
    waited, backend = asyncio.run(go())
    assert backend.batches == [1, 2] and waited < 2.5
