"""The second half of `make demo`: install the demo bundle on a local site and show it answer.

The engine: a container engine when one answers (DOCKER_HOST, podman's or Docker's
socket; or podman installed, whose socket the demo starts for the install), over the
runtime image from `images.build` (built once, then cached by its inputs); otherwise,
or when that image cannot be built here, the process engine over the same verified
model files. Every choice is printed with its reason.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from appliance.bundle.store import ContentStore
from appliance.errors import ApplianceError, EngineUnavailableError
from appliance.site.door import DoorRecord
from appliance.site.engine import Engine
from appliance.site.layout import SLOT_PORT_STEP, Site
from appliance.units import human
from bundler.demo import DemoResult

SOCKETS = ("unix:///run/podman/podman.sock", "unix:///var/run/docker.sock")
ENGINE_FILE = "engine.json"
SERVICE_START_S = 30.0


@dataclass(frozen=True)
class EngineChoice:
    """The engine the demo installs with, and why."""

    kind: str  # "docker" or "process"
    url: str | None
    why: str


def candidate_sockets() -> list[str]:
    """Engine sockets to try, in order: DOCKER_HOST, podman's, Docker's, rootless podman's."""
    urls = [os.environ["DOCKER_HOST"]] if os.environ.get("DOCKER_HOST") else []
    urls += SOCKETS
    if os.environ.get("XDG_RUNTIME_DIR"):
        urls.append(f"unix://{os.environ['XDG_RUNTIME_DIR']}/podman/podman.sock")
    return urls


def answering_socket(site: Site) -> tuple[str, str] | None:
    """The first engine socket that answers a ping, with its description."""
    from appliance.engines.docker import DockerEngine
    for url in candidate_sockets():
        eng = DockerEngine(site, base_url=url)
        try:
            return url, eng.ping()
        except ApplianceError:
            continue
        finally:
            eng.close()
    return None


@contextmanager
def podman_socket(work: Path) -> Iterator[str | None]:
    """Start `podman system service` on a socket under `work` for the demo's duration.

    Yields its URL, or None when podman is not installed or its socket does not come up.
    The containers it starts keep running after the service stops (conmon holds them).
    """
    podman = shutil.which("podman")
    if podman is None:
        yield None
        return
    # A short path: unix socket paths are limited to about 100 bytes.
    d = Path(tempfile.mkdtemp(prefix="demo-pm", dir="/tmp"))
    sock = d / "podman.sock"
    with (d / "podman.log").open("wb") as log:
        proc = subprocess.Popen([podman, "system", "service", "--time=0", f"unix://{sock}"],
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + SERVICE_START_S
        while time.monotonic() < deadline and proc.poll() is None and not _accepts(sock):
            time.sleep(0.1)
        yield f"unix://{sock}" if _accepts(sock) else None
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(d, ignore_errors=True)


def _accepts(sock: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(str(sock))
        except OSError:
            return False
    return True


def runtime_image(say: Any) -> Path | None:
    """The slim runtime image archive (built or cached), or None saying why not."""
    try:
        from images.build import build_runtime_image
        from images.errors import ImageBuildError
    except ImportError as e:
        say(f"engine       no image builder here ({e}); using the process engine")
        return None
    started = time.monotonic()
    say("image        runtime image: building, or reusing the cached build "
        "(first build on a new machine takes minutes)")
    try:
        built = build_runtime_image("slim")
    except ImageBuildError as e:
        say(f"engine       cannot build the runtime image ({e}); using the process engine")
        return None
    how = "built" if built.built else "cached"
    say(f"image        {built.tag} ({built.archive_bytes / 1e6:.0f} MB, {how}, "
        f"{time.monotonic() - started:.1f} s)")
    return built.archive


def proxy_image(runtime_archive: Path | None, say: Any) -> Path | None:
    """The front door's proxy image archive (built or cached beside the runtime image's),
    or None saying why the demo serves without a front door."""
    if runtime_archive is None:
        return None
    try:
        from images.errors import ImageBuildError
        from images.proxy import build_proxy_image
    except ImportError as e:
        say(f"image        no image builder here ({e}); serving without a front door")
        return None
    started = time.monotonic()
    try:
        built = build_proxy_image()
    except ImageBuildError as e:
        say(f"image        cannot build the front door's proxy image ({e}); serving "
            "without a front door")
        return None
    how = "built" if built.built else "cached"
    say(f"image        front door proxy image {built.tag} ({built.archive_bytes / 1e6:.0f} MB, "
        f"{how}, {time.monotonic() - started:.1f} s; carried in the bundle)")
    return built.archive


def free_port(preferred: int) -> int:
    """`preferred` if it and its other-slot port are free, else another such port."""
    def free(p: int) -> bool:
        for q in (p, p + SLOT_PORT_STEP):
            with socket.socket() as s:
                # as the server will bind: connections in TIME_WAIT do not hold the port
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind(("0.0.0.0", q))  # noqa: S104 - free on every interface
                except OSError:
                    return False
        return True
    if free(preferred):
        return preferred
    for p in range(preferred + 1, preferred + SLOT_PORT_STEP):
        if free(p):
            return p
    raise OSError(f"ports {preferred}-{preferred + SLOT_PORT_STEP} are all in use; "
                  "pass --port with a free one")


def make_engine(choice: EngineChoice, site: Site, work: Path) -> Engine:
    """The engine object for `choice` (process: supervised, units under `work`, no systemd)."""
    if choice.kind == "docker":
        from appliance.engines.docker import DockerEngine
        return DockerEngine(site, base_url=choice.url)
    from appliance.engines.process import ProcessEngine
    # The demo serves this checkout's runtime; its front door runs from the proxy image,
    # confined, which takes root; as another user, from the host's haproxy package.
    return ProcessEngine(site, unit_dir=work / "units", use_systemd=False,
                         runtime_from="host",
                         proxy_from=None if os.geteuid() == 0 else "host")


def stop_previous(work: Path, site: Site, url: str | None) -> None:
    """Stop whatever an earlier demo run left serving from this site, then forget it.

    `url` is the engine socket this run uses; when the earlier run used a container
    engine and this one does not, its socket is looked for (or podman's started) again.
    """
    recorded = work / ENGINE_FILE
    if site.root.exists() and recorded.is_file():
        kind = json.loads(recorded.read_text()).get("kind", "process")
        with ExitStack() as stack:
            if kind == "docker" and url is None:
                found = answering_socket(site)
                url = found[0] if found else stack.enter_context(podman_socket(work))
            if kind == "process" or url is not None:
                eng = make_engine(EngineChoice(kind, url, ""), site, work)
                for rel in site.releases():
                    with suppress(ApplianceError, OSError):
                        eng.stop(rel.sequence)
                stop_proxy = getattr(eng, "stop_proxy", None)  # the front door, if any
                if stop_proxy is not None:
                    with suppress(ApplianceError, OSError):
                        stop_proxy()
    shutil.rmtree(site.root, ignore_errors=True)
    recorded.unlink(missing_ok=True)


def record_engine(work: Path, choice: EngineChoice) -> None:
    (work / ENGINE_FILE).write_text(json.dumps({"kind": choice.kind, "url": choice.url}) + "\n")


def infer_once(endpoint: str, x: np.ndarray, request_file: Path,
               door: DoorRecord | None = None) -> np.ndarray:
    """One V2 JSON inference (the body is also saved for the printed curl line); through
    the front door with its CA file and token when `door` is given."""
    body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": list(x.shape),
                                   "data": x.reshape(-1).tolist()}]}).encode()
    request_file.write_bytes(body)
    headers = {"Content-Type": "application/json"}
    context = None
    if door is not None:
        headers["Authorization"] = f"Bearer {Path(door.token_file).read_text().strip()}"
        context = ssl.create_default_context(cafile=door.ca_file)
    req = urllib.request.Request(  # noqa: S310 - the local endpoint we just installed
        f"{endpoint}/v2/models/mlp/infer", data=body, method="POST", headers=headers)
    with urllib.request.urlopen(req, timeout=30, context=context) as r:  # noqa: S310
        doc = json.loads(r.read())
    out = doc["outputs"][0]
    return np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])


def choose_engine(wanted: str, site: Site, work: Path, stack: ExitStack) -> EngineChoice:
    """The engine for `wanted` ("auto", "docker", "process"), saying why.

    Raises:
        EngineUnavailableError: "docker" was asked for and no engine answers.
    """
    if wanted == "process":
        return EngineChoice("process", None, "asked for with --engine process")
    found = answering_socket(site)
    if found is not None:
        return EngineChoice("docker", found[0], found[1])
    url = stack.enter_context(podman_socket(work))
    if url is not None:
        return EngineChoice("docker", url, f"podman is installed: started its socket at {url} "
                                           "for the install")
    if wanted == "docker":
        raise EngineUnavailableError(
            "no container engine answers (tried " + ", ".join(candidate_sockets()) +
            ") and podman is not installed; start docker or podman's socket, or use "
            "--engine process")
    return EngineChoice("process", None, "no container engine answers and podman is not "
                                         "installed")


def print_bundle(r: DemoResult) -> None:
    """What the bundle holds, one line per thing."""
    m = r.verified.manifest
    print(f"demo bundle  {r.bundle} ({human(r.bundle.stat().st_size)})")
    print(f"trust root   {r.trust_root}  (key {r.key})")
    print(f"verified     {m.name} {m.version} sequence {m.sequence}, {len(m.members)} members, "
          f"manifest {r.verified.manifest_digest[:19]}")
    for mod in m.models:
        print(f"model        {mod.name} v{mod.version} {mod.framework} weights "
              f"{mod.weights_digest[:19]} ({human(mod.weights_size)}) in image {mod.image}")
    for img in m.images:
        print(f"image        {img.reference} {img.manifest_digest[:19]}")
    print(f"site store   {r.site / 'blobs' / 'sha256'} "
          f"({len(ContentStore(r.site).digests())} verified blobs)")


def run_demo(work: Path, *, engine: str, port: int, clean: bool, started: float) -> int:
    """Build, install and serve the demo; print the endpoint, a curl line and one answer."""
    from appliance.cli.progress import ProgressPrinter
    from appliance.site.gpu import NvmlProbe
    from appliance.site.plan import InstallOptions, InstallPlan
    from bundler.demo import make_demo_bundle
    from bundler.samples import mlp_reference

    def say(line: str) -> None:
        print(line, flush=True)

    work.mkdir(parents=True, exist_ok=True)
    site = Site(work / "site")
    try:
        with ExitStack() as stack:
            choice = choose_engine(engine, site, work, stack)
            stop_previous(work, site, choice.url)
            if clean:
                for child in work.iterdir():
                    if child.is_dir():
                        shutil.rmtree(child)
                    else:
                        child.unlink()
            archive = runtime_image(say) if choice.kind == "docker" else None
            if choice.kind == "docker" and archive is None:
                choice = EngineChoice("process", None, "the runtime image is not available")
            say(f"engine       {choice.kind}: {choice.why}")
            port = free_port(port)
            demo = make_demo_bundle(work, runtime_archive=archive, port=port,
                                    proxy_archive=proxy_image(archive, say))
            print_bundle(demo)
            eng = make_engine(choice, site, work)
            record_engine(work, choice)
            plan = InstallPlan(InstallOptions(bundle=demo.bundle, site=site, engine=eng,
                                              gpu_probe=NvmlProbe(), trust=demo.trust_root,
                                              health_timeout_s=180.0),
                               progress=ProgressPrinter(bar=False))
            result = plan.run()
    except (ApplianceError, OSError) as e:
        print(f"error: {e}", flush=True)
        return 1
    door = DoorRecord.read(site)
    x = np.linspace(-1.0, 1.0, 64, dtype=np.float32).reshape(1, 64)
    request = work / "request.json"
    if door is not None:
        # the stable address; the demo reaches it on loopback, which the certificate covers
        endpoint = f"https://127.0.0.1:{door.ports['mlp']}"
        auth = (f"--cacert {door.ca_file} -H \"Authorization: Bearer $(cat "
                f"{door.token_file})\" ")
    else:
        endpoint, auth = result.endpoints["mlp"], ""
    y = infer_once(endpoint, x, request, door)
    ok = np.allclose(y, mlp_reference(x), rtol=1e-4, atol=1e-5)
    say("")
    say(f"serving      release {result.sequence} with the {choice.kind} engine"
        + (" behind the front door (HTTPS, token)" if door is not None else ""))
    if door is not None:
        say(f"front door   {door.url('mlp')}  certificate SHA-256 {door.fingerprint}")
    say(f"endpoint     {endpoint}/v2/models/mlp  (ready: {endpoint}/v2/health/ready)")
    say(f"try it       curl -s {auth}-X POST {endpoint}/v2/models/mlp/infer "
        f"-H 'Content-Type: application/json' -d @{request}")
    say(f"answer       y = [{', '.join(f'{v:.4f}' for v in y.reshape(-1))}]")
    say(f"             {'matches' if ok else 'DOES NOT MATCH'} the numpy reference of the model")
    say(f"status       python -m appliance status --root {site.root}"
        + (f" --docker-host {choice.url}" if choice.kind == "docker" and choice.url
           and not choice.url.startswith("unix:///tmp/") else ""))
    say(f"done in {time.monotonic() - started:.1f} s")
    return 0 if ok else 1


def stop_demo(work: Path) -> int:
    """Stop what an earlier demo run left serving and remove its site."""
    try:
        stop_previous(work, Site(work / "site"), None)
    except (ApplianceError, OSError) as e:
        print(f"error: {e}", flush=True)
        return 1
    print(f"stopped the demo under {work} and removed its site", flush=True)
    return 0
