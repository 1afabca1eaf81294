"""Real HAProxy (the host's Debian package) in front of real runtimes on 127.0.0.1: helpers."""

from __future__ import annotations

import datetime as dt
import ssl
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from appliance.frontdoor import config, tls, token
from appliance.frontdoor.runtime_api import ProxyApi
from tests.enginekit import need, stop_process, wait_for
from tests.runtime.conftest import Server, free_port

SERVICE = "mlp"
INFER = "/v2/models/mlp/infer"


@dataclass
class Site:
    """A site root with its certificate and token, and the proxy's settings."""

    root: Path
    cert: tls.SiteCertificate
    token: str
    token_map: Path
    settings: config.ProxySettings
    port: int

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cert.ca_file))


@dataclass
class Proxy:
    """A running `haproxy -W` (master-worker) and its runtime API."""

    proc: subprocess.Popen[bytes]
    cfg: Path
    api: ProxyApi
    log: Path

    def stop(self) -> None:
        stop_process(self.proc)


def make_site(tmp_path: Path) -> Site:
    """A site root with a fresh certificate and token, proxy on free loopback ports."""
    # A short directory: the stats socket's path must fit a sockaddr_un (108 bytes).
    sock_dir = Path(tempfile.mkdtemp(prefix="fd", dir="/tmp"))
    cert = tls.make_site_certificate(tmp_path / "tls", ["localhost", "127.0.0.1"],
                                     dt.datetime.now(dt.UTC))
    tok, made = token.ensure_token(tmp_path)
    assert made
    token_map = tmp_path / "tokens.map"
    token_map.write_text(token.render_token_map([tok]))
    settings = config.ProxySettings(socket=sock_dir / "admin.sock", stats_port=free_port(),
                                    tls_pem=cert.pem_file, token_map=token_map,
                                    bind="127.0.0.1", maxconn=4000)
    return Site(tmp_path, cert, tok, token_map, settings, free_port())


def start_proxy(site: Site, services: list[config.ServiceDoor]) -> Proxy:
    """Render the config for `services`, start HAProxy, wait until its runtime API answers."""
    haproxy = need("haproxy")
    cfg = site.root / "haproxy.cfg"
    cfg.write_text(config.render(services, site.settings))
    log = site.root / "haproxy.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([haproxy, "-W", "-db", "-f", str(cfg)], stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    proxy = Proxy(proc, cfg, ProxyApi(site.settings.socket), log)

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"haproxy exited {proc.returncode}: {log.read_text()[-1500:]}")
        return "pxname" in proxy.api.command("show stat")

    try:
        wait_for(up, 20, "haproxy's runtime API")
    except BaseException:
        proxy.stop()
        raise
    return proxy


def door(site: Site, main: Server | None, fallback: Server | None = None,
         **kw: object) -> config.ServiceDoor:
    """The mlp service's door with slot a on `main`."""
    return config.ServiceDoor(SERVICE, site.port,
                              servers={"a": main.hostport if main else None},
                              fallback=fallback.hostport if fallback else None,
                              **kw)  # type: ignore[arg-type]


def front_url(site: Site, path: str) -> str:
    return f"https://127.0.0.1:{site.port}{path}"


def https(site: Site, method: str, path: str, body: bytes | None = None,
          headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """One request to the front door, trusting the site CA; header names in lower case."""
    import urllib.error
    import urllib.request

    req = urllib.request.Request(front_url(site, path), data=body, method=method,
                                 headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30, context=site.ssl_context()) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()
