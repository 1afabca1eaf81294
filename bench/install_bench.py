"""From "bundle on the USB directory" to "first successful inference", against doing it by hand.

A bundle with 1 GiB of weights: an ONNX MLP x[-1,16384] -> Gemm 16384x16384 -> Relu ->
Gemm 16384x10 whose big matrix is ONNX external data (`weights.bin`, 1 GiB), so the runtime
really reads, loads and multiplies through all of it. Over the slim runtime image.

Both paths start from the same file on the "stick" and an empty engine storage (a
private podman --root, or a fresh dockerd data-root, per run, so nothing is cached from
before) and end at the first inference answered through tritonclient that matches numpy:
  by hand: `podman load -i BUNDLE`, `podman run -d --network host IMAGE`, poll inference
           (with --engine docker: `docker load -i` and `docker run` against dockerd);
  ours:    `appliance install BUNDLE --yes` (preflight, verify + copy into the store,
           placement, load, start, ready, signed sample, switch) through podman's
           Docker-compatible socket over that same storage (or dockerd's socket), then
           one inference.
The page cache is dropped before each run (root only; --keep-cache to skip), so both read
the stick cold. Runs alternate (hand, ours, hand, ours, ...); the table shows each
run's steps and the medians.

    python bench/install_bench.py [--rounds 2] [--work /var/tmp/appliance-bench]
                                  [--engine podman|docker] [--service-tmpdir /dev/shm]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WIDTH = 16384  # 16384 x 16384 float32 = 1 GiB
OUT = 10
SEED = 0


# -- the 1 GiB model ---------------------------------------------------------------------------

def make_big_model(directory: Path) -> Path:
    """The ONNX MLP with its 1 GiB matrix as external data (made once, then reused)."""
    from onnx import TensorProto, helper, numpy_helper

    done = directory / ".complete"
    if done.exists():
        return directory
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    rng = np.random.default_rng(SEED)
    w1 = rng.standard_normal((WIDTH, WIDTH), dtype=np.float32)
    w1 *= np.float32(1.0 / np.sqrt(WIDTH))
    w1.tofile(directory / "weights.bin")
    del w1
    w1_info = TensorProto()
    w1_info.name, w1_info.data_type = "w1", TensorProto.FLOAT
    w1_info.dims.extend([WIDTH, WIDTH])
    w1_info.data_location = TensorProto.EXTERNAL
    for k, v in (("location", "weights.bin"), ("offset", "0"),
                 ("length", str(WIDTH * WIDTH * 4))):
        w1_info.external_data.add(key=k, value=v)
    w2, b1, b2 = _small_weights()
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w1", "b1"], ["g"]),
         helper.make_node("Relu", ["g"], ["h"]),
         helper.make_node("Gemm", ["h", "w2", "b2"], ["y"])],
        "big",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", OUT])],
        [w1_info, numpy_helper.from_array(b1, "b1"), numpy_helper.from_array(w2, "w2"),
         numpy_helper.from_array(b2, "b2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (directory / "model.onnx").write_bytes(model.SerializeToString())
    (directory / "model.json").write_text(json.dumps({
        "name": "big", "version": "1", "framework": "onnx", "file": "model.onnx",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, WIDTH]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, OUT]}],
        "max_batch_size": 4, "max_queue_delay_ms": 1.0, "gpu_memory_mib": 0}, indent=2))
    done.touch()
    return directory


def _small_weights() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(SEED + 1)
    w2 = (rng.standard_normal((WIDTH, OUT)) / np.sqrt(WIDTH)).astype(np.float32)
    return w2, np.zeros(WIDTH, np.float32), np.zeros(OUT, np.float32)


def reference(directory: Path, x: np.ndarray) -> np.ndarray:
    """What the model must answer, computed with numpy from the same files."""
    w1 = np.memmap(directory / "weights.bin", dtype=np.float32, mode="r", shape=(WIDTH, WIDTH))
    w2, b1, b2 = _small_weights()
    return np.asarray(np.maximum(x @ w1 + b1, 0) @ w2 + b2)


# -- the bundle ----------------------------------------------------------------------------------

def build(work: Path, runtime_archive: Path, port: int) -> tuple[Path, Path, Path, Any]:
    """Key, trust root and the signed bundle; returns (bundle, root.json, model dir, manifest)."""
    import yaml

    from bundler.build import build_bundle
    from bundler.spec import load_spec
    from signing import PrivateKey, TrustRoot

    model_dir = make_big_model(work / "model-cache" / "big")
    spec_dir = work / "spec"
    spec_dir.mkdir(parents=True, exist_ok=True)
    x = np.full((1, WIDTH), 0.01, np.float32)
    spec = {
        "name": "bench", "version": "1.0.0", "sequence": 1, "expires_days": 30,
        "platform": "linux/amd64", "runtime_image": {"archive": str(runtime_archive)},
        "models": [{"name": "big", "version": "1", "path": str(model_dir),
                    "max_batch_size": 4, "max_queue_delay_ms": 1,
                    "provenance": {"code_commit": "bench", "data_version": "seed-0",
                                   "training_run": "none"},
                    "samples": [{"inputs": {"x": _tensor(x)},
                                 "outputs": {"y": _tensor(reference(model_dir, x))},
                                 "tolerance": 1e-3}]}],
        "services": [{"name": "big", "models": ["big"], "port": port, "gpu": "preferred"}],
    }
    (spec_dir / "appliance.yaml").write_text(yaml.safe_dump(spec))
    key = PrivateKey.generate()
    root = work / "root.json"
    root.write_bytes(TrustRoot.create([key.public_key]).to_json())
    bundle = work / "bench-bundle.tar"
    manifest = build_bundle(load_spec(spec_dir / "appliance.yaml"), bundle, [key])
    return bundle, root, model_dir, manifest


def _tensor(a: np.ndarray) -> dict[str, Any]:
    return {"datatype": "FP32", "shape": list(a.shape), "data": a.reshape(-1).tolist()}


# -- measuring -------------------------------------------------------------------------------------

@dataclass
class Run:
    path: str
    steps: dict[str, float] = field(default_factory=dict)

    @property
    def total(self) -> float:
        return sum(self.steps.values())


class Storage:
    """A private podman storage (--root/--runroot) that starts empty and is removed after."""

    def __init__(self, base: Path) -> None:
        self.base = base
        shutil.rmtree(base, ignore_errors=True)
        base.mkdir(parents=True)
        self.flags = ["--root", str(base / "root"), "--runroot", str(base / "run"),
                      "--tmpdir", str(base / "tmp")]

    def podman(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["podman", *self.flags, *args], capture_output=True, text=True,
                              check=check)

    def close(self) -> None:
        self.podman("rm", "-af", "-t", "2", check=False)
        self.podman("system", "reset", "-f", check=False)
        subprocess.run(["umount", "-R", str(self.base)], capture_output=True, check=False)
        shutil.rmtree(self.base, ignore_errors=True)


@contextlib.contextmanager
def podman_service(storage: Storage, tmpdir: Path | None) -> Iterator[str]:
    """podman's Docker-compatible socket over `storage`; it spools image uploads under
    $TMPDIR (`tmpdir` when given) before loading them."""
    sock = Path(f"/tmp/bench-pm-{os.getpid()}.sock")
    sock.unlink(missing_ok=True)
    env = {**os.environ, **({"TMPDIR": str(tmpdir)} if tmpdir else {})}
    proc = subprocess.Popen(["podman", *storage.flags, "system", "service", "--time=0",
                             f"unix://{sock}"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True, env=env)
    try:
        deadline = time.monotonic() + 30
        while not _accepts(sock):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("podman system service did not come up")
            time.sleep(0.05)
        yield f"unix://{sock}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        sock.unlink(missing_ok=True)


class PodmanTarget:
    """podman: the CLI by hand, its socket service for ours, over one private storage."""

    name = "podman"

    def __init__(self, work: Path, service_tmpdir: Path | None) -> None:
        self.storage = Storage(work / "storage")
        self.service_tmpdir = service_tmpdir

    def cli(self, *args: str) -> None:
        self.storage.podman(*args)

    def socket(self) -> contextlib.AbstractContextManager[str]:
        return podman_service(self.storage, self.service_tmpdir)

    def close(self) -> None:
        self.storage.close()


class DockerTarget:
    """dockerd (Debian's 20.10 here) on a private socket, data-root and exec-root."""

    name = "docker"

    def __init__(self, work: Path) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="bd", dir="/tmp"))  # short: holds sockets
        self.data = work / "dockerd-data"
        shutil.rmtree(self.data, ignore_errors=True)
        sock = self.dir / "docker.sock"
        self.url = f"unix://{sock}"
        self.log = (self.dir / "dockerd.log").open("wb")
        self.proc = subprocess.Popen(
            ["dockerd", "--iptables=false", "--ip6tables=false", "--bridge=none", "-H",
             self.url, "--data-root", str(self.data), "--exec-root", str(self.dir / "x"),
             "--pidfile", str(self.dir / "docker.pid")],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while not (_accepts(sock) and subprocess.run(
                ["docker", "-H", self.url, "version"], capture_output=True).returncode == 0):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"dockerd did not come up; see {self.dir / 'dockerd.log'}")
            time.sleep(0.1)

    def cli(self, *args: str) -> None:
        subprocess.run(["docker", "-H", self.url, *args], capture_output=True, text=True,
                       check=True)

    @contextlib.contextmanager
    def socket(self) -> Iterator[str]:
        yield self.url

    def close(self) -> None:
        subprocess.run(["docker", "-H", self.url, "rm", "-f", "bench-hand"],
                       capture_output=True, check=False)
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
        for sub in (self.dir / "x" / "netns" / "default", self.dir / "x", self.data):
            subprocess.run(["umount", "-R", "-l", str(sub)], capture_output=True, check=False)
        shutil.rmtree(self.data, ignore_errors=True)
        shutil.rmtree(self.dir, ignore_errors=True)


Target = PodmanTarget | DockerTarget


def _accepts(sock: Path) -> bool:
    with socket.socket(socket.AF_UNIX) as s:
        try:
            s.connect(str(sock))
        except OSError:
            return False
    return True


def drop_caches(enabled: bool) -> None:
    if enabled:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")


PROBE = np.full((1, WIDTH), 0.02, np.float32)


def first_inference(url: str, want: np.ndarray, deadline_s: float = 300.0) -> None:
    """Poll inference until it answers; check the answer against `want` (numpy's)."""
    import tritonclient.http as triton
    x = PROBE
    client = triton.InferenceServerClient(url, network_timeout=60)
    deadline = time.monotonic() + deadline_s
    try:
        while True:
            try:
                inp = triton.InferInput("x", [1, WIDTH], "FP32")
                inp.set_data_from_numpy(x)
                got = client.infer("big", [inp]).as_numpy("y")
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
    finally:
        client.close()
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)


def by_hand(stick_bundle: Path, reference_name: str, port: int, want: np.ndarray,
            target: Target) -> Run:
    run = Run("by hand")
    t = time.monotonic()
    target.cli("load", "-i", str(stick_bundle))
    run.steps[f"{target.name} load"] = time.monotonic() - t
    t = time.monotonic()
    target.cli("run", "-d", "--name", "bench-hand", "--network", "host",
               reference_name, "python", "-m", "runtime", "--models", "/models",
               "--port", str(port), "--host", "0.0.0.0")
    run.steps[f"{target.name} run"] = time.monotonic() - t
    t = time.monotonic()
    first_inference(f"127.0.0.1:{port}", want)
    run.steps["ready + first inference"] = time.monotonic() - t
    return run


def ours(stick_bundle: Path, root_json: Path, work: Path, want: np.ndarray,
         target: Target, installer: Path | None = None, process: bool = False) -> Run:
    """`appliance install` from Python, or the self-contained executable's (`installer`);
    with `process`, on the process engine (no container engine: the service runs from the
    image's root, unpacked from the store)."""
    run = Run("appliance install" if installer is None else
              "executable, process engine" if process else "executable install")
    command = [str(installer)] if installer else [sys.executable, "-m", "appliance"]
    site = work / "site"
    shutil.rmtree(site, ignore_errors=True)
    (work / "no-gpu.json").write_text(json.dumps({"gpus": [], "unavailable": "bench"}))
    with target.socket() as url:
        engine = (["--engine", "process", "--unit-dir", str(work / "units")] if process
                  else ["--engine", "docker", "--docker-host", url])
        t0 = time.monotonic()
        proc = subprocess.Popen(
            [*command, "install", str(stick_bundle), "--yes", "--json",
             "--root", str(site), *engine,
             "--trust", str(root_json), "--gpu-state", str(work / "no-gpu.json")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert proc.stdout is not None
        began: dict[str, float] = {}
        last = t0
        for line in proc.stdout:
            ev = json.loads(line)
            now = time.monotonic()
            if ev.get("kind") == "StepEvent" and ev.get("status") == "running":
                if not began:
                    run.steps["CLI start"] = now - t0
                began[ev["step"]] = now
            elif ev.get("kind") == "StepEvent":
                run.steps[ev["step"]] = now - began[ev["step"]]
                last = now
        err = proc.stderr.read() if proc.stderr else ""
        if proc.wait() != 0:
            raise RuntimeError(f"appliance install failed: {err.strip()}")
        run.steps["exit"] = time.monotonic() - last
        status = json.loads(subprocess.run(
            [*command, "status", "--json", "--root", str(site)],
            capture_output=True, text=True, check=True, cwd=ROOT).stdout)
        t = time.monotonic()
        first_inference(status["endpoints"]["big"].removeprefix("http://"), want)
        run.steps["first inference"] = time.monotonic() - t
        from appliance.site.layout import Site
        if process:
            from appliance.engines.process import ProcessEngine
            ProcessEngine(Site(site), unit_dir=work / "units", use_systemd=False).stop(1)
            return run
        from appliance.engines.docker import DockerEngine
        eng = DockerEngine(Site(site), base_url=url)
        eng.stop(1)
        eng.close()
    return run


_ESCAPES = rb"\x1b(\[[0-9;?<>=]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)|[()][0-9A-B]|.)"


def _drain(fd: int, seen: bytearray) -> None:
    """Read what the TUI drew so far (a full pty would stall it)."""
    import select
    while select.select([fd], [], [], 0.05)[0]:
        try:
            chunk = os.read(fd, 65536)
        except OSError as e:  # the pty closed
            raise RuntimeError("the TUI exited") from e
        if not chunk:
            return
        seen.extend(chunk)


def _screen_until(fd: int, seen: bytearray, text: str, deadline_s: float) -> None:
    """Read the TUI's output until `text` shows (terminal escapes stripped)."""
    import re
    escapes = re.compile(_ESCAPES)
    deadline = time.monotonic() + deadline_s
    while text not in escapes.sub(b"", bytes(seen)).decode(errors="replace"):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the TUI never showed {text!r}")
        _drain(fd, seen)


def ours_tui(stick: Path, installer: Path, work: Path, want: np.ndarray,
             target: Target, process: bool = False) -> Run:
    """The executable with no arguments on a terminal, the keys a person presses sent at once.

    With `process`, `tui --engine process`: what the TUI picks by itself on a server with
    no container engine (this one has podman, so the bench names it)."""
    import pty
    import signal

    from appliance.site.layout import Site
    from installer_tui.screens.trust import COMPARED_TEXT
    run = Run("executable TUI, process engine" if process else "executable TUI")
    argv = [str(installer), *(("tui", "--engine", "process", "--unit-dir", str(work / "units"))
                              if process else ())]
    site = work / "site"
    shutil.rmtree(site, ignore_errors=True)
    with target.socket() as url:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "TERM": "xterm-256color",
               "LANG": "C.UTF-8", "TMPDIR": tempfile.gettempdir(), "DOCKER_HOST": url,
               "APPLIANCE_ROOT": str(site), "COLUMNS": "100", "LINES": "30"}
        t0 = time.monotonic()
        pid, fd = pty.fork()
        if pid == 0:
            os.chdir(stick)
            os.execve(str(installer), argv, env)
        seen = bytearray()
        try:
            _screen_until(fd, seen, COMPARED_TEXT, 120)
            run.steps["to the trust screen"] = time.monotonic() - t0
            t = time.monotonic()
            os.write(fd, b" c")  # tick the comparison, trust and continue
            _screen_until(fd, seen, "to install release", 600)
            run.steps["preflight + verify"] = time.monotonic() - t
            t = time.monotonic()
            os.write(fd, b"i")
            while (cur := Site(site).current()) is None:
                _drain(fd, seen)
                if time.monotonic() - t > 600:
                    raise RuntimeError("the TUI's install never switched")
                time.sleep(0.05)
            run.steps["load .. switch"] = time.monotonic() - t
            t = time.monotonic()
            first_inference(cur.record.endpoints["big"].removeprefix("http://"), want)
            run.steps["first inference"] = time.monotonic() - t
        finally:
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 20
            while os.waitpid(pid, os.WNOHANG) == (0, 0):
                if time.monotonic() > deadline:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                    break
                with contextlib.suppress(RuntimeError):
                    _drain(fd, seen)
                time.sleep(0.05)
            os.close(fd)
            if process:
                from appliance.engines.process import ProcessEngine
                ProcessEngine(Site(site), unit_dir=work / "units", use_systemd=False).stop(1)
            else:
                from appliance.engines.docker import DockerEngine
                eng = DockerEngine(Site(site), base_url=url)
                eng.stop(1)
                eng.close()
    return run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main(argv: list[str] | None = None) -> int:
    """Build the 1 GiB bundle, time both paths `--rounds` times each, print the table."""
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--work", type=Path, default=Path("/var/tmp/appliance-bench"))
    p.add_argument("--keep-cache", action="store_true", help="do not drop the page cache")
    p.add_argument("--engine", choices=("podman", "docker"), default="podman",
                   help="podman (CLI by hand, its socket for ours) or dockerd 20.10")
    p.add_argument("--service-tmpdir", type=Path, default=None,
                   help="TMPDIR of podman's socket service, where it spools an uploaded "
                        "archive before loading it (e.g. /dev/shm); default: podman's own")
    p.add_argument("--installer", type=Path, default=None,
                   help="also time the self-contained executable (out/appliance-installer "
                        "from `make installer`), copied onto the stick beside the bundle: "
                        "headless, and its TUI with no arguments on a terminal")
    args = p.parse_args(argv)
    for binary in ("podman", *(("dockerd", "docker") if args.engine == "docker" else ())):
        if shutil.which(binary) is None:
            print(f"error: {binary} is not installed (.ci/setup-system installs it)",
                  file=sys.stderr)
            return 1
    drop = not args.keep_cache and os.geteuid() == 0
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    from images.build import build_runtime_image
    archive = build_runtime_image("slim").archive
    port = free_port()
    t = time.monotonic()
    bundle, root_json, model_dir, manifest = build(work, archive, port)
    build_s = time.monotonic() - t
    stick = work / "usb"
    stick.mkdir(exist_ok=True)
    on_stick = stick / bundle.name
    shutil.copyfile(bundle, on_stick)
    on_stick_exe = None
    if args.installer:
        on_stick_exe = stick / "appliance-installer"
        shutil.copy2(args.installer, on_stick_exe)
        shutil.copy2(root_json, stick / "root.json")  # the TUI offers the root beside it
    ref = manifest.image("big").reference
    want = reference(model_dir, PROBE)  # once, outside the timed runs
    weights = sum(m.weights_size for m in manifest.models)
    print(f"bundle {on_stick.stat().st_size / 2**30:.2f} GiB ({weights / 2**30:.2f} GiB "
          f"weights), built in {build_s:.1f} s; page cache "
          f"{'dropped before each run' if drop else 'kept'}; {os.cpu_count()} cores; engine "
          f"{args.engine}" + (f", podman service TMPDIR {args.service_tmpdir or 'default'}"
                              if args.engine == "podman" else ""), flush=True)

    runs: list[Run] = []
    for i in range(args.rounds):
        for path in ("hand", "ours", *(("exe", "tui", "exe-process", "tui-process")
                                       if on_stick_exe else ())):
            target: Target = (DockerTarget(work) if args.engine == "docker"
                              else PodmanTarget(work, args.service_tmpdir))
            try:
                drop_caches(drop)
                if path == "hand":
                    r = by_hand(on_stick, ref, port, want, target)
                elif path.startswith("tui") and on_stick_exe:
                    r = ours_tui(stick, on_stick_exe, work, want, target,
                                 process=path == "tui-process")
                else:
                    r = ours(on_stick, root_json, work, want, target,
                             on_stick_exe if path.startswith("exe") else None,
                             process=path == "exe-process")
            finally:
                target.close()
            runs.append(r)
            print(f"round {i + 1} {r.path:<18} {r.total:6.1f} s  " + "  ".join(
                f"{k} {v:.1f}" for k, v in r.steps.items()), flush=True)
    hand = statistics.median(r.total for r in runs if r.path == "by hand")
    mine = statistics.median(r.total for r in runs if r.path == "appliance install")
    print()
    print(f"{'path':<40} {'median s':>9}")
    print(f"{f'{args.engine} load + {args.engine} run (by hand)':<40} {hand:9.1f}")
    print(f"{'appliance install (verify included)':<40} {mine:9.1f}")
    print(f"{'ratio (target <= 1.3)':<40} {mine / hand:9.2f}")
    if on_stick_exe:
        exe = statistics.median(r.total for r in runs if r.path == "executable install")
        print(f"{'./appliance-installer install (stick)':<40} {exe:9.1f}")
        print(f"{'ratio to by hand (target 1.0)':<40} {exe / hand:9.2f}")
        tui = statistics.median(r.total for r in runs if r.path == "executable TUI")
        print(f"{'./appliance-installer, TUI (keys sent)':<40} {tui:9.1f}")
        print(f"{'ratio to by hand (target 1.0)':<40} {tui / hand:9.2f}")
        proc = statistics.median(r.total for r in runs if r.path == "executable, process engine")
        print(f"{'./appliance-installer --engine process':<40} {proc:9.1f}")
        print(f"{'ratio to by hand (target 1.0)':<40} {proc / hand:9.2f}")
        tproc = statistics.median(r.total for r in runs
                                  if r.path == "executable TUI, process engine")
        print(f"{'./appliance-installer TUI, process engine':<40} {tproc:9.1f}")
        print(f"{'ratio to by hand (target 1.0)':<40} {tproc / hand:9.2f}")
    print()
    steps = [r for r in runs if r.path == "appliance install"]
    names = list(steps[0].steps)
    print("appliance install by step (median s): " + ", ".join(
        f"{n} {statistics.median(r.steps.get(n, 0.0) for r in steps):.1f}" for n in names))
    return 0


if __name__ == "__main__":
    sys.exit(main())
