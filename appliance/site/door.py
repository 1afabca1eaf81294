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
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Protocol, runtime_checkable
from urllib.parse import urlsplit

from appliance.bundle.manifest import Manifest
from appliance.errors import FrontDoorError, ProxyApiError
from appliance.frontdoor import config, switch, tls, token
from appliance.frontdoor import site as files_of
from appliance.frontdoor.container import (
    CONF_IN_CONTAINER,
    NOFILE,
    ProxyContainer,
    own_for_proxy,
)
from appliance.frontdoor.runtime_api import ProxyApi
from appliance.fsutil import atomic_write
from appliance.progress import Progress, ProgressFn, no_progress
from appliance.site.engine import behind_front_door
from appliance.site.layout import Site

DOOR_FILE = "door.json"  # in the front door's directory: what serves where, for status
START_TIMEOUT_S = 60.0


@runtime_checkable
class ProxyHost(Protocol):
    """An engine that can run the front door's proxy (the container engines)."""

    def ensure_proxy(self, spec: ProxyContainer, restart: bool = False) -> bool:
        """Run the proxy container (replaced when `restart`); True when it was (re)started."""

    def proxy_name(self) -> str:
        """The proxy container's name on this site."""


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

    def url(self, service: str) -> str:
        """The stable base URL of `service`."""
        return f"https://{self.address}:{self.ports[service]}"

    def lines(self, manifest: Manifest) -> list[str]:
        """What a person needs to reach each model: its URL, infer path and a curl line."""
        out = [f"front door: certificate SHA-256 {self.fingerprint}",
               f"    CA file for clients: {self.ca_file}; token: {self.token_file} (0600)"]
        for s in manifest.services:
            out.append(f"    {s.name}: {self.url(s.name)}")
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

    def applies(self, manifest: Manifest) -> bool:
        """Whether `manifest`'s services are served through the front door here."""
        return behind_front_door(manifest) and isinstance(self.engine, ProxyHost)

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
        before = DoorRecord.read(self.site)
        same_doors = before is not None and before.ports == ports and _answers(api)
        addrs = {s: _host_port(u) for s, u in endpoints.items()}
        if same_doors:
            slots = {}
            for svc, (host, port) in addrs.items():
                self._say(f"{svc}: moving new requests to {host}:{port}, draining the old")
                try:
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
            self._wait_up(api, list(addrs), self.engine.proxy_name())
        record = DoorRecord(lan_address(), ports, sequence, files.fingerprint,
                            str(files.ca_file), str(self.site.root / "token"),
                            files.not_after.isoformat())
        atomic_write(files.conf_dir / DOOR_FILE,
                     json.dumps(asdict(record), indent=2, sort_keys=True).encode() + b"\n")
        return record

    def _write_config(self, files: files_of.FrontDoorFiles, manifest: Manifest,
                      addrs: dict[str, tuple[str, int]], slots: dict[str, str]) -> None:
        doors = [config.ServiceDoor(s.name, s.port, servers={
            slot: (f"{addrs[s.name][0]}:{addrs[s.name][1]}" if slot == slots[s.name] else None)
            for slot in config.SLOTS}) for s in manifest.services]
        settings = files_of.settings(files, in_container=True)
        # HAProxy holds about two descriptors a connection: stay under half the limit
        settings = replace(settings, maxconn=min(settings.maxconn, _nofile() // 2 - 64))
        files_of.write_config(files, doors, settings)

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
                             f"proxy's log: docker logs {name} (or podman logs {name})")

    def _say(self, message: str) -> None:
        self.progress(Progress("switch", message=message))


def _files_and_api(site: Site) -> tuple[Path, ProxyApi]:
    """The front door's directory and its runtime API.

    Raises:
        FrontDoorError: this site has no front door yet.
    """
    conf = site.root / files_of.CONF_DIR
    if DoorRecord.read(site) is None:
        raise FrontDoorError(f"{site.root} has no front door yet: install a bundle that "
                             "carries one with a container engine first")
    return conf, ProxyApi(site.root / files_of.RUN_DIR / files_of.SOCKET)


def rotate_token(site: Site, finish: bool) -> str:
    """Begin a token rotation (the proxy accepts a new token beside the old one; the new
    one is returned and kept in the token file) or `finish` it (only the kept one is
    accepted). No request fails and no connection closes.

    Raises:
        FrontDoorError: no front door, the proxy refused, or no rotation to finish.
    """
    conf, api = _files_and_api(site)
    token_file = site.root / token.TOKEN_FILE
    pending = site.root / (token.TOKEN_FILE + ".old")
    in_proxy = CONF_IN_CONTAINER / files_of.TOKEN_MAP
    current = token.read_token(token_file)
    if finish:
        if not pending.exists():
            raise FrontDoorError("no token rotation is under way: run `appliance token rotate` "
                                 "first")
        old = token.read_token(pending)
        atomic_write(conf / files_of.TOKEN_MAP, token.render_token_map([current]).encode(),
                     token.MAP_MODE)
        api.del_token(in_proxy, token.token_digest(old))
        pending.unlink()
        return current
    if pending.exists():
        raise FrontDoorError("a token rotation is already under way: move the clients to the "
                             "new token, then run `appliance token rotate --finish`")
    new = token.new_token()
    api.add_token(in_proxy, token.token_digest(new))
    atomic_write(conf / files_of.TOKEN_MAP, token.render_token_map([current, new]).encode(),
                 token.MAP_MODE)
    atomic_write(pending, (current + "\n").encode(), token.SECRET_MODE)
    atomic_write(token_file, (new + "\n").encode(), token.SECRET_MODE)
    return new


def replace_certificate(site: Site, cert: Path, key: Path, now: datetime) -> str:
    """Serve the hospital's certificate from now on (new connections; none is closed);
    return its fingerprint.

    Raises:
        TlsError: the pair is bad (key does not match, expired, unreadable).
        FrontDoorError: no front door, or the proxy refused it.
    """
    conf, api = _files_and_api(site)
    pem_text, leaf = tls.load_pair(cert, key, now)
    api.replace_certificate(CONF_IN_CONTAINER / tls.SITE_PEM, pem_text)
    made = tls.install_pair(conf, cert, key, now)
    own_for_proxy([conf / tls.SITE_PEM])
    ca = conf / "ca" / tls.CA_CERT
    ca.parent.mkdir(exist_ok=True)
    atomic_write(ca, cert.read_bytes(), 0o644)  # the hospital's chain is what clients trust
    record = DoorRecord.read(site)
    if record is not None:
        record = replace(record, fingerprint=made.fingerprint,
                         not_after=made.not_after.isoformat())
        atomic_write(conf / DOOR_FILE,
                     json.dumps(asdict(record), indent=2, sort_keys=True).encode() + b"\n")
    return tls.fingerprint(leaf)


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
