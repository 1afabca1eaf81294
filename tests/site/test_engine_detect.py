"""Finding the engine without --docker-host: podman's rootful socket, podman.socket
activation, then Docker's, in that order; and naming the engine that was found."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from appliance.engines.detect import detect_docker_host, no_container_engine
from installer_tui.format import engine_label


def listening(path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.listen(4)
    return s


@pytest.fixture
def no_env(monkeypatch):
    monkeypatch.delenv("DOCKER_HOST", raising=False)


def test_podman_rootful_socket_comes_before_docker(tmp_path, no_env):
    podman, docker = tmp_path / "podman.sock", tmp_path / "docker.sock"
    with listening(podman), listening(docker):
        assert detect_docker_host(podman=podman, docker=docker,
                                  activate=lambda: False) == f"unix://{podman}"


def test_podman_socket_activation_is_asked_for_before_docker(tmp_path, no_env):
    podman, docker = tmp_path / "podman.sock", tmp_path / "docker.sock"
    held = []

    def activate() -> bool:  # what systemctl start podman.socket does: the socket listens
        held.append(listening(podman))
        return True

    with listening(docker):
        assert detect_docker_host(podman=podman, docker=docker,
                                  activate=activate) == f"unix://{podman}"
    assert held
    held[0].close()


def test_docker_when_podman_is_absent_and_given_or_env_first(tmp_path, no_env, monkeypatch):
    podman, docker = tmp_path / "podman.sock", tmp_path / "docker.sock"
    with listening(docker):
        assert detect_docker_host(podman=podman, docker=docker,
                                  activate=lambda: False) == f"unix://{docker}"
    assert detect_docker_host("unix:///x.sock", podman=podman, docker=docker) == \
        "unix:///x.sock"
    monkeypatch.setenv("DOCKER_HOST", "unix:///y.sock")
    assert detect_docker_host(podman=podman, docker=docker) == "unix:///y.sock"


def test_no_container_engine_only_when_there_is_none_at_all(tmp_path):
    podman, docker = tmp_path / "podman.sock", tmp_path / "docker.sock"
    unit = tmp_path / "podman.socket"
    found: dict[str, str] = {}

    def none() -> bool:
        return no_container_engine(podman=podman, docker=docker, units=(unit,),
                                   which=found.get)

    assert none()
    for program in ("podman", "docker", "dockerd"):  # an installed but stopped engine
        found[program] = f"/usr/bin/{program}"
        assert not none()
        found.clear()
    unit.write_text("[Socket]\n")
    assert not none()
    unit.unlink()
    with listening(docker):
        assert not none()


@pytest.mark.engine
def test_the_status_line_names_podman_or_docker(tmp_path, engine_url, request):
    from appliance.engines.docker import DockerEngine
    from appliance.site.layout import Site
    eng = DockerEngine(Site(tmp_path), base_url=engine_url)
    try:
        label = engine_label("docker", eng.ping)
    finally:
        eng.close()
    which = request.node.callspec.params["engine_url"]  # "podman" or "docker-20.10"
    assert label.startswith("Podman " if which == "podman" else "Docker "), label
    assert engine_label("process", eng.ping) == "process"
