"""The exposition comes from prometheus-client, one private registry per server."""

from __future__ import annotations

import prometheus_client
from prometheus_client.parser import text_string_to_metric_families

from modelcontract import GpuState
from runtime.metrics import Metrics


def _samples(m: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(m.render()) for s in f.samples}


def test_each_server_counts_in_its_own_registry() -> None:
    a, b = Metrics(), Metrics()
    a.requests.inc(("mlp", "1", "200"))
    a.requests.inc(("mlp", "1", "200"))
    a.latency.observe(("mlp", "cpu"), 0.003)
    key = ("runtime_requests_total", (("code", "200"), ("model", "mlp"), ("version", "1")))
    assert _samples(a)[key] == 2.0
    assert key not in _samples(b)
    assert a.registry is not b.registry
    assert prometheus_client.REGISTRY.get_sample_value("runtime_requests_total", {
        "model": "mlp", "version": "1", "code": "200"}) is None
    assert not any(name.endswith("_created") for name, _ in _samples(a))


def test_histogram_and_windowed_quantiles_for_the_history() -> None:
    m = Metrics()
    for v in (0.001, 0.002, 0.002, 0.004, 0.2):
        m.latency.observe(("mlp", "cuda:0"), v)
    s = _samples(m)
    count = ("runtime_request_duration_seconds_count", (("device", "cuda:0"), ("model", "mlp")))
    assert s[count] == 5
    assert s[("runtime_request_duration_seconds_bucket",
              (("device", "cuda:0"), ("le", "0.0025"), ("model", "mlp")))] == 3
    window = m.latency.take_window()
    assert sum(window) == 5 and sum(m.latency.take_window()) == 0
    p50 = m.latency.quantile(window, 0.5)
    assert p50 is not None and 0.001 < p50 <= 0.0025
    assert _samples(m)[count] == 5  # taking the window leaves the histogram alone


def test_gauges_for_models_queues_process_and_gpus() -> None:
    m = Metrics()
    m.ready_models[("mlp", "1")] = True
    m.model_devices[("mlp", "1")] = "cuda:0"
    m.queue_depth["mlp"] = 3
    m.gpus = [GpuState(index=0, name="fake", memory_total_mib=1024, memory_free_mib=768,
                          utilization_pct=40, temperature_c=61)]
    s = _samples(m)
    assert s[("runtime_model_ready", (("device", "cuda:0"), ("model", "mlp"),
                                      ("version", "1")))] == 1
    assert s[("runtime_queue_depth", (("model", "mlp"),))] == 3
    assert s[("runtime_gpu_memory_used_bytes", (("gpu", "0"),))] == 256 * 2**20
    assert s[("runtime_gpu_temperature_celsius", (("gpu", "0"),))] == 61
    assert s[("process_resident_memory_bytes", ())] > 1e6
