"""The GPU check: one command on a machine with an NVIDIA GPU, PyTorch with CUDA and
nvidia-ml-py, and no container engine or network (`make gpu-check`).

Steps, each a row of the printed table:

1. NVML probe: the GPUs, driver and CUDA version, as the installer sees them.
2. Placement: the check's model placed on a GPU by its declared memory.
3. Install: a signed bundle (a torch.export CNN, weights only) installed on a temp
   site with the process engine running this host's own Python runtime (no image
   here), which serves it on the placed GPU (cuda:0 inside).
4. Answers: the served outputs against the same program run by torch on the CPU.
5. Throughput: images/s at concurrency 32 (one image a request, the runtime's
   dynamic batcher makes the batches) against raw in-process torch at batch 32 on
   the same device; target at least 80 %.
6. Memory: the device memory in use (GPU: NVML; CPU: the server's RSS) while batch
   sizes 1 to 32 take turns for `--soak` seconds; flat means it ends where it began
   its second half, within 5 % or 64 MiB.

`--device cpu` runs the same steps on the CPU with small sizes: the dry run that
`make test` holds. The table is printed and written to `--out` (default
`out/gpu-check-<device name>.md`). Packages beyond torch and nvidia-ml-py come from
`--wheels DIR` (staged by `make gpu-check-wheels`), installed with no index.
"""

from __future__ import annotations

import argparse
import http.client
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
NEEDED = ("uvicorn", "numpy", "psutil", "orjson", "yaml", "cryptography")
CONCURRENCY = 32
CLIENT_PROCESSES = 4  # at most; half the cores, so the server keeps the rest
BATCHES = (1, 2, 4, 8, 16, 32)
MIB = 1024 * 1024
# The bounds: everything beyond torch and nvidia-ml-py fits in 64 MiB of wheels,
# and the whole check (the default sizes) takes under 8 minutes.
WHEELS_BUDGET = 64 * MIB
TIME_BUDGET_S = 8 * 60


@dataclass
class Sizes:
    """How big the check is: the model's input and how long each timed step runs."""

    image: int  # input is [batch, 3, image, image]
    width: int  # channels of the first convolution
    seconds: float  # each throughput run
    soak: float  # the memory run


@dataclass
class Row:
    step: str
    result: str
    target: str = ""
    ok: bool = True


@dataclass
class Report:
    device: str
    rows: list[Row] = field(default_factory=list)

    def add(self, step: str, result: str, target: str = "", ok: bool = True) -> None:
        self.rows.append(Row(step, result, target, ok))
        print(f"  {'ok  ' if ok else 'FAIL'} {step}: {result}", flush=True)

    def table(self) -> str:
        lines = [f"GPU check on {self.device}", "",
                 "| step | result | target | |", "| --- | --- | --- | --- |"]
        lines += [f"| {r.step} | {r.result} | {r.target} | {'ok' if r.ok else 'FAIL'} |"
                  for r in self.rows]
        return "\n".join(lines) + "\n"


def wheels_size(wheels: Path) -> int:
    """The bytes of the wheels in `wheels` (what a person carries to the GPU machine)."""
    return sum(p.stat().st_size for p in wheels.glob("*.whl") if p.is_file())


def ensure_packages(wheels: Path | None) -> None:
    """Install what the runtime needs beyond torch from `wheels`, with no index; refuse a
    wheels directory over its 64 MiB budget in one line."""
    if wheels is not None and wheels.is_dir() and wheels_size(wheels) > WHEELS_BUDGET:
        sys.exit(f"gpu-check: the wheels in {wheels} take {wheels_size(wheels) / MIB:.1f} MiB, "
                 f"over the {WHEELS_BUDGET // MIB} MiB budget; stage only "
                 "`make gpu-check-wheels`'s list (GPU_CHECK_NEEDS)")
    missing = [m for m in NEEDED if importlib.util.find_spec(m) is None]
    if not missing:
        return
    if wheels is None or not wheels.is_dir():
        sys.exit(f"gpu-check: missing {', '.join(missing)}; stage the wheels with "
                 "`make gpu-check-wheels` (where PyPI is reachable) and pass --wheels DIR")
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--find-links",
                    str(wheels), "-r", str(wheels / "requirements.txt")], check=True)


def make_cnn(directory: Path, sizes: Sizes, seed: int = 0) -> Any:
    """A small CNN saved with torch.export, and its model.json; returns the module."""
    import torch

    torch.manual_seed(seed)
    w = sizes.width
    module = torch.nn.Sequential(
        torch.nn.Conv2d(3, w, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(2 * w, 4 * w, 3, stride=2, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4 * w, 10),
    ).eval()
    example = torch.zeros(2, 3, sizes.image, sizes.image)
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(module, (example,), dynamic_shapes=({0: batch},))
    directory.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, str(directory / "model.pt2"))
    doc = {"name": "cnn", "version": "1", "framework": "torch-export", "file": "model.pt2",
           "inputs": [{"name": "x", "datatype": "FP32",
                       "shape": [-1, 3, sizes.image, sizes.image]}],
           "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 10]}],
           "max_batch_size": 32, "max_queue_delay_ms": 2.0, "gpu_memory_mib": 0}
    (directory / "model.json").write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return program


def appliance(*args: str, cwd: Path) -> str:
    """Run the `appliance` CLI of this checkout; fail the check with its output."""
    env = {**os.environ, "PYTHONPATH": f"{REPO}:{os.environ.get('PYTHONPATH', '')}"}
    r = subprocess.run([sys.executable, "-m", "appliance", *args], cwd=cwd, env=env,
                       capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise SystemExit(f"gpu-check: appliance {' '.join(args)} failed "
                         f"({r.returncode}):\n{r.stdout[-2000:]}{r.stderr[-2000:]}")
    return r.stdout


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def infer_body(x: Any) -> tuple[bytes, dict[str, str]]:
    """A V2 request with `x` as a binary tensor, asking for a binary output."""
    raw = x.tobytes()
    header = json.dumps({
        "inputs": [{"name": "x", "datatype": "FP32", "shape": list(x.shape),
                    "parameters": {"binary_data_size": len(raw)}}],
        "outputs": [{"name": "y", "parameters": {"binary_data": True}}]}).encode()
    return header + raw, {"Content-Type": "application/octet-stream",
                          "Inference-Header-Content-Length": str(len(header))}


def infer(conn: http.client.HTTPConnection, x: Any) -> Any:
    """One request on a kept-alive connection; the output as an array."""
    import numpy as np
    body, headers = infer_body(x)
    conn.request("POST", "/v2/models/cnn/infer", body=body, headers=headers)
    r = conn.getresponse()
    data = r.read()
    if r.status != 200:
        raise RuntimeError(f"infer answered {r.status}: {data[:300]!r}")
    n = int(r.getheader("Inference-Header-Content-Length") or len(data))
    out = json.loads(data[:n])["outputs"][0]
    return np.frombuffer(data[n:], dtype=np.float32).reshape(out["shape"])


def _client_process(port: int, x1: Any, stop: float, threads: int, out: Any) -> None:
    """`threads` closed-loop clients until `stop`; puts (answers, errors) on `out`."""
    done = [0] * threads
    errors = [0] * threads

    def client(i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            while time.time() < stop:
                try:
                    infer(conn, x1)
                    done[i] += 1
                except (OSError, RuntimeError, http.client.HTTPException):
                    errors[i] += 1
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        finally:
            conn.close()

    pool = [threading.Thread(target=client, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    out.put((sum(done), sum(errors)))


def served_throughput(port: int, x1: Any, seconds: float) -> tuple[float, int]:
    """Images/s over `seconds` with CONCURRENCY clients each sending one image at a time.

    The clients are spread over a few processes, so Python's own lock does not cap the
    load they can make.
    """
    import multiprocessing as mp
    ctx = mp.get_context("fork")
    procs = max(1, min(CLIENT_PROCESSES, (os.cpu_count() or 1) // 2))
    out = ctx.Queue()
    t0 = time.time()
    stop = t0 + seconds
    workers = [ctx.Process(target=_client_process,
                           args=(port, x1, stop, CONCURRENCY // procs + (i < CONCURRENCY % procs),
                                 out)) for i in range(procs)]
    for w in workers:
        w.start()
    results = [out.get(timeout=seconds + 120) for _ in workers]
    for w in workers:
        w.join()
    return sum(r[0] for r in results) / (time.time() - t0), sum(r[1] for r in results)


def raw_throughput(program: Any, device: str, x32: Any, seconds: float) -> float:
    """Images/s of the same program in this process at batch 32 on `device`."""
    import torch
    module = program.module().to(device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    with torch.inference_mode():
        for _ in range(5):
            module(torch.from_numpy(x32).to(device)).cpu()
        sync()
        n = 0
        t0 = time.monotonic()
        while time.monotonic() - t0 < seconds:
            # the same round trip the runtime makes: host tensor in, host tensor out
            module(torch.from_numpy(x32).to(device)).cpu()
            n += len(x32)
        sync()
        rate = n / (time.monotonic() - t0)
    del module
    if device.startswith("cuda"):
        torch.cuda.empty_cache()  # leave the GPU's memory to the server for the soak
    return rate


def memory_sampler(device: str, pid: int) -> Callable[[], int]:
    """Bytes in use: NVML's used memory of GPU 0, or the server's RSS on the CPU."""
    if device.startswith("cuda"):
        import pynvml
        pynvml.nvmlInit()
        h = pynvml.nvmlDeviceGetHandleByIndex(0)
        return lambda: int(pynvml.nvmlDeviceGetMemoryInfo(h).used)
    import psutil
    proc = psutil.Process(pid)
    return lambda: int(proc.memory_info().rss)


def soak(port: int, sizes: Sizes, sample: Callable[[], int]) -> tuple[list[int], int]:
    """Batch sizes 1..32 in turn for `sizes.soak` seconds, sampling memory; (samples, n)."""
    import numpy as np
    rng = np.random.default_rng(1)
    xs = {b: rng.standard_normal((b, 3, sizes.image, sizes.image), dtype=np.float32)
          for b in BATCHES}
    samples: list[int] = []
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    n = 0
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < sizes.soak:
            for b in BATCHES:
                infer(conn, xs[b])
                n += 1
            samples.append(sample())
    finally:
        conn.close()
    return samples, n


def server_pid(port: int) -> int:
    """The pid of the runtime listening on `port` (the process engine started it)."""
    import psutil
    for c in psutil.net_connections("tcp"):
        if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid:
            return int(c.pid)
    raise SystemExit(f"gpu-check: nothing listens on port {port}")


def run(args: argparse.Namespace) -> Report:
    """Every step, in order; the report holds one row each."""
    import torch

    from appliance.site.gpu import NvmlProbe

    cuda = args.device == "cuda"
    sizes = (Sizes(image=64, width=32, seconds=args.seconds, soak=args.soak) if cuda else
             Sizes(image=16, width=4, seconds=min(args.seconds, 3.0), soak=min(args.soak, 5.0)))
    report_gpu = NvmlProbe().probe()
    name = report_gpu.gpus[0].name if report_gpu.gpus else "CPU (dry run)"
    rep = Report(name if cuda else f"CPU (dry run; NVML: {report_gpu.unavailable or name})")
    print(f"gpu-check on {rep.device}", flush=True)

    # 1. NVML
    if cuda:
        if not report_gpu.gpus or not torch.cuda.is_available():
            rep.add("NVML probe", report_gpu.unavailable or "torch sees no CUDA device",
                    "a GPU", ok=False)
            return rep
        g = report_gpu.gpus[0]
        rep.add("NVML probe", f"{len(report_gpu.gpus)} x {g.name}, driver {report_gpu.driver}, "
                              f"CUDA {report_gpu.cuda}, {g.memory_free_mib} MiB free on GPU 0")
    else:
        rep.add("NVML probe", report_gpu.unavailable or f"{len(report_gpu.gpus)} GPU(s)",
                "none needed (dry run)")

    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        work = Path(tmp)
        program = make_cnn(work / "model", sizes)
        port = free_port()
        (work / "appliance.yaml").write_text(json.dumps({
            "name": "gpu-check", "version": "1.0.0", "sequence": 1,
            "models": [{"name": "cnn", "path": "model", "gpu_memory_mib": 1024}],
            "services": [{"name": "cnn", "models": ["cnn"], "port": port,
                          "gpu": "required" if cuda else "none"}]}))
        appliance("keys", "generate", "--out", "vendor", cwd=work)
        appliance("keys", "root", "--pub", "vendor.pub", "-o", "root.json", "--sign-with",
                  "vendor.key", cwd=work)
        appliance("bundle", "build", "-f", "appliance.yaml", "-o", "check.bundle", "--key",
                  "vendor.key", cwd=work)
        site = work / "site"
        t0 = time.monotonic()
        out = appliance("install", "check.bundle", "--yes", "--trust", "root.json", "--root",
                        str(site), "--engine", "process", "--runtime-from", "host",
                        "--unit-dir", str(work / "units"), cwd=work)
        install_s = time.monotonic() - t0
        try:
            placed = [ln.strip() for ln in out.splitlines() if "cnn" in ln and
                      ("GPU" in ln or "CPU" in ln or "cpu" in ln)]
            rep.add("placement", placed[0][:120] if placed else "(no placement line)",
                    "GPU 0" if cuda else "CPU", ok=bool(placed))
            served_port = _served_port(out, port)
            rep.add("install (process engine)", f"ready in {install_s:.1f} s on port "
                                                f"{served_port}")
            _steps(rep, program, served_port, sizes, args, cuda)
        finally:
            _stop(site, work / "units")
    return rep


def _served_port(install_output: str, port: int) -> int:
    """The port the release listens on (its slot moves it by a fixed step)."""
    found = re.findall(r"http://127\.0\.0\.1:(\d+)", install_output)
    return int(found[-1]) if found else port


def _steps(rep: Report, program: Any, port: int, sizes: Sizes, args: argparse.Namespace,
           cuda: bool) -> None:
    import numpy as np
    import torch

    rng = np.random.default_rng(0)
    x32 = rng.standard_normal((32, 3, sizes.image, sizes.image), dtype=np.float32)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        served = infer(conn, x32)
        conn.request("GET", "/v2/models/cnn")
        meta = json.loads(conn.getresponse().read())
    finally:
        conn.close()
    with torch.inference_mode():
        ref = program.module()(torch.from_numpy(x32)).numpy()
    err = float(np.max(np.abs(served - ref)) / (np.max(np.abs(ref)) or 1.0))
    # the runtime's own word on its device, where it gives one
    device_said = meta.get("device") or (meta.get("parameters") or {}).get("device", "(none)")
    rep.add("answers vs CPU", f"max relative difference {err:.1e} over 32 images; the "
                              f"runtime says device {device_said}", "<= 1e-3", ok=err <= 1e-3)

    device = "cuda:0" if cuda else "cpu"
    # the clients fork first: this process has not touched CUDA yet
    served_rate, errors = served_throughput(port, x32[:1], sizes.seconds)
    raw = raw_throughput(program, device, x32, sizes.seconds)
    share = served_rate / raw if raw else 0.0
    rep.add("throughput", f"served {served_rate:,.0f} images/s at concurrency {CONCURRENCY} "
                          f"({errors} errors); raw torch {raw:,.0f} images/s at batch 32: "
                          f"{share:.0%}", ">= 80 % of raw" if cuda else "reported only",
            ok=errors == 0 and (share >= 0.8 or not cuda))

    pid = server_pid(port)
    samples, n = soak(port, sizes, memory_sampler(device, pid))
    half = samples[len(samples) // 2:] or samples
    drift = half[-1] - half[0]
    allowed = max(64 * MIB, int(0.05 * half[0]))
    what = "GPU memory used" if cuda else "server RSS"
    rep.add("memory, batch 1..32", f"{what} {half[0] / MIB:,.0f} -> {half[-1] / MIB:,.0f} MiB "
                                   f"over the second half of {sizes.soak:.0f} s ({n} requests, "
                                   f"peak {max(samples) / MIB:,.0f} MiB)",
            f"flat within {allowed / MIB:,.0f} MiB", ok=abs(drift) <= allowed)


def _stop(site: Path, units: Path) -> None:
    """Stop what the install started (the supervisor and the runtime)."""
    from appliance.engines.process import ProcessEngine
    from appliance.site.layout import Site
    eng = ProcessEngine(Site(site), unit_dir=units, use_systemd=False)
    for seq in eng.running():
        eng.stop(seq)


def main(argv: list[str] | None = None) -> int:
    """Run the check, print its table and save it; exit 1 when a step fails."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--seconds", type=float, default=20.0, help="each throughput run")
    p.add_argument("--soak", type=float, default=120.0, help="the memory run, seconds")
    p.add_argument("--wheels", type=Path, help="wheels for what torch does not bring")
    p.add_argument("--out", type=Path, help="where to save the table (markdown)")
    args = p.parse_args(argv)
    ensure_packages(args.wheels)
    sys.path.insert(0, str(REPO))
    t0 = time.monotonic()
    rep = run(args)
    took = time.monotonic() - t0
    rep.add("whole check", f"{took:.0f} s", f"under {TIME_BUDGET_S // 60} min",
            ok=took < TIME_BUDGET_S)
    table = rep.table() + f"\n{took:.0f} s, `{' '.join(sys.argv)}`\n"
    print("\n" + table)
    slug = re.sub(r"[^A-Za-z0-9]+", "-", rep.device.split(";")[0]).strip("-").lower()
    out = args.out or REPO / "out" / f"gpu-check-{slug}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table)
    print(f"saved {out}")
    return 0 if all(r.ok for r in rep.rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
