"""What an admin does to a running front door: rotate its token, replace its
certificate (what each service's fallback answered: `appliance.site.fallbacks`)."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from datetime import datetime
from pathlib import Path

from appliance.errors import FrontDoorError
from appliance.frontdoor import site as files_of
from appliance.frontdoor import tls, token
from appliance.frontdoor.container import own_for_proxy
from appliance.frontdoor.runtime_api import ProxyApi
from appliance.fsutil import atomic_write
from appliance.site.door import DOOR_FILE, DoorRecord
from appliance.site.layout import Site


def _files_and_api(site: Site) -> tuple[Path, Path, ProxyApi]:
    """The front door's directory, the same as HAProxy names it, and its runtime API.

    Raises:
        FrontDoorError: this site has no front door yet.
    """
    conf = site.root / files_of.CONF_DIR
    record = DoorRecord.read(site)
    if record is None:
        raise FrontDoorError(f"{site.root} has no front door yet: install a bundle that "
                             "carries one first")
    return conf, Path(record.proxy_conf), ProxyApi(site.root / files_of.RUN_DIR
                                                   / files_of.SOCKET)


def rotate_token(site: Site, finish: bool) -> str:
    """Begin a token rotation (the proxy accepts a new token beside the old one; the new
    one is returned and kept in the token file) or `finish` it (only the kept one is
    accepted). No request fails and no connection closes.

    Raises:
        FrontDoorError: no front door, the proxy refused, or no rotation to finish.
    """
    conf, in_proxy_conf, api = _files_and_api(site)
    token_file = site.root / token.TOKEN_FILE
    pending = site.root / (token.TOKEN_FILE + token.PENDING_SUFFIX)
    in_proxy = in_proxy_conf / files_of.TOKEN_MAP
    current = token.read_token(token_file)
    if finish:
        if not pending.exists():
            raise FrontDoorError("no token rotation is under way: run `appliance token rotate` "
                                 "first")
        old = token.read_token(pending)
        atomic_write(conf / files_of.TOKEN_MAP, token.render_token_map([current]).encode(),
                     token.MAP_MODE)
        api.del_token(in_proxy, token.token_digest(old))
        token.write_runtime_tokens(site.root, [current])  # after the proxy: none is refused
        pending.unlink()
        return current
    if pending.exists():
        raise FrontDoorError("a token rotation is already under way: move the clients to the "
                             "new token, then run `appliance token rotate --finish`")
    new = token.new_token()
    # The runtimes first: by the time a client holds the new token, everything takes it.
    token.write_runtime_tokens(site.root, [current, new])
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
    conf, in_proxy_conf, api = _files_and_api(site)
    pem_text, leaf = tls.load_pair(cert, key, now)
    api.replace_certificate(in_proxy_conf / tls.SITE_PEM, pem_text)
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


