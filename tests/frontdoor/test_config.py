"""The rendered haproxy.cfg: what it promises, checked by HAProxy itself, and refusals."""

from __future__ import annotations

import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from appliance.errors import ProxyConfigError
from appliance.frontdoor import config
from tests.enginekit import need

SETTINGS = config.ProxySettings(socket=Path("/run/p/admin.sock"), stats_port=8404,
                                tls_pem=Path("/etc/p/site.pem"), token_map=Path("/etc/p/t.map"))


def test_rendered_config_passes_haproxy_check(tmp_path: Path) -> None:
    haproxy = need("haproxy")
    (tmp_path / "t.map").write_text("")
    settings = config.ProxySettings(socket=tmp_path / "s.sock", stats_port=8404, tls_pem=None,
                                    token_map=tmp_path / "t.map", maxconn=1000)
    services = [config.ServiceDoor("mlp", 18000, servers={"a": "127.0.0.1:9001"},
                                   fallback="127.0.0.1:9100"),
                config.ServiceDoor("cnn", 18001, weights={"a": 10, "b": 246})]
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(config.render(services, settings))
    proc = subprocess.run([haproxy, "-c", "-f", str(cfg)], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, proc.stderr


def test_config_has_tls_token_drain_fallback_and_exporter() -> None:
    text = config.render([config.ServiceDoor("mlp", 443, servers={"b": "10.89.0.5:8000"},
                                             fallback="10.89.0.6:8000", max_queue=32)],
                         SETTINGS)
    assert "bind 0.0.0.0:443 ssl crt /etc/p/site.pem alpn http/1.1" in text
    assert "expose-fd listeners" in text
    assert "option httpchk GET /v2/health/ready" in text
    assert "server a 127.0.0.1:9 " in text and text.split("server a ")[1].split("\n")[0].endswith(
        "disabled")
    assert "server b 10.89.0.5:8000 " in text
    assert "server fallback 10.89.0.6:8000 backup" in text
    assert "use_backend fb_mlp if { queue(be_mlp) ge 32 }" in text
    assert "bind 127.0.0.1:8404" in text and "prometheus-exporter" in text
    assert "-m reg -i ^bearer" in text and "map(/etc/p/t.map)" in text
    assert "http-response set-header X-Appliance-Served-By fallback" in text


@pytest.mark.parametrize(("service", "message"), [
    (config.ServiceDoor("Bad Name", 8000), "not a proxy name"),
    (config.ServiceDoor("mlp", 8404), "already the stats port"),
    (config.ServiceDoor("mlp", 0), "not 1-65535"),
    (config.ServiceDoor("mlp", 8000, servers={"c": "127.0.0.1:1"}), "slot 'c'"),
    (config.ServiceDoor("mlp", 8000, servers={"a": "127.0.0.1"}), "not host:port"),
    (config.ServiceDoor("mlp", 8000, servers={"a": "1.2.3.4:5\nfoo"}), "not host:port"),
    (config.ServiceDoor("mlp", 8000, weights={"a": 300}), "0..256"),
])
def test_bad_service_is_refused_with_one_line(service: config.ServiceDoor, message: str) -> None:
    with pytest.raises(ProxyConfigError, match=message) as e:
        config.render([service], SETTINGS)
    assert "\n" not in str(e.value)


def test_two_services_on_one_port_are_refused() -> None:
    with pytest.raises(ProxyConfigError, match="already service mlp's"):
        config.render([config.ServiceDoor("mlp", 8000), config.ServiceDoor("cnn", 8000)],
                      SETTINGS)


def test_uid_is_rendered_only_for_a_proxy_started_as_root(tmp_path: Path) -> None:
    base = config.ProxySettings(socket=tmp_path / "admin.sock", stats_port=8404,
                                tls_pem=None, token_map=None)
    door = config.ServiceDoor("mlp", 8000, servers={"a": "127.0.0.1:20000"})
    assert "\n    uid " not in config.render([door], base)  # the container starts unprivileged
    text = config.render([door], replace(base, uid=10002))
    assert "\n    uid 10002\n    gid 10002\n" in text


def test_busy_polling_is_off_unless_asked_and_then_haproxy_takes_it(tmp_path: Path) -> None:
    haproxy = need("haproxy")
    base = config.ProxySettings(socket=tmp_path / "admin.sock", stats_port=8404,
                                tls_pem=None, token_map=None)
    door = config.ServiceDoor("mlp", 8000, servers={"a": "127.0.0.1:20000"})
    assert "busy-polling" not in config.render([door], base)  # a core is not ours to spin
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(config.render([door], replace(base, busy_polling=True)))
    assert "\n    busy-polling\n" in cfg.read_text()
    proc = subprocess.run([haproxy, "-c", "-f", str(cfg)], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, proc.stderr
