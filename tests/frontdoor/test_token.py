"""The front door asks for the site token on everything but health, and rotates it live."""

from __future__ import annotations

import json
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from appliance.errors import TokenError
from appliance.frontdoor import config, switch, token
from tests.enginekit import wait_for
from tests.frontdoor.kit import INFER, SERVICE, Proxy, Site, door, https
from tests.frontdoor.load import SteadyLoad, infer_body
from tests.frontdoor.test_switch import after
from tests.runtime.conftest import Server


@pytest.fixture
def proxy(site: Site, runtimes: list[Server],
          proxy_for: Callable[[list[config.ServiceDoor]], Proxy]) -> Proxy:
    p = proxy_for([door(site, runtimes[0])])
    wait_for(lambda: p.api.servers(config.backend_name(SERVICE))["a"].up, 20, "slot a up")
    return p


def test_token_is_required_except_for_health(site: Site, proxy: Proxy) -> None:
    status, headers, body = https(site, "POST", INFER, infer_body())
    assert status == 401
    assert "error" in json.loads(body) and "Bearer" in json.loads(body)["error"]
    assert headers["content-type"] == "application/json"
    assert headers["www-authenticate"].startswith("Bearer")
    assert https(site, "POST", INFER, infer_body(),
                 {"Authorization": "Bearer wrong-token"})[0] == 401
    # The token without a scheme, or under another scheme, is no token.
    assert https(site, "POST", INFER, infer_body(), {"Authorization": site.token})[0] == 401
    assert https(site, "POST", INFER, infer_body(),
                 {"Authorization": f"Basic {site.token}"})[0] == 401
    assert https(site, "GET", "/v2/models/mlp")[0] == 401
    assert https(site, "GET", "/v2/health/ready")[0] == 200
    assert https(site, "GET", "/v2/health/live")[0] == 200
    for scheme in ("Bearer", "bearer", "BEARER"):
        status, _, body = https(site, "POST", INFER, infer_body(),
                                {"Authorization": f"{scheme} {site.token}"})
        assert status == 200, body
        assert json.loads(body)["outputs"][0]["shape"] == [1, 10]


def test_token_file_is_0600_and_refused_when_loose(site: Site) -> None:
    path = site.root / token.TOKEN_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert token.ensure_token(site.root) == (site.token, False)
    path.chmod(0o644)
    with pytest.raises(TokenError, match="chmod 600"):
        token.read_token(path)


def test_config_and_map_hold_no_token(site: Site, proxy: Proxy) -> None:
    assert site.token not in proxy.cfg.read_text()
    assert site.token not in site.token_map.read_text()
    assert proxy.api.tokens(site.token_map) == {token.token_digest(site.token)}


def test_rotation_through_the_runtime_api_fails_no_request(site: Site, proxy: Proxy,
                                                         tmp_path: Path) -> None:
    new = token.new_token()
    old_load = SteadyLoad("127.0.0.1", site.port, INFER, rate=100, connections=4,
                          headers=site.auth, ssl_context=site.ssl_context()).start()
    new_load = None
    try:
        after(old_load, 100, "with the old token")
        switch.rotate_token_begin(proxy.api, site.token_map, site.token, new)
        new_load = SteadyLoad("127.0.0.1", site.port, INFER, rate=100, connections=4,
                              headers={"Authorization": f"Bearer {new}"},
                              ssl_context=site.ssl_context()).start()
        after(new_load, 100, "with both tokens valid")
        old_report = old_load.stop()
        switch.rotate_token_finish(proxy.api, site.token_map, site.token, new)
        after(new_load, 100, "with only the new token")
        new_report = new_load.stop()
    finally:
        old_load.stop()
        if new_load is not None:
            new_load.stop()
    assert old_report.failures == [], old_report.summary()
    assert new_report.failures == [], new_report.summary()
    assert https(site, "POST", INFER, infer_body(), site.auth)[0] == 401
    assert https(site, "POST", INFER, infer_body(), {"Authorization": f"Bearer {new}"})[0] == 200
    # The map file matches the proxy's memory: a proxy restart keeps the new token only.
    assert site.token_map.read_text() == token.render_token_map([new])
    assert proxy.api.tokens(site.token_map) == {token.token_digest(new)}


def test_the_runtimes_token_file_follows_a_rotation(tmp_path: Path) -> None:
    root = tmp_path
    first, made = token.ensure_token(root)
    assert made
    directory = token.write_runtime_tokens(root, token.valid_tokens(root), owner=(10001, 10001))
    path = token.runtime_token_file(root)
    assert path.parent == directory and path.read_text() == f"{first}\n"
    st = path.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (10001, 10001, 0o400)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700 and directory.stat().st_uid == 10001
    # a rotation under way: both tokens are valid; the owner stays the runtime's
    (root / (token.TOKEN_FILE + token.PENDING_SUFFIX)).write_text(first + "\n")
    (root / (token.TOKEN_FILE + token.PENDING_SUFFIX)).chmod(0o600)
    second = token.new_token()
    (root / token.TOKEN_FILE).write_text(second + "\n")
    assert token.valid_tokens(root) == [second, first]
    token.write_runtime_tokens(root, token.valid_tokens(root))
    assert path.read_text() == f"{second}\n{first}\n"
    assert path.stat().st_uid == 10001 and stat.S_IMODE(path.stat().st_mode) == 0o400
    assert token.own_runtime_tokens(root, 10003, 10004) == directory
    assert path.stat().st_uid == 10003 and directory.stat().st_gid == 10004
    assert not list(directory.glob(".*.tmp"))  # nothing half-written left beside it
    assert token.own_runtime_tokens(tmp_path / "other", 1, 1) is None  # no door, no file
