"""The docker engine: Docker or Podman's Docker-compatible socket, through the docker SDK.

Images come from the verified content store, never from a pull, and the loaded
ids are checked against the manifest's config digests. Against Docker they are
streamed into `POST /images/load` (`image_archive_chunks` as the request body); a
podman on this host loads them in place from the store (`appliance.engines.podmanload`),
and what it cannot load is streamed as for Docker. Containers use host
networking with the release's slot port, restart `unless-stopped`, carry a
health check, are confined per `appliance.engines.hardening` (read-only root, no
capabilities, limits, bounded logs, one data volume per site and service), and get
the GPU they are placed on the way this engine takes it (`appliance.engines.gpus`: CDI
through libpod on Podman, a device request on Docker).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import socket
import time
from collections.abc import Iterator, Sequence
from typing import Any

from appliance.bundle.imagearchive import image_archive_chunks
from appliance.bundle.manifest import Image, Manifest, image_blobs
from appliance.bundle.store import ContentStore
from appliance.engines import libpod
from appliance.engines.dockerproxy import ProxyContainerMixin, short_error
from appliance.engines.forget import forget_docker
from appliance.engines.gpus import CDI_DEVICES, GpuMode, add_gpus, gpu_mode, takes_gpus
from appliance.engines.hardening import (
    MIN_MEMORY,
    Limits,
    data_dir,
    data_volume,
    hardened,
    nofile_limit,
    service_limits,
)
from appliance.engines.podmanload import load_in_place, podman_cli
from appliance.errors import EngineError, EngineUnavailableError, ImageLoadError, StoreError
from appliance.frontdoor.token import RUNTIME_TOKENS, TOKEN_DIR_IN_RUNTIME, own_runtime_tokens
from appliance.progress import Progress, ProgressFn, no_progress
from appliance.site.engine import (
    HEALTH_INTERVAL_S,
    HEALTH_RETRIES,
    HEALTH_START_PERIOD_S,
    HEALTH_TIMEOUT_S,
    Launch,
    behind_front_door,
    launches,
    runtime_command,
    site_id,
)
from appliance.site.layout import Release, Site
from appliance.site.placement import Placement

log = logging.getLogger(__name__)
NS = 1_000_000_000
LABEL_SITE = "io.appliance.site"
LABEL_RELEASE = "io.appliance.release"
LABEL_SERVICE = "io.appliance.service"
REMOVE_RETRY_S = (0.5, 1.0, 2.0)  # waits between attempts to remove a container
PROBE_API = "1.24"  # any version will do for the unversioned GET /version
# No whitespace in any word: podman 4.3's compat API splits a health check's words on
# spaces, so "import urllib.request; ..." became five arguments and never passed.
DEFAULT_HEALTH = ("CMD", "python", "-c",
                  "__import__('urllib.request').request.urlopen("
                  "'http://127.0.0.1:{port}{path}',timeout=4)")


class DockerEngine(ProxyContainerMixin):
    """Runs each service as a container on a Docker or Podman socket."""

    name = "docker"

    def __init__(self, site: Site, *, base_url: str | None = None,
                 health_test: Sequence[str] | None = None, stop_timeout_s: int = 10,
                 local_load: bool = True) -> None:
        self.site = site
        self.local_load = local_load  # `podman load` from the store when podman is local
        self.base_url = base_url or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
        self.health_test = list(health_test) if health_test else None
        self.stop_timeout_s = stop_timeout_s
        self.tag = site_id(site.root)
        self._client: Any = None
        self.gpu_mode: GpuMode | None = None  # asked of the engine when a GPU is placed
        # The engine's /version and /info, asked once per engine object: podman answers
        # each in about 0.4 s (it gathers its storage's state), and preflight needs both
        # three times over (reachability, GPU runtime, CDI).
        self._version: dict[str, Any] | None = None
        self._info: dict[str, Any] | None = None

    @property
    def client(self) -> Any:
        if self._client is None:
            import docker
            # The SDK would ask /version for the API version itself, then again for us:
            # ask once (unversioned, as its own "auto" does) and give it the answer.
            if self._version is None:
                probe = docker.APIClient(base_url=self.base_url, version=PROBE_API, timeout=300)
                try:
                    self._version = dict(probe.version(api_version=False))
                finally:
                    probe.close()
            self._client = docker.DockerClient(base_url=self.base_url, timeout=300,
                                               version=str(self._version["ApiVersion"]))
        return self._client

    def close(self) -> None:
        """Close the connection pool to the engine."""
        if self._client is not None:
            self._client.close()
            self._client = None
        self._version = self._info = None

    def engine_version(self) -> dict[str, Any]:
        """The engine's /version (asked once, with the connection)."""
        _ = self.client
        assert self._version is not None
        return self._version

    def engine_info(self) -> dict[str, Any]:
        """The engine's /info (asked once)."""
        if self._info is None:
            self._info = dict(self.client.info())
        return self._info

    # -- engine protocol ------------------------------------------------------
    def ping(self) -> str:
        import docker.errors
        import requests
        self._check_socket()
        try:
            v = self.engine_version()  # a refused or silent socket fails here as in /_ping
        except (docker.errors.DockerException, requests.RequestException, OSError) as e:
            raise EngineUnavailableError(
                f"the container engine at {self.base_url} does not answer ({short_error(e)}); "
                "start docker (systemctl start docker) or podman's socket, or pass --docker-host"
            ) from e
        comps = [c.get("Name", "") for c in v.get("Components") or []]
        kind = "Podman" if any("Podman" in c for c in comps) else "Docker"
        return f"{kind} {v.get('Version', '?')} (API {v.get('ApiVersion', '?')}) at {self.base_url}"

    def gpu_runtime(self) -> bool:
        try:
            return takes_gpus(self.engine_version(), self.engine_info())
        except Exception:  # reachability is preflight's question, not this one
            return False

    def gpu_by_cdi(self) -> bool:
        """Whether this engine takes GPUs as CDI devices (Podman; Docker with CDI)."""
        try:
            return gpu_mode(self.engine_version(), self.engine_info()) != "nvidia"
        except Exception:  # reachability is preflight's question, not this one
            return False

    def load(self, manifest: Manifest, release: Release, store: ContentStore,
             progress: ProgressFn = no_progress) -> None:
        """Load images missing from the engine from the store; check every id.

        Raises:
            ImageLoadError: the engine refused the archive or holds a different id.
        """
        wanted = [manifest.image(n) for n in dict.fromkeys(s.image for s in manifest.services)]
        if (door := manifest.frontdoor_image()) is not None:
            wanted.append(door)
        # Look images up by their signed config digest, never by name: a name can
        # point elsewhere (podman resolves a short name to localhost/... first, and
        # an archive may be tagged docker.io/... by its OCI index), a digest cannot.
        missing = [img for img in wanted if self.image_id(img.config_digest) is None]
        if missing:
            missing = self._load_local(missing, store, progress)
        if missing:
            self._load_stream(missing, store, progress)
        for img in wanted:
            if self.image_id(img.config_digest) is None:
                raise ImageLoadError(
                    f"the engine holds no image {img.config_digest[:19]} for {img.reference} "
                    "after loading it; the engine's store may be corrupted: "
                    f"remove the image (docker rmi {img.reference}) and install again")
            self._tag(img.config_digest, img.reference)
            # Two bundles of the same name and version (a rebuild, a vendor's fix) share
            # `reference`; the sequence tag keeps each release's image named.
            self._tag(img.config_digest, sequence_reference(img.reference, manifest.sequence))
            progress(Progress("load", message=f"{img.reference} is {img.config_digest[:19]}"))

    def _tag(self, image_id: str, reference: str) -> None:
        """Point `reference` at the verified image, so `docker images` names what runs."""
        import docker.errors
        repo, _, tag = reference.rpartition(":")
        if not repo or "/" in tag:
            repo, tag = reference, "latest"
        try:
            self.client.images.get(image_id).tag(repo, tag)
        except docker.errors.DockerException as e:
            raise ImageLoadError(
                f"cannot tag {image_id[:19]} as {reference}: {short_error(e)}") from e

    def start(self, manifest: Manifest, release: Release, placement: Placement, slot: int,
              progress: ProgressFn = no_progress) -> dict[str, str]:
        import docker.errors
        self.stop(release.sequence)
        urls = {}
        for launch in launches(manifest, placement, slot, door=behind_front_door(manifest)):
            try:
                if launch.gpu_index is not None and self.gpu_mode is None:
                    self.gpu_mode = gpu_mode(self.engine_version(), self.engine_info())
                cfg = self.client.images.get(launch.image_id).attrs.get("Config") or {}
                cfg = self._with_signed_healthcheck(cfg, launch.image_id)
                limits = service_limits(manifest, launch.service)
                tokens = own_runtime_tokens(self.site.root, *numeric_user(cfg)) \
                    if launch.loopback_only else None
                spec = self.container_spec(launch, cfg, limits, tokens)
                if CDI_DEVICES in spec:
                    libpod.run(self.client, spec)
                else:
                    self.client.containers.run(**spec, detach=True)
            except docker.errors.DockerException as e:
                raise EngineError(f"cannot start service {launch.service!r} from "
                                  f"{launch.image_ref}: {short_error(e)}") from e
            urls[launch.service] = f"http://127.0.0.1:{launch.port}"
            progress(Progress("start", message=f"{launch.service} started on port {launch.port}"))
        return urls

    def _with_signed_healthcheck(self, cfg: dict[str, Any], config_digest: str) -> dict[str, Any]:
        """The engine's image config, with the HEALTHCHECK of the signed config blob when the
        engine dropped it (podman keeps an image loaded from an OCI layout as an OCI config,
        which has no health check)."""
        if cfg.get("Healthcheck"):
            return cfg
        try:
            doc = json.loads(self.site.store.path(config_digest).read_bytes())
        except (OSError, ValueError):
            return cfg  # the release's config is verified at load; without it, our probe
        signed = (doc.get("config") or {}).get("Healthcheck") if isinstance(doc, dict) else None
        return {**cfg, "Healthcheck": signed} if signed else cfg

    def container_spec(self, launch: Launch, image_config: dict[str, Any],
                       limits: Limits | None = None,
                       token_dir: os.PathLike[str] | None = None) -> dict[str, Any]:
        """The keyword arguments of `containers.run` for one service (pure; tested alone).

        `token_dir` (behind the front door): the site's runtime token directory, mounted
        read-only; the runtime then requires the token on everything but health.
        """
        cmd = runtime_command(image_config.get("Cmd") or [], launch)
        own = (image_config.get("Healthcheck") or {}).get("Test")
        if self.health_test is None and own and own[0] in ("CMD", "CMD-SHELL"):
            test = list(own)  # the image knows how to probe itself (it reads its own --port)
        else:
            test = [a.format(port=launch.port, path=launch.health_path)
                    for a in (self.health_test or DEFAULT_HEALTH)]
        test = unsplittable(test)
        spec: dict[str, Any] = {
            "image": launch.image_id,
            "name": self.container_name(launch.release, launch.service),
            "command": cmd,
            "labels": {LABEL_SITE: self.tag, LABEL_RELEASE: str(launch.release),
                       LABEL_SERVICE: launch.service},
            "network_mode": "host",
            "restart_policy": {"Name": "unless-stopped"},
            "healthcheck": {"test": test, "interval": HEALTH_INTERVAL_S * NS,
                            "timeout": HEALTH_TIMEOUT_S * NS, "retries": HEALTH_RETRIES,
                            "start_period": HEALTH_START_PERIOD_S * NS},
            "environment": {"APPLIANCE_RELEASE": str(launch.release),
                            "APPLIANCE_SERVICE": launch.service,
                            "RUNTIME_GPU_POLICY": launch.gpu_policy,
                            "RUNTIME_PORT": str(launch.port)},
        }
        spec.update(hardened(limits or Limits(MIN_MEMORY, 1_000_000_000, nofile=nofile_limit()),
                             data_volume(self.tag, launch.service), data_dir(image_config)))
        if token_dir is not None:
            spec["volumes"][os.fspath(token_dir)] = {"bind": TOKEN_DIR_IN_RUNTIME, "mode": "ro"}
            spec["environment"]["RUNTIME_TOKEN_FILE"] = f"{TOKEN_DIR_IN_RUNTIME}/{RUNTIME_TOKENS}"
        add_gpus(spec, launch, self.gpu_mode or "nvidia")
        return spec

    def container_name(self, sequence: int, service: str) -> str:
        return f"appliance-{self.tag}-{sequence}-{service}"

    def alive(self, sequence: int, service: str) -> bool:
        c = self._container(sequence, service)
        return c is not None and c.status == "running"

    def logs_tail(self, sequence: int, service: str, lines: int = 20) -> str:
        c = self._container(sequence, service)
        if c is None:
            return ""
        try:
            return bytes(c.logs(tail=lines)).decode(errors="replace")
        except Exception:  # best effort, for an error message only
            return ""

    def stop(self, sequence: int) -> None:
        import docker.errors
        for c in self._containers({LABEL_RELEASE: str(sequence)}):
            try:
                c.stop(timeout=self.stop_timeout_s)
                self._remove(c)
            except docker.errors.NotFound:
                pass
            except docker.errors.DockerException as e:
                raise EngineError(f"cannot stop container {c.name}: {short_error(e)}") from e

    def _remove(self, container: Any) -> None:
        """Remove a stopped container, trying again while the engine says it is busy.

        podman 4.3 can fail a removal with a server error ("removing container ... root
        filesystem") while its own clean-up of the just-stopped container still holds the
        mount; a moment later the same removal succeeds.
        """
        import docker.errors
        for delay in REMOVE_RETRY_S:
            try:
                container.remove(force=True)
                return
            except docker.errors.APIError as e:
                if e.is_client_error():  # NotFound and other 4xx: not a busy engine
                    raise
                log.info("removing container %s failed (%s); trying again", container.name,
                         short_error(e))
                time.sleep(delay)
        container.remove(force=True)

    def restart(self, sequence: int, service: str) -> None:
        """Restart the service's container (a stopped or hung process is killed after
        `stop_timeout_s`); Docker restarts no unhealthy container by itself.

        Raises:
            EngineError: there is no such container, or the engine refused.
        """
        import docker.errors
        c = self._container(sequence, service)
        if c is None:
            raise EngineError(f"no container for service {service!r} of release {sequence}")
        try:
            c.restart(timeout=self.stop_timeout_s)
        except docker.errors.DockerException as e:
            raise EngineError(f"cannot restart container {c.name}: {short_error(e)}") from e

    def running(self) -> set[int]:
        """Releases with a container in any state (a crash-looping one still needs stopping)."""
        return {int(c.labels[LABEL_RELEASE]) for c in self._containers({})}

    def enable(self, sequence: int) -> None:
        """Containers carry `unless-stopped`; stopped releases are removed, so nothing to do."""

    def forget_site(self) -> list[str]:
        """Remove the site's data volumes and image names (`appliance.engines.forget`)."""
        return forget_docker(self, sequence_reference)

    def image_id(self, reference: str) -> str | None:
        """The id the engine holds for `reference`, or None."""
        import docker.errors
        try:
            return str(self.client.images.get(reference).id)
        except docker.errors.ImageNotFound:
            return None
        except docker.errors.DockerException as e:
            raise EngineUnavailableError(
                f"cannot inspect image {reference}: {short_error(e)}") from e

    # -- helpers ----------------------------------------------------------------
    def _check_socket(self) -> None:
        """Refuse a unix socket that does not accept, before the SDK tries (and leaks)."""
        if not self.base_url.startswith("unix://"):
            return
        path = self.base_url.removeprefix("unix://")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(5)
                s.connect(path)
        except OSError as e:
            raise EngineUnavailableError(
                f"the container engine at {self.base_url} does not answer ({e.strerror or e}); "
                "start docker (systemctl start docker) or podman's socket "
                "(systemctl start podman.socket), or pass --docker-host") from e

    def _containers(self, labels: dict[str, str]) -> list[Any]:
        want = [f"{LABEL_SITE}={self.tag}", *(f"{k}={v}" for k, v in labels.items())]
        return list(self.client.containers.list(all=True, filters={"label": want}))

    def _container(self, sequence: int, service: str) -> Any:
        found = self._containers({LABEL_RELEASE: str(sequence), LABEL_SERVICE: service})
        if not found:
            return None
        found[0].reload()
        return found[0]

    def podman_cli(self) -> list[str] | None:
        """`podman` with the flags that reach this socket's own image storage, when the
        socket is a podman on this host whose storage this user owns; else None."""
        if not self.base_url.startswith("unix://"):  # before the client asks for a version
            return None
        return podman_cli(self.base_url, self.client.api)

    def _load_local(self, images: list[Image], store: ContentStore,
                    progress: ProgressFn) -> list[Image]:
        """`podman load` each image in place from the store; return those left to stream."""
        cli = self.podman_cli() if self.local_load else None
        if cli is None:
            return images
        return load_in_place(cli, images, store, progress, self._loaded)

    def _loaded(self, img: Image, names: list[str]) -> None:
        """Name a freshly loaded image; drop the names podman made up from the layout path."""
        self._tag(img.config_digest, img.reference)
        for name in names:
            if name != img.reference:
                self._untag(name)

    def _untag(self, name: str) -> None:
        import docker.errors
        with contextlib.suppress(docker.errors.DockerException):
            # only a stray name; the image itself is checked by digest
            self.client.api.remove_image(name, noprune=True)

    def _load_stream(self, images: list[Image], store: ContentStore,
                     progress: ProgressFn) -> None:
        """Stream one archive of `images` from the store into the engine's image load."""
        import docker.errors
        import requests

        try:
            total = sum(store.size(d) for d in image_blobs(images))
            archive = image_archive_chunks(store, images)
        except StoreError as e:
            raise ImageLoadError(f"cannot read the images from the store: {e}") from e
        failure: list[BaseException] = []

        def chunks() -> Iterator[bytes]:
            # Straight from the store files into the request body, 1 MiB at a time
            # (no pipe: one of 64 KiB reads cost more CPU than the engine's own load).
            done = 0
            try:
                for data in archive:
                    done += len(data)
                    progress(Progress("load", min(done, total), total, "streaming images"))
                    yield data
            except Exception as e:  # whatever the HTTP client makes of it, say this
                failure.append(e)
                raise

        refused: Exception | None = None
        messages: list[str] = []
        try:
            out = self.client.api.load_image(chunks(), quiet=True)
            messages = [json.dumps(m) if not isinstance(m, str) else m for m in out]
        except (docker.errors.DockerException, requests.RequestException) as e:
            refused = e
        except Exception:
            if not failure:
                raise
        if failure:  # the engine saw a cut-short archive: the store is the cause
            raise ImageLoadError(f"cannot read the images from the store: {failure[0]}") \
                from failure[0]
        if refused is not None:
            raise ImageLoadError(f"the engine refused the images: {short_error(refused)}") \
                from refused
        errors = [m for m in messages if '"error' in m]
        if errors:
            raise ImageLoadError(f"the engine refused the images: {errors[0][:300]}")


def sequence_reference(reference: str, sequence: int) -> str:
    """`reference` tagged with the release's sequence: repo:1.1.0 -> repo:1.1.0-r7."""
    repo, _, tag = reference.rpartition(":")
    if not repo or "/" in tag:
        repo, tag = reference, "latest"
    return f"{repo}:{tag}-r{sequence}"


def unsplittable(test: list[str]) -> list[str]:
    """A health check podman stores as given: a CMD whose words hold whitespace becomes one
    CMD-SHELL line (podman 4.3 splits CMD words on spaces; Docker keeps either form)."""
    if test and test[0] == "CMD" and any(any(c.isspace() for c in a) for a in test[1:]):
        return ["CMD-SHELL", shlex.join(test[1:])]
    return test


def numeric_user(image_config: dict[str, Any]) -> tuple[int, int]:
    """The image's `USER` as uid and gid when it is numeric ("10001:10001", "10001"),
    else root's. A named user cannot be resolved outside the image, so such an image's
    runtime could not read the token file; our images name numeric ids."""
    user, _, group = str(image_config.get("User") or "").partition(":")
    if not user.isdigit():
        return 0, 0
    return int(user), int(group) if group.isdigit() else int(user)
