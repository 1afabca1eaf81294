"""The proxy image in a hardened container on podman and Docker 20.10, serving the front door."""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.errors import ProxyConfigError
from appliance.frontdoor import config, container
from images.build import ROOT, BuiltImage
from images.errors import ImageBuildError
from images.proxy import build_proxy_image
from tests.enginekit import wait_for
from tests.frontdoor.kit import INFER, Site, https
from tests.frontdoor.load import infer_body
from tests.image.fixtures import require_podman
from tests.runtime.conftest import Server, free_port

MiB = 1024 * 1024
IDLE_CONNECTIONS = 1100
# The engines here run inside a box whose hard limit may be under 65536; the test asks
# for what the box allows (HAProxy needs about 2 x maxconn 4000).
NOFILE = min(container.NOFILE, resource.getrlimit(resource.RLIMIT_NOFILE)[1])


@pytest.fixture(scope="session")
def proxy_image() -> BuiltImage:
    """The proxy image, built (or reused) and saved as out/proxy-image.tar."""
    require_podman()
    try:
        return build_proxy_image(root=ROOT, out_dir=ROOT / "out")
    except ImageBuildError as e:
        pytest.fail(f"proxy image build failed: {e}")


def _client(url: str) -> Any:
    import docker

    return docker.DockerClient(base_url=url, version="1.41", timeout=120)


def _image_in(client: Any, image: BuiltImage) -> str:
    """The proxy image's id in this engine, loaded from the archive unless already there."""
    import docker.errors

    try:
        return str(client.images.get(image.tag).id)
    except docker.errors.ImageNotFound:
        with image.archive.open("rb") as f:
            return str(client.images.load(f)[0].id)


@pytest.fixture
def conf(site: Site, runtimes: list[Server], tmp_path: Path) -> Iterator[container.ProxyContainer]:
    """The site's files in a conf dir as the container sees them, one service on runtime A."""
    conf_dir, run_dir = tmp_path / "conf", Path(str(site.settings.socket.parent))
    conf_dir.mkdir()
    (conf_dir / "site.pem").write_bytes(site.cert.pem_file.read_bytes())
    (conf_dir / "site.pem").chmod(0o600)
    (conf_dir / "tokens.map").write_bytes(site.token_map.read_bytes())
    inside = container.CONF_IN_CONTAINER
    settings = config.ProxySettings(
        socket=container.RUN_IN_CONTAINER / "admin.sock", stats_port=free_port(),
        tls_pem=inside / "site.pem", token_map=inside / "tokens.map", bind="127.0.0.1",
        maxconn=4000)
    svc = config.ServiceDoor("mlp", site.port, servers={"a": runtimes[0].hostport})
    (conf_dir / "haproxy.cfg").write_text(config.render([svc], settings))
    (conf_dir / "settings.json").write_text(json.dumps({"stats_port": settings.stats_port}))
    container.own_for_proxy([conf_dir / "site.pem", run_dir])
    yield container.ProxyContainer("", f"fd-proxy-{site.port}", conf_dir, run_dir, (site.port,))


def test_proxy_container_is_hardened_and_serves_https_with_the_token(
        engine_url: str, proxy_image: BuiltImage, site: Site,
        conf: container.ProxyContainer) -> None:
    client = _client(engine_url)
    image_id = _image_in(client, proxy_image)
    spec = container.ProxyContainer(image_id, conf.name, conf.conf_dir, conf.run_dir, conf.ports,
                                    nofile=NOFILE)
    ct = client.containers.create(**container.create_kwargs(spec))
    try:
        ct.start()
        def serving() -> bool:
            ct.reload()
            assert ct.status in ("created", "running"), ct.logs().decode()[-1500:]
            return https(site, "GET", "/v2/health/ready")[0] == 200
        wait_for(serving, 60, "the proxy container to serve")
        assert https(site, "POST", INFER, infer_body())[0] == 401
        assert https(site, "POST", INFER, infer_body(), site.auth)[0] == 200

        inspect = client.api.inspect_container(ct.id)
        hc = inspect["HostConfig"]
        assert inspect["Config"]["User"] == f"{container.PROXY_UID}:{container.PROXY_UID}"
        assert hc["ReadonlyRootfs"] is True
        assert "/tmp" in hc["Tmpfs"]
        assert hc["Privileged"] is False
        assert "no-new-privileges" in hc["SecurityOpt"]
        assert hc["PidsLimit"] == 256
        assert hc["Memory"] == 256 * MiB and hc["MemorySwap"] == 256 * MiB
        assert hc["NanoCpus"] == 1_000_000_000
        assert hc["RestartPolicy"]["Name"] == "always"
        assert hc["NetworkMode"] == "host"
        nofile = [u for u in hc["Ulimits"] if u["Name"] in ("nofile", "RLIMIT_NOFILE")]
        assert nofile == [{"Name": nofile[0]["Name"], "Soft": NOFILE, "Hard": NOFILE}]
        assert any(b.startswith(f"{conf.conf_dir}:{container.CONF_IN_CONTAINER}:ro")
                   for b in hc["Binds"])

        # What the kernel applies inside, whatever the engine reports.
        status = ct.exec_run(["cat", "/proc/1/status"]).output.decode()
        fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
        assert fields["NoNewPrivs"].strip() == "1"
        assert int(fields["CapEff"], 16) == 0 and int(fields["CapPrm"], 16) == 0
        limits = ct.exec_run(["cat", "/proc/1/limits"]).output.decode()
        assert [ln.split()[3:5] for ln in limits.splitlines()
                if ln.startswith("Max open files")] == [[str(NOFILE)] * 2]
        assert ct.exec_run(["touch", "/etc/x"]).exit_code != 0  # read-only root
        # As root (no capabilities still) so that no directory is closed to the search.
        setuid = ct.exec_run(["find", "/", "-xdev", "-type", "f", "-perm", "/6000"], user="0",
                             workdir="/", demux=True)
        assert setuid.exit_code == 0, setuid.output
        assert (setuid.output[0] or b"").split() == []
        for binary in ("/usr/bin/su", "/bin/su", "/usr/bin/passwd", "/usr/bin/mount",
                       "/bin/mount"):
            assert ct.exec_run(["test", "-e", binary]).exit_code != 0, binary
        # 1,100 idle connections (more than the 1024 a default nofile limit allows)
        # leave the service answering.
        idle = [socket.create_connection(("127.0.0.1", site.port), timeout=5)
                for _ in range(IDLE_CONNECTIONS)]
        try:
            assert https(site, "POST", INFER, infer_body(), site.auth)[0] == 200
        finally:
            for c in idle:
                c.close()
        # The runtime API socket is on the host, for the installer.
        assert "pxname" in container_api(conf).command("show stat")
    finally:
        ct.remove(force=True)


def container_api(conf: container.ProxyContainer) -> Any:
    from appliance.frontdoor.runtime_api import ProxyApi

    return ProxyApi(conf.run_dir / "admin.sock")


def test_low_port_on_the_host_network_is_refused() -> None:
    spec = container.ProxyContainer("img", "p", Path("/c"), Path("/r"), (443,))
    with pytest.raises(ProxyConfigError, match="under 1024"):
        container.create_kwargs(spec)
    bridged = container.create_kwargs(
        container.ProxyContainer("img", "p", Path("/c"), Path("/r"), (443,), network="door"))
    assert bridged["sysctls"] == {"net.ipv4.ip_unprivileged_port_start": "443"}
    assert bridged["ports"] == {"443/tcp": ("0.0.0.0", 443)}
    assert "cap_add" not in bridged and bridged["cap_drop"] == ["ALL"]
    assert json.dumps(bridged["restart_policy"]) == '{"Name": "always"}'


def test_switch_through_the_proxy_image_on_podman_fails_no_request(
        podman_url: str, proxy_image: BuiltImage, site: Site, runtimes: list[Server],
        conf: container.ProxyContainer) -> None:
    from appliance.frontdoor import switch
    from tests.frontdoor.test_switch import PHASE_REQUESTS, after, steady_load

    client = _client(podman_url)
    spec = container.ProxyContainer(_image_in(client, proxy_image), conf.name, conf.conf_dir,
                                    conf.run_dir, conf.ports, nofile=NOFILE)
    ct = client.containers.create(**container.create_kwargs(spec))
    try:
        ct.start()
        wait_for(lambda: https(site, "GET", "/v2/health/ready")[0] == 200, 60, "the proxy")
        api = container_api(conf)
        load = steady_load(site)
        try:
            after(load, PHASE_REQUESTS, "on release A")
            assert switch.switch(api, "mlp", "127.0.0.1", runtimes[1].port) == "b"
            assert runtimes[0].stop() == 0
            after(load, PHASE_REQUESTS, "on release B")
            report = load.stop()
        finally:
            load.stop()
        assert report.failures == [], report.summary()
        assert api.servers(config.backend_name("mlp"))["b"].requests >= PHASE_REQUESTS // 2
        # The installer rewrites the config after a switch, so a restart serves release B.
        inside = container.CONF_IN_CONTAINER
        settings = config.ProxySettings(
            socket=container.RUN_IN_CONTAINER / "admin.sock",
            stats_port=json.loads((conf.conf_dir / "settings.json").read_text())["stats_port"],
            tls_pem=inside / "site.pem", token_map=inside / "tokens.map", bind="127.0.0.1",
            maxconn=4000)
        svc = config.ServiceDoor("mlp", site.port, servers={"b": runtimes[1].hostport})
        (conf.conf_dir / "haproxy.cfg").write_text(config.render([svc], settings))

        # A crashed proxy (its process killed, not `podman stop`) comes back by itself.
        pid = client.api.inspect_container(ct.id)["State"]["Pid"]
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: client.api.inspect_container(ct.id)["State"]["Pid"] not in (0, pid),
                 60, "podman to restart the proxy")
        wait_for(lambda: https(site, "POST", INFER, infer_body(), site.auth)[0] == 200, 60,
                 "the restarted proxy to serve release B")
    finally:
        ct.remove(force=True)
