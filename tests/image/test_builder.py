"""The image builder's pieces that need no container engine: hashing, requirements, errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from images import healthcheck
from images.build import ROOT, build_runtime_image
from images.errors import ToolMissingError, WheelhouseError
from images.podman import Podman
from images.wheelhouse import project_packages, runtime_requirements, source_digest


def test_healthcheck_probes_the_port_of_the_runtime_command() -> None:
    cmd = ["python", "-m", "runtime", "--models", "/models", "--port", "9001"]
    assert healthcheck.runtime_port(cmd, {"RUNTIME_PORT": "7000"}) == 9001
    assert healthcheck.runtime_port(["python", "-m", "runtime", "--port=9002"], {}) == 9002


def test_healthcheck_falls_back_to_env_then_8000() -> None:
    assert healthcheck.runtime_port(["catatonit", "--", "python"], {"RUNTIME_PORT": "7000"}) == 7000
    assert healthcheck.runtime_port([], {"RUNTIME_PORT": "not-a-port"}) == 8000


def _fake_project(root: Path) -> Path:
    (root / "runtime").mkdir(parents=True)
    (root / "pyproject.toml").write_text(
        '[project]\nname = "x"\n[tool.setuptools.packages.find]\ninclude = ["runtime*"]\n'
    )
    (root / "runtime" / "__init__.py").write_text('"""runtime."""\n')
    return root


def test_source_digest_follows_sources_and_ignores_bytecode(tmp_path: Path) -> None:
    root = _fake_project(tmp_path)
    first = source_digest(root)
    (root / "runtime" / "__pycache__").mkdir()
    (root / "runtime" / "__pycache__" / "__init__.cpython-311.pyc").write_bytes(b"\0")
    assert source_digest(root) == first
    (root / "runtime" / "server.py").write_text("PORT = 8000\n")
    assert source_digest(root) != first


def test_project_packages_follow_the_setuptools_include_list() -> None:
    assert {"runtime", "appliance", "signing"} <= set(project_packages(ROOT))
    assert "images" not in project_packages(ROOT)


def test_runtime_requirements_leave_out_the_installer_and_torch() -> None:
    reqs = " ".join(runtime_requirements(ROOT)).lower()
    for wanted in ("onnxruntime", "fastapi", "uvicorn", "numpy", "cryptography", "pyyaml"):
        assert wanted in reqs
    for unwanted in ("torch", "textual", "docker"):
        assert unwanted not in reqs


def test_pyproject_without_runtime_extra_is_a_one_line_error(tmp_path: Path) -> None:
    _fake_project(tmp_path)
    with pytest.raises(WheelhouseError, match=r"runtime requirements from .*pyproject\.toml"):
        runtime_requirements(tmp_path)


def test_missing_podman_is_a_one_line_error_naming_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ToolMissingError) as info:
        build_runtime_image(
            cache=tmp_path / "cache",
            out_dir=tmp_path / "out",
            podman=Podman("podman-not-installed-here"),
        )
    message = str(info.value)
    assert "\n" not in message
    assert "podman-not-installed-here not found" in message and ".ci/setup-system" in message
    assert not (tmp_path / "out" / "runtime-image.tar").exists()
