"""The front door as the install plan and rollback drive it: one stable HTTPS address per
service, in front of whichever release serves (docs/frontdoor.md).

At a release's switch the door either starts the proxy (first install, or the set of
services changed) with its configuration pointing at the new release's runtimes, or
moves each service's traffic to them through HAProxy's runtime API: the new runtime
must pass the proxy's own health check, the old one drains its in-flight requests,
and no client connection is closed. The configuration file is rewritten after every
move, so a proxy that restarts serves the release that serves now.
"""

from __future__ import annotations

import json
import resource
import socket
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable
from urllib.parse import urlsplit

from appliance.bundle.manifest import Manifest
from appliance.errors import FrontDoorError, ProxyApiError
from appliance.frontdoor import config, switch, tls, token
from appliance.frontdoor import site as files_of
from appliance.frontdoor.canary import (
    CanaryBounds,
    CanaryEvent,
    CanaryPlan,
    CanaryVerdict,
    WindowFigures,
    decide,
)
from appliance.frontdoor.container import (
    CONF_IN_CONTAINER,
    NOFILE,
    ProxyContainer,
    own_for_proxy,
)
from appliance.frontdoor.runtime_api import ProxyApi
from appliance.fsutil import atomic_write
from appliance.progress import Progress, ProgressFn, no_progress
from appliance.site.canarywatch import (
    CANARY_FILE,
    TICK_S,
    end_left_canary,
    latency_buckets,
    start_guard,
    window_figures,
)
from appliance.site.engine import behind_front_door, port_in_use
from appliance.site.layout import Site

DOOR_FILE = "door.json"  # in the front door's directory: what serves where, for status
START_TIMEOUT_S = 60.0


@runtime_checkable
class ProxyHost(Protocol):
    """An engine that can run the front door's proxy: the container engines (a hardened
    container) and the process engine (a supervised HAProxy, appliance.engines.procproxy).
    """

    # Whether HAProxy sees the front door's files at their container paths
    # (`container.CONF_IN_CONTAINER`) or at their host paths.
    proxy_in_container: bool

    @property
    def proxy_uid(self) -> int | None:
        """The uid HAProxy drops to after reading its files and binding its ports, where
        it starts as root; None where it starts unprivileged."""

    def ensure_proxy(self, spec: ProxyContainer, restart: bool = False) -> bool:
        """Run the proxy (replaced when `restart`); True when it was (re)started."""

    def proxy_name(self) -> str:
        """The proxy's name on this site (container or unit)."""

    def proxy_logs(self) -> str:
        """Where a person reads the proxy's log (a command or a file)."""

    def stop_proxy(self) -> None:
        """Stop the proxy and remove its container or unit (the site is being removed)."""


@dataclass(frozen=True)
class DoorRecord:
    """What the front door serves: what `appliance status` and the screens show."""

    address: str  # the LAN address clients use
    ports: dict[str, int]  # service -> its stable port
    sequence: int  # the release behind it
    fingerprint: str  # SHA-256 of the served certificate
    ca_file: str
    token_file: str
    not_after: str
    fallbacks: dict[str, str] = field(default_factory=dict)  # service -> its fallback
    # the front door's directory as HAProxy names it (its map and certificate paths)
    proxy_conf: str = str(CONF_IN_CONTAINER)
    # HAProxy's statistics and /metrics on 127.0.0.1: chosen at the first install (8404
    # unless something holds it, such as a second site's front door), then kept
    stats_port: int = files_of.STATS_PORT

    def url(self, service: str) -> str:
        """The stable base URL of `service`."""
        return f"https://{self.address}:{self.ports[service]}"

    def lines(self, manifest: Manifest) -> list[str]:
        """What a person needs to reach each model: its URL, infer path and a curl line."""
        out = [f"front door: certificate SHA-256 {self.fingerprint}",
               f"    CA file for clients: {self.ca_file}; token: {self.token_file} (0600)"]
        for s in manifest.services:
            fb = f" (falls back to {s.fallback})" if s.fallback else ""
            out.append(f"    {s.name}: {self.url(s.name)}{fb}")
            for m in s.models:
                out.append(f"        {m}: POST {self.url(s.name)}/v2/models/{m}/infer")
        first = manifest.services[0] if manifest.services else None
        if first is not None and first.models:
            out.append(f"    try: curl --cacert {self.ca_file} -H \"Authorization: Bearer "
                       f"$(cat {self.token_file})\" {self.url(first.name)}/v2/models/"
                       f"{first.models[0]}")
        return out

    @classmethod
    def read(cls, site: Site) -> DoorRecord | None:
        """The site's record, or None before the first install behind a front door."""
        path = site.root / files_of.CONF_DIR / DOOR_FILE
        try:
            doc = json.loads(path.read_bytes())
            return cls(**doc)
        except (OSError, ValueError, TypeError):
            return None


def certificate_warning(site: Site, now: datetime) -> str | None:
    """A one-line warning when the served certificate expires within 30 days, else None."""
    pem = site.root / files_of.CONF_DIR / tls.SITE_PEM
    if not pem.is_file():
        return None
    try:
        return tls.expiry_warning(tls.read_leaf(pem), now)
    except FrontDoorError as e:
        return str(e)


def lan_address() -> str:
    """The first IPv4 address of this server that is not loopback (else its host name)."""
    try:
        import psutil
        for addrs in psutil.net_if_addrs().values():
            for a in addrs:
                if a.family == socket.AF_INET and not a.address.startswith("127."):
                    return str(a.address)
    except ImportError:  # pragma: no cover - psutil comes with the installer extra
        pass
    return socket.gethostname()


def host_names() -> list[str]:
    """Names and addresses the site certificate must cover."""
    names = {socket.gethostname(), socket.getfqdn(), "localhost", "127.0.0.1", "::1"}
    try:
        import psutil
        for addrs in psutil.net_if_addrs().values():
            names.update(a.address.split("%")[0] for a in addrs
                         if a.family in (socket.AF_INET, socket.AF_INET6))
    except ImportError:  # pragma: no cover
        pass
    return sorted(n for n in names if n)


class FrontDoor:
    """The site's front door: starts the proxy, moves traffic between releases."""

    def __init__(self, site: Site, engine: object, now: datetime, *,
                 tls_cert: Path | None = None, tls_key: Path | None = None,
                 progress: ProgressFn = no_progress) -> None:
        self.site = site
        self.engine = engine
        self.now = now
        self.tls_cert, self.tls_key = tls_cert, tls_key
        self.progress = progress
        self.token_made = ""  # the token, when this run made it (shown once)
        self._picked_stats_port: int | None = None  # first install: chosen once per run

    def applies(self, manifest: Manifest) -> bool:
        """Whether `manifest`'s services are served through the front door here."""
        return behind_front_door(manifest) and isinstance(self.engine, ProxyHost)

    def runtime_tokens(self) -> None:
        """Make the site token (first install: shown once at the end) and give the
        runtimes their copy of every valid token, before a release's runtimes start.

        Raises:
            TokenError: the site's token file is unreadable, empty or loose.
        """
        tok, made = token.ensure_token(self.site.root)
        if made:
            self.token_made = tok
        token.write_runtime_tokens(self.site.root, token.valid_tokens(self.site.root))

    def serve(self, manifest: Manifest, sequence: int, endpoints: dict[str, str]) -> DoorRecord:
        """Send every service's new requests to `endpoints` (the release's runtimes).

        Raises:
            FrontDoorError: the proxy cannot start, or a runtime did not pass its health
                check (the release serving before keeps all traffic).
        """
        image = manifest.frontdoor_image()
        if image is None or not isinstance(self.engine, ProxyHost):
            raise FrontDoorError("this release has no front door; serve it directly")
        files = files_of.prepare(self.site.root, host_names(), self.now,
                                 self.tls_cert, self.tls_key)
        if files.token_made:
            self.token_made = files.token
        api = ProxyApi(files.socket)
        ports = {s.name: s.port for s in manifest.services}
        fallbacks = {s.name: s.fallback for s in manifest.services if s.fallback}
        before = DoorRecord.read(self.site)
        # A proxy that reads its files elsewhere (the process engine's HAProxy moved from
        # the host's package to the proxy image) is restarted on the new configuration.
        same_doors = (before is not None and before.ports == ports
                      and before.fallbacks == fallbacks
                      and before.proxy_conf == self._proxy_conf(files) and _answers(api))
        addrs = {s: _host_port(u) for s, u in endpoints.items()}
        if same_doors:
            slots = {}
            for svc, (host, port) in addrs.items():
                self._say(f"{svc}: moving new requests to {host}:{port}, draining the old")
                try:
                    if svc in fallbacks:  # the new release's fallback answers from now on
                        fb_host, fb_port = addrs[fallbacks[svc]]
                        for be in (config.backend_name(svc), f"fb_{svc}"):
                            api.point(be, config.FALLBACK, fb_host, fb_port)
                    slots[svc] = switch.switch(api, svc, host, port)
                except ProxyApiError as e:
                    raise FrontDoorError(f"the front door could not switch {svc}: {e}") from e
            self._write_config(files, manifest, addrs, slots)
        else:
            slots = {svc: config.SLOTS[0] for svc in addrs}
            self._write_config(files, manifest, addrs, slots)
            own_for_proxy([files.conf_dir / "site.pem", files.run_dir])
            spec = ProxyContainer(image.config_digest, self.engine.proxy_name(),
                                  files.conf_dir, files.run_dir, tuple(sorted(ports.values())),
                                  nofile=_nofile())
            self._say("starting the front door on port(s) "
                      + ", ".join(str(p) for p in sorted(ports.values())))
            self.engine.ensure_proxy(spec, restart=before is not None)
            self._wait_up(api, list(addrs), self.engine.proxy_logs())
        return self._record(files, manifest, sequence)

    def _record(self, files: files_of.FrontDoorFiles, manifest: Manifest,
                sequence: int) -> DoorRecord:
        record = DoorRecord(lan_address(), {s.name: s.port for s in manifest.services},
                            sequence, files.fingerprint, str(files.ca_file),
                            str(self.site.root / "token"), files.not_after.isoformat(),
                            {s.name: s.fallback for s in manifest.services if s.fallback},
                            self._proxy_conf(files), self._stats_port(manifest))
        atomic_write(files.conf_dir / DOOR_FILE,
                     json.dumps(asdict(record), indent=2, sort_keys=True).encode() + b"\n")
        return record

    def _proxy_conf(self, files: files_of.FrontDoorFiles) -> str:
        """The front door's directory as this engine's HAProxy names it."""
        token_map = self._settings(files).token_map
        return str(token_map.parent if token_map is not None else files.conf_dir)

    def can_canary(self) -> bool:
        """Whether a release serves behind a running front door (a canary needs one)."""
        before = DoorRecord.read(self.site)
        return before is not None and _answers(ProxyApi(self.site.root / files_of.RUN_DIR
                                                        / files_of.SOCKET))

    def canary(self, manifest: Manifest, sequence: int, endpoints: dict[str, str],
               plan: CanaryPlan, bounds: CanaryBounds) -> CanaryVerdict:
        """Send `plan.share` of live requests to the new release's runtimes for
        `plan.window_s`, compare its errors and p99 with the serving release's over the
        same window, and end the canary: promoted (the old release drains) or rolled back
        (the canary drains). A canary left by a killed installer is ended (rolled back)
        by the next install or rollback (`recover`).

        Raises:
            FrontDoorError: the proxy refused a move (the old release keeps all traffic).
        """
        files = files_of.prepare(self.site.root, host_names(), self.now, self.tls_cert,
                                 self.tls_key)
        api = ProxyApi(files.socket)
        addrs = {s: _host_port(u) for s, u in endpoints.items()}
        old_slots: dict[str, str] = {}
        guard = start_guard(self.site.root)
        try:
            for svc, (host, port) in addrs.items():
                old = switch.serving_slot(api, svc) or config.SLOTS[0]
                old_slots[svc] = old
                atomic_write(files.conf_dir / CANARY_FILE, json.dumps(old_slots).encode())
                switch.bring_up(api, svc, switch.other_slot(old), host, port, weight=0)
                switch.set_share(api, svc, old, plan.weights())
            self._say(f"canary: {plan.share:.0%} of requests to the new release for "
                      f"{plan.window_s} s")
            start = {svc: api.servers(config.backend_name(svc)) for svc in addrs}
            old_urls = {s: self._slot_url(api, s, o) for s, o in old_slots.items()}
            tok = files.token
            hist = {s: (latency_buckets(old_urls[s], tok), latency_buckets(endpoints[s], tok))
                    for s in addrs}
            began = time.monotonic()
            while (left := began + plan.window_s - time.monotonic()) > 0:
                time.sleep(min(TICK_S, left))
                for s, o in old_slots.items():
                    self._canary_event(s, plan, began, *window_figures(
                        api, s, o, start[s], hist[s], (old_urls[s], endpoints[s]), tok))
            ends = {s: window_figures(api, s, o, start[s], hist[s], (old_urls[s], endpoints[s]),
                                      tok)
                    for s, o in old_slots.items()}
            verdicts = {s: decide(*ends[s], bounds) for s in ends}
            worst = next((v for v in verdicts.values() if v.action == "rollback"),
                         next(iter(verdicts.values())))
            for s, v in verdicts.items():  # every service ends the way the worst one does
                reason = v.reason if v.action == worst.action else \
                    f"rolled back with the other services ({v.reason})"
                self._canary_event(s, plan, began, *ends[s], worst.action, reason)
            promote = worst.action == "promote"
            for svc, old in old_slots.items():
                switch.end_canary(api, svc, old, promote=promote)
        except ProxyApiError as e:
            self.recover()
            raise FrontDoorError(f"the canary could not run: {e}") from e
        finally:
            if guard is not None and guard.poll() is None:
                guard.terminate()
                guard.wait(10)
        (files.conf_dir / CANARY_FILE).unlink(missing_ok=True)
        if promote:
            for svc, fb in ((s.name, s.fallback) for s in manifest.services if s.fallback):
                for be in (config.backend_name(svc), f"fb_{svc}"):  # the new release's
                    api.point(be, config.FALLBACK, *addrs[fb])
            slots = {s: switch.other_slot(o) for s, o in old_slots.items()}
            self._write_config(files, manifest, addrs, slots)
            self._record(files, manifest, sequence)
        return worst

    @staticmethod
    def _slot_url(api: ProxyApi, service: str, slot: str) -> str:
        return f"http://{api.servers(config.backend_name(service))[slot].address}"

    def recover(self) -> None:
        """End a canary a killed installer left: all new requests to the old release."""
        end_left_canary(self.site)

    def _write_config(self, files: files_of.FrontDoorFiles, manifest: Manifest,
                      addrs: dict[str, tuple[str, int]], slots: dict[str, str]) -> None:
        def at(service: str) -> str:
            return f"{addrs[service][0]}:{addrs[service][1]}"

        doors = [config.ServiceDoor(s.name, s.port, servers={
            slot: (at(s.name) if slot == slots[s.name] else None) for slot in config.SLOTS},
            fallback=at(s.fallback) if s.fallback else None) for s in manifest.services]
        settings = self._settings(files, manifest)
        # HAProxy holds about two descriptors a connection: stay under half the limit
        settings = replace(settings, maxconn=min(settings.maxconn, _nofile() // 2 - 64))
        files_of.write_config(files, doors, settings)

    def _settings(self, files: files_of.FrontDoorFiles,
                  manifest: Manifest | None = None) -> config.ProxySettings:
        """The proxy settings with paths, user and stats port as this engine's HAProxy
        sees them."""
        if not isinstance(self.engine, ProxyHost):
            raise FrontDoorError(f"the {getattr(self.engine, 'name', '?')} engine cannot run "
                                 "the front door")
        return replace(files_of.settings(files, in_container=self.engine.proxy_in_container,
                                         stats_port=self._stats_port(manifest)),
                       uid=self.engine.proxy_uid)

    def _stats_port(self, manifest: Manifest | None) -> int:
        """This site's stats port: the recorded one, else 8404 when free (and no service's),
        else one the kernel hands out; kept from then on in door.json."""
        before = DoorRecord.read(self.site)
        if before is not None:
            return before.stats_port
        if self._picked_stats_port is None:
            taken = {s.port for s in manifest.services} if manifest is not None else set()
            port = files_of.STATS_PORT
            if port in taken or port_in_use(port):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", 0))
                    port = s.getsockname()[1]
            self._picked_stats_port = port
        return self._picked_stats_port

    def _wait_up(self, api: ProxyApi, services: list[str], name: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                if all(any(st.up for st in api.servers(config.backend_name(s)).values())
                       for s in services):
                    return
            except ProxyApiError as e:  # not listening yet
                last = e
            time.sleep(0.1)
        raise FrontDoorError(f"the front door did not come up within {START_TIMEOUT_S:g} s "
                             f"({last or 'a runtime failed its health check'}); see the "
                             f"proxy's log: {name}")

    def _canary_event(self, service: str, plan: CanaryPlan, began: float, old: WindowFigures,
                      new: WindowFigures, verdict: Literal["", "promote", "rollback"] = "",
                      reason: str = "") -> None:
        self.progress(CanaryEvent("switch", service=service, share=plan.share,
                                  elapsed_s=time.monotonic() - began, window_s=plan.window_s,
                                  new=new, old=old, verdict=verdict, reason=reason))

    def _say(self, message: str) -> None:
        self.progress(Progress("switch", message=message))


def _nofile() -> int:
    """The proxy's open-files limit: its design value, or this host's hard limit when lower
    (an engine cannot give a container more than the host allows)."""
    return min(NOFILE, resource.getrlimit(resource.RLIMIT_NOFILE)[1])


def _answers(api: ProxyApi) -> bool:
    try:
        api.command("show info")
        return True
    except ProxyApiError:
        return False


def _host_port(url: str) -> tuple[str, int]:
    u = urlsplit(url)
    if u.hostname is None or u.port is None:
        raise FrontDoorError(f"a runtime endpoint {url!r} has no host and port")
    return u.hostname, u.port
