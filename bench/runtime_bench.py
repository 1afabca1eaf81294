"""Runtime benchmark: raw ONNX Runtime, our server and MLServer 1.7 on the same ONNX files.

    /work/main/.venv/bin/python bench/runtime_bench.py [--seconds 10] [--soak 300]
        [--mlserver /work/mlserver-venv/bin/mlserver]
    /work/main/.venv/bin/python bench/runtime_bench.py --load-mib 200
    /work/main/.venv/bin/python bench/runtime_bench.py --compare-rev REV [--seconds 10]

`--compare-rev REV` instead serves the MLP from the working tree and from git revision REV
(extracted with `git archive` into a temp dir), alternating, and prints infer throughput,
p50 and the server's CPU time per request of both under the same closed-loop loads, with
the ratios (medians over `--rounds` alternations). CPU per request is the steadier figure
on a machine shared with other work.

`--load-mib N` instead times loading an N MiB ONNX MLP (4096-wide layers) in fresh
processes: one file read by path, the same file passed as bytes from Python, and the
weights as ONNX external data with and without weight pre-packing (load and warm-up time,
RSS split into anonymous and file-backed memory, peak RSS, batch-32 inference time).

Models are made by code (bundler.samples): an MLP 64-256-10 (the HTTP path is the cost)
and a CNN 3x32x32 -> conv 128 -> conv 256/2 -> GAP -> 10 (compute is the cost: about 1 ms
per row on one core at batch 32; its model.json asks for --cnn-threads intra-op threads,
2 by default). In one run: raw ONNX Runtime in-process at batch 1/8/32 (the ceiling);
each server under closed-loop concurrency 1/8/32 (wrk) and
open-loop Poisson arrivals at several rates; MLServer with its batching on and off. The
load generators share the machine's cores with the server.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.loadgen import LoadResult, poisson, wrk  # noqa: E402
from bundler.samples import make_cnn_onnx, make_mlp_onnx  # noqa: E402

MLSERVER_RUNTIME = '''
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class OnnxModel(MLModel):
    async def load(self) -> bool:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(self.settings.parameters.uri, opts,
                                            providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = NumpyCodec.decode_input(payload.inputs[0])
        y = self.session.run(None, {self.input: x})[0]
        return InferenceResponse(model_name=self.name,
                                 outputs=[NumpyCodec.encode_output("y", y)])
'''


LOAD_CHILD = r'''
import json, sys, time
t0 = time.perf_counter()
import numpy as np
sys.path.insert(0, sys.argv[3])
from runtime.backends import load_backend, mapped_bytes, warm_up
from modelcontract import load_spec

def status():
    out = {}
    for line in open("/proc/self/status"):
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024
    return out

spec = load_spec(__import__("pathlib").Path(sys.argv[1]) / "model.json")
before = status()
t = time.perf_counter()
if sys.argv[2] == "bytes":
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(spec.path.read_bytes(), opts,
                                   providers=["CPUExecutionProvider"])
    run = lambda x: session.run(None, {"x": x})
    run(np.zeros((1, 64), np.float32))
else:
    backend = load_backend(spec, "cpu", 1)
    warm_up(spec, backend)
    run = lambda x: backend.run({"x": x})
load_s = time.perf_counter() - t
after = status()
x = np.ones((32, 64), np.float32)
times = []
for _ in range(20):
    t = time.perf_counter()
    run(x)
    times.append(time.perf_counter() - t)
print(json.dumps({"load_s": load_s, "before": before, "after": after,
                  "mapped_mib": sum(mapped_bytes(spec.directory).values()) / 2**20,
                  "b32_ms": float(np.median(times)) * 1000}))
'''


def load_bench(tmp: Path, mib: float) -> None:
    """Load time and memory of a large ONNX model, single file against external data."""
    import onnx

    wide = max(1, round(mib / 64))  # a 4096x4096 FP32 layer is 64 MiB
    single = tmp / "single"
    make_mlp_onnx(single, sizes=(64, *[4096] * (wide + 1), 10))
    external = tmp / "external"
    external.mkdir()
    shutil.copy(single / "model.json", external / "model.json")
    onnx.save_model(onnx.load(str(single / "model.onnx")), str(external / "model.onnx"),
                    save_as_external_data=True, location="model.onnx.data",
                    size_threshold=1024)
    prepacked = tmp / "external-prepacked"
    shutil.copytree(external, prepacked)
    doc = json.loads((prepacked / "model.json").read_text())
    doc["prepack_weights"] = True
    (prepacked / "model.json").write_text(json.dumps(doc))
    size = sum(f.stat().st_size for f in external.iterdir()) / 2**20
    print(f"# {size:.0f} MiB of weights; page cache warm (each file read once before); "
          f"median of 3 fresh processes per row\n")
    print("| weights | loaded by | load + warm-up s | RSS MiB | anon MiB | file-backed MiB "
          "| peak RSS MiB | mapped MiB | batch-32 ms |\n|---|---|---|---|---|---|---|---|---|")
    for label, d, mode in [
        ("one file", single, "runtime"), ("one file", single, "bytes"),
        ("external data, prepack_weights: true", prepacked, "runtime"),
        ("external data (default: memory-mapped)", external, "runtime"),
    ]:
        for f in d.iterdir():
            f.read_bytes()  # same page-cache state for every row
        runs = []
        for _ in range(3):
            out = subprocess.run([sys.executable, "-c", LOAD_CHILD, str(d), mode, str(REPO)],
                                 check=True, capture_output=True, text=True).stdout
            runs.append(json.loads(out.splitlines()[-1]))
        r = sorted(runs, key=lambda v: v["load_s"])[1]
        a, b = r["after"], r["before"]
        by = "bytes from Python" if mode == "bytes" else "path (runtime)"
        print(f"| {label} | {by} | {r['load_s']:.3f} | {a['VmRSS'] - b['VmRSS']:.0f} | "
              f"{a['RssAnon'] - b['RssAnon']:.0f} | {a['RssFile'] - b['RssFile']:.0f} | "
              f"{a['VmHWM']:.0f} | {r['mapped_mib']:.0f} | {r['b32_ms']:.2f} |", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/v2/health/ready", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready after {timeout}s")


@contextmanager
def running(cmd: list[str], url: str, cwd: Path, log: Path,
            env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, **(env or {})})
    try:
        wait_ready(url, proc)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def cpu_seconds(pid: int) -> float:
    """User and system CPU seconds of a process and its threads so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def raw_ort(path: Path, shape: tuple[int, ...], threads: int, seconds: float
            ) -> dict[int, tuple[float, float]]:
    """Rows/s and p50 ms per batch size, in-process, no HTTP."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    out = {}
    for batch in (1, 8, 32):
        x = np.random.default_rng(0).standard_normal((batch, *shape)).astype(np.float32)
        for _ in range(20):
            sess.run(None, {"x": x})
        times = []
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            t = time.perf_counter()
            sess.run(None, {"x": x})
            times.append(time.perf_counter() - t)
        out[batch] = (batch * len(times) / sum(times), float(np.median(times)) * 1000)
    return out


def body_for(shape: tuple[int, ...]) -> bytes:
    x = np.random.default_rng(0).standard_normal((1, *shape)).astype(np.float32)
    return json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, *shape],
                                   "data": [round(float(v), 6) for v in x.ravel()]}]}).encode()


def binary_body_for(shape: tuple[int, ...]) -> tuple[bytes, dict[str, str]]:
    """The same tensor with the binary tensor data extension (our server only)."""
    x = np.random.default_rng(0).standard_normal((1, *shape)).astype("<f4")
    header = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, *shape],
                                     "parameters": {"binary_data_size": x.nbytes}}]}).encode()
    return header + x.tobytes(), {"Inference-Header-Content-Length": str(len(header))}


def batch_sizes(url: str) -> dict[str, float]:
    """Our server's runtime_batch_size histogram (cumulative buckets, sum, count)."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "runtime_batch_size":
            for s in family.samples:
                key = s.labels.get("le", s.name.rsplit("_", 1)[-1])
                out[key] = out.get(key, 0.0) + s.value
    return out


def batch_fill(before: dict[str, float], after: dict[str, float]) -> str:
    """Mean rows per batch and the share of batches of each size range, between two scrapes."""
    d = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    n = d.get("count", 0.0)
    if not n:
        return "no batches"
    parts, below = [], 0.0
    for le in sorted((k for k in d if k not in ("sum", "count", "+Inf")), key=float):
        share = (d[le] - below) / n
        if share > 0:
            parts.append(f"<={float(le):g}: {share:.0%}")
        below = d[le]
    return f"{n:,.0f} batches, mean {d['sum'] / n:.1f} rows; " + ", ".join(parts)


def load_suite(url: str, body: bytes, seconds: float, rates: list[float],
               metrics_url: str = "") -> dict[str, LoadResult]:
    results = {}
    for c in (1, 8, 32):
        before = batch_sizes(metrics_url) if metrics_url and c == 32 else {}
        results[f"closed c={c}"] = wrk(url, body, c, seconds)
        if before:
            print(f"batch sizes at closed c=32: {batch_fill(before, batch_sizes(metrics_url))}")
    for r in rates:
        results[f"poisson {r:.0f}/s"] = poisson(url, body, r, seconds)
    return results


def binary_suite(url: str, shape: tuple[int, ...], seconds: float) -> dict[str, LoadResult]:
    body, headers = binary_body_for(shape)
    return {f"closed c={c}, binary": wrk(url, body, c, seconds, headers) for c in (1, 8, 32)}


def mlserver_dir(root: Path, name: str, onnx: Path, batching: bool) -> Path:
    d = root / f"mlserver-{name}-{'batch' if batching else 'nobatch'}"
    (d / name).mkdir(parents=True)
    (d / "onnx_model.py").write_text(MLSERVER_RUNTIME)
    (d / name / "model.onnx").write_bytes(onnx.read_bytes())
    settings: dict[str, object] = {"name": name, "implementation": "onnx_model.OnnxModel",
                                   "parameters": {"uri": str(d / name / "model.onnx")}}
    if batching:
        settings.update({"max_batch_size": 32, "max_batch_time": 0.002})
    (d / name / "model-settings.json").write_text(json.dumps(settings))
    return d


def row(server: str, load: str, r: LoadResult) -> str:
    load1 = os.getloadavg()[0]
    late = f"{r.client_late_p99_ms:.1f}" if load.startswith("poisson") else ""
    return (f"| {server} | {load} | {r.rps:,.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | "
            f"{r.errors} | {late} | {load1:.1f} |")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=10.0, help="per load run")
    p.add_argument("--soak", type=float, default=0.0, help="MLP c=32 soak seconds (RSS check)")
    p.add_argument("--mlserver", default="/work/mlserver-venv/bin/mlserver",
                   help="mlserver executable (its own venv); '' to skip the peer")
    p.add_argument("--load-mib", type=float, default=0.0,
                   help="only time loading an ONNX model of about this many MiB")
    p.add_argument("--models", default="mlp,cnn")
    p.add_argument("--cnn-threads", type=int, default=2,
                   help="intra_op_threads in the CNN's model.json (ours only)")
    p.add_argument("--no-peer-batching-off", action="store_true",
                   help="run MLServer only with its batching on")
    p.add_argument("--compare-rev", default="",
                   help="only compare infer speed with the code at this git revision")
    p.add_argument("--rounds", type=int, default=2, help="alternations for --compare-rev")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="runtime-bench-"))
    try:
        if args.compare_rev:
            return compare(args, tmp)
        if args.load_mib:
            load_bench(tmp, args.load_mib)
            return 0
        return run(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def compare(args: argparse.Namespace, tmp: Path) -> int:
    """This tree against `--compare-rev` on the MLP, alternating trees per load."""
    base = tmp / "base"
    base.mkdir()
    archive = subprocess.run(["git", "archive", args.compare_rev], cwd=REPO, check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(base)], input=archive, check=True)
    rev = subprocess.run(["git", "rev-parse", "--short", args.compare_rev], cwd=REPO,
                         check=True, capture_output=True, text=True).stdout.strip()
    model_dir = make_mlp_onnx(tmp / "models" / "mlp" / "1")
    body = body_for((64,))
    binary, headers = binary_body_for((64,))
    loads = [(f"closed c={c}", body, None, c) for c in (1, 8, 32)]
    loads.append(("closed c=8, binary", binary, headers, 8))
    got: dict[tuple[str, str], list[LoadResult]] = {}
    cpu: dict[tuple[str, str], list[float]] = {}  # server CPU microseconds per request
    print(f"# cores: {os.cpu_count()}; wrk shares them; {args.seconds:.0f} s per run, "
          f"{args.rounds} alternations; model: MLP 64-256-10 ({model_dir.name})\n")
    for i in range(args.rounds):
        trees = [("this tree", REPO), (rev, base)]
        for label, tree in trees if i % 2 == 0 else trees[::-1]:
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            cmd = [sys.executable, "-m", "runtime", "--models", str(tmp / "models"),
                   "--port", str(port), "--data-dir", str(tmp / f"data-{i}-{label}")]
            env = {"PYTHONPATH": str(tree)}
            with running(cmd, url, tree, tmp / f"{label}-{i}.log", env) as proc:
                for load, b, h, c in loads:
                    before = cpu_seconds(proc.pid)
                    r = wrk(f"{url}/v2/models/mlp/infer", b, c, args.seconds, h)
                    used = cpu_seconds(proc.pid) - before
                    got.setdefault((label, load), []).append(r)
                    cpu.setdefault((label, load), []).append(used / max(r.requests, 1) * 1e6)
    print("| load | tree | req/s | p50 ms | p99 ms | errors | server CPU us/req "
          "| req/s vs base | p50 vs base | CPU/req vs base |\n" + "|---" * 10 + "|")
    for load, *_ in loads:
        runs = {label: got[(label, load)] for label in ("this tree", rev)}

        def med(rs: list[LoadResult], attr: str) -> float:
            return float(np.median([getattr(r, attr) for r in rs]))
        base_cpu = float(np.median(cpu[(rev, load)]))
        for label, rs in runs.items():
            rps, p50 = med(rs, "rps"), med(rs, "p50_ms")
            per_req = float(np.median(cpu[(label, load)]))
            if label == "this tree":
                ratio = (f"{rps / med(runs[rev], 'rps'):.3f} | "
                         f"{p50 / med(runs[rev], 'p50_ms'):.3f} | {per_req / base_cpu:.3f}")
            else:
                ratio = "baseline | baseline | baseline"
            print(f"| {load} | {label} | {rps:,.0f} | {p50:.2f} | {med(rs, 'p99_ms'):.2f} | "
                  f"{sum(r.errors for r in rs)} | {per_req:.0f} | {ratio} |", flush=True)
    return 0


def run(args: argparse.Namespace, tmp: Path) -> int:
    """Every measurement, printed as markdown tables as it comes."""
    models = tmp / "models"
    made = {
        "mlp": (make_mlp_onnx(models / "mlp" / "1"), (64,), [250, 500, 1000, 2000]),
        "cnn": (make_cnn_onnx(models / "cnn" / "1", channels=(128, 256)), (3, 32, 32),
                [100, 200, 300, 450]),
    }
    # Compute-bound: with batching the model thread should have both cores.
    spec_path = made["cnn"][0] / "model.json"
    spec = json.loads(spec_path.read_text())
    spec["intra_op_threads"] = args.cnn_threads
    spec_path.write_text(json.dumps(spec))
    wanted = args.models.split(",")
    print(f"# cores: {os.cpu_count()}; load generators (wrk, Poisson client) share them; "
          f"{args.seconds:.0f} s per run")
    for name in wanted:
        model_dir, shape, rates = made[name]
        onnx = model_dir / "model.onnx"
        print(f"\n## {name}\n\n| raw ONNX Runtime | batch | rows/s | p50 ms |\n|---|---|---|---|")
        for threads in (1, 2):
            for batch, (rows, p50) in raw_ort(onnx, shape, threads, 3.0).items():
                print(f"| in-process, {threads} thread(s) | {batch} | {rows:,.0f} | {p50:.3f} |")
        body = body_for(shape)
        print("\n| server | load | req/s | p50 ms | p99 ms | errors | client late p99 ms "
              "| loadavg 1m |\n|---|---|---|---|---|---|---|---|")
        one = tmp / f"only-{name}"
        (one / name).mkdir(parents=True)
        (one / name / "1").symlink_to(model_dir)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        cmd = [sys.executable, "-m", "runtime", "--models", str(one), "--port", str(port),
               "--data-dir", str(tmp / f"data-{name}")]
        with running(cmd, url, REPO, tmp / f"ours-{name}.log") as proc:
            infer = f"{url}/v2/models/{name}/infer"
            results = load_suite(infer, body, args.seconds, rates, url)
            results.update(binary_suite(infer, shape, args.seconds))
            for load, r in results.items():
                print(row("ours", load, r), flush=True)
            if args.soak and name == "mlp":
                before = rss_mib(proc.pid)
                r = wrk(infer, body, 32, args.soak)
                after = rss_mib(proc.pid)
                print(row(f"ours, {args.soak:.0f} s soak", "closed c=32", r))
                print(f"\nRSS before soak {before:.1f} MiB, after {after:.1f} MiB")
        if not args.mlserver:
            continue
        for batching in (True,) if args.no_peer_batching_off else (True, False):
            d = mlserver_dir(tmp, name, onnx, batching)
            mport = free_port()
            (d / "settings.json").write_text(json.dumps({
                "parallel_workers": 0, "http_port": mport, "grpc_port": free_port(),
                "metrics_port": free_port(), "debug": False, "metrics_endpoint": None,
            }))
            murl = f"http://127.0.0.1:{mport}"
            label = f"MLServer 1.7 batching {'on' if batching else 'off'}"
            with running([args.mlserver, "start", str(d)], murl, d, d / "server.log",
                         env={"PYTHONPATH": str(d)}):
                for load, r in load_suite(f"{murl}/v2/models/{name}/infer", body,
                                          args.seconds, rates).items():
                    print(row(label, load, r), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
