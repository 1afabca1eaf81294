"""The front door's files in the site root, made once at first install and kept after.

    <site>/frontdoor/          mounted read-only into the proxy as /etc/appliance-proxy
        haproxy.cfg            rewritten (atomically) after every switch
        site.pem               leaf + chain + key, 0600, owned by the proxy's user
        tokens.map             SHA-256s of the valid tokens
    <site>/frontdoor/ca/       ca.pem (give to clients), ca.key (0600)
    <site>/frontdoor-run/      HAProxy's runtime API socket (writable by the proxy)
    <site>/token               the token itself, 0600 (shown once at first install)
"""

from __future__ import annotations

import datetime as dt
import shutil
from dataclasses import dataclass
from pathlib import Path

from appliance.frontdoor import config, tls, token
from appliance.frontdoor.container import CONF_IN_CONTAINER, RUN_IN_CONTAINER
from appliance.fsutil import atomic_write

CONF_DIR = "frontdoor"
RUN_DIR = "frontdoor-run"
PROC_DIR = "frontdoor-proc"  # the process engine's HAProxy: pidfiles and its log
PROC_LOG = "haproxy.log"  # HAProxy's output there (capped; the older part in .1)
CONFIG = "haproxy.cfg"
TOKEN_MAP = "tokens.map"  # noqa: S105 - a file name
SOCKET = "admin.sock"
STATS_PORT = 8404


@dataclass(frozen=True)
class FrontDoorFiles:
    """Where the front door's files are, and what the end screen shows once."""

    conf_dir: Path
    run_dir: Path
    ca_file: Path
    fingerprint: str
    not_after: dt.datetime
    token: str
    token_made: bool  # True at first install: show the token once

    @property
    def config(self) -> Path:
        """The rendered haproxy.cfg."""
        return self.conf_dir / CONFIG

    @property
    def socket(self) -> Path:
        """HAProxy's runtime API socket, as the host sees it."""
        return self.run_dir / SOCKET


def prepare(site_root: Path, names: list[str], now: dt.datetime,
            tls_cert: Path | None = None, tls_key: Path | None = None) -> FrontDoorFiles:
    """Make (first install) or keep the site certificate, token and token map.

    A hospital pair given with `--tls-cert/--tls-key` replaces the served certificate.

    Raises:
        TlsError: the given pair is bad, or no host names to make a certificate for.
        TokenError: the token file exists but is unreadable or loose.
    """
    conf_dir, run_dir = site_root / CONF_DIR, site_root / RUN_DIR
    conf_dir.mkdir(parents=True, exist_ok=True)
    run_dir.mkdir(mode=0o700, exist_ok=True)
    pem = conf_dir / tls.SITE_PEM
    if tls_cert is not None and tls_key is not None:
        cert = tls.install_pair(conf_dir, tls_cert, tls_key, now)
        ca_file = conf_dir / "ca" / tls.CA_CERT
        ca_file.parent.mkdir(exist_ok=True)
        shutil.copyfile(tls_cert, ca_file)  # the hospital's chain is what clients trust
    elif not pem.exists():
        made = tls.make_site_certificate(conf_dir / "ca", names, now)
        # HAProxy reads one PEM beside its config; the CA key stays in ca/.
        (conf_dir / "ca" / tls.SITE_PEM).replace(pem)
        cert = tls.SiteCertificate(made.ca_file, pem, made.fingerprint, made.not_after)
    else:
        leaf = tls.read_leaf(pem)
        cert = tls.SiteCertificate(conf_dir / "ca" / tls.CA_CERT, pem, tls.fingerprint(leaf),
                                   leaf.not_valid_after_utc)
    tok, made_now = token.ensure_token(site_root)
    token_map = conf_dir / TOKEN_MAP
    if made_now or not token_map.exists():
        atomic_write(token_map, token.render_token_map([tok]).encode(), token.MAP_MODE)
    return FrontDoorFiles(conf_dir, run_dir, cert.ca_file, cert.fingerprint, cert.not_after,
                          tok, made_now)


def settings(files: FrontDoorFiles, *, in_container: bool, plain_http: bool = False,
             stats_port: int = STATS_PORT) -> config.ProxySettings:
    """The proxy settings for these files, with paths as HAProxy will see them."""
    conf = CONF_IN_CONTAINER if in_container else files.conf_dir
    run = RUN_IN_CONTAINER if in_container else files.run_dir
    return config.ProxySettings(
        socket=run / SOCKET, stats_port=stats_port,
        tls_pem=None if plain_http else conf / tls.SITE_PEM, token_map=conf / TOKEN_MAP)


def write_config(files: FrontDoorFiles, services: list[config.ServiceDoor],
                 proxy: config.ProxySettings) -> None:
    """Render and write haproxy.cfg atomically (a restarting proxy never reads half a file).

    Raises:
        ProxyConfigError: see `config.render`.
    """
    atomic_write(files.config, config.render(services, proxy).encode())
