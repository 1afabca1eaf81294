"""Finding the engine's socket with no flag: DOCKER_HOST, Docker, Podman, podman.socket."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.engines.discover import answers, find_docker_host


@pytest.fixture
def listening(tmp_path: Path) -> Iterator[str]:
    """A real unix socket that accepts, as an engine's would."""
    path = tmp_path / "engine.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(path))
        s.listen(4)
        yield f"unix://{path}"


def test_docker_host_wins(listening: str) -> None:
    assert find_docker_host({"DOCKER_HOST": "tcp://10.0.0.1:2375"}, [listening]) == \
        "tcp://10.0.0.1:2375"


def test_the_first_socket_that_answers_is_used(tmp_path: Path, listening: str) -> None:
    dead = f"unix://{tmp_path / 'nobody.sock'}"
    assert not answers(dead) and answers(listening)
    assert find_docker_host({}, [dead, listening], activate=lambda: False) == listening


def test_podman_socket_unit_is_started_when_nothing_answers(tmp_path: Path) -> None:
    dead = [f"unix://{tmp_path / 'a.sock'}", f"unix://{tmp_path / 'b.sock'}"]
    activated = tmp_path / "podman.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)

    def start() -> bool:  # what `systemctl start podman.socket` does: systemd listens
        server.bind(str(activated))
        server.listen(1)
        return True

    try:
        assert find_docker_host({}, dead, activate=start,
                                activated=f"unix://{activated}") == f"unix://{activated}"
    finally:
        server.close()


def test_with_nothing_to_find_docker_default_is_named(tmp_path: Path) -> None:
    dead = [f"unix://{tmp_path / 'a.sock'}", f"unix://{tmp_path / 'b.sock'}"]
    assert find_docker_host({}, dead, activate=lambda: False) == dead[0]
