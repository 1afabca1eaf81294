"""`appliance-installer`'s entry point: TUI with no command, the CLI with one, bundle beside it."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from appliance import installer as entry
from installer_tui.media import DEFAULT_MEDIA_ROOTS, default_media_roots, executable_dir
from tests.site.bundlekit import Vendor as SiteVendor
from tests.site.bundlekit import make_bundle
from tests.stick.kit import make_vendor


def recording_main(opened: list[list[str]]) -> Callable[[Sequence[str]], int]:
    """A stand-in for the TUI's `main` that records the arguments it was given."""
    def main(argv: Sequence[str]) -> int:
        opened.append(list(argv))
        return 0
    return main


def as_executable_in(monkeypatch: pytest.MonkeyPatch, directory: Path) -> None:
    """What the executable's bootloader sets: `sys.frozen`, and `sys.executable` = the file."""
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    monkeypatch.setattr(sys, "executable", str(directory / "appliance-installer"))


def test_plain_python_searches_only_mounted_media() -> None:
    assert executable_dir() is None
    assert default_media_roots() == DEFAULT_MEDIA_ROOTS
    assert entry.stick_bundle() is None


def test_executable_searches_its_own_directory_first_and_opens_the_one_bundle(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    v = make_vendor(tmp_path)
    stick = tmp_path / "stick"
    stick.mkdir()
    bundle = make_bundle(stick, SiteVendor(v.key, v.root_path), 1)
    as_executable_in(monkeypatch, stick)
    assert default_media_roots()[0] == stick.resolve()
    assert entry.stick_bundle() == bundle.resolve()
    opened: list[list[str]] = []
    monkeypatch.setattr("installer_tui.app.main", recording_main(opened))
    assert entry.main([]) == 0
    assert opened == [[str(bundle.resolve())]]
    # options for the TUI, but no bundle: still the one beside the executable
    assert entry.main(["tui", "--engine", "process"]) == 0
    assert opened[-1] == ["--engine", "process", str(bundle.resolve())]
    # a bundle named, the status screen, or arguments that do not parse: left as given
    for given in (["tui", "other.tar"], ["tui", "--status"], ["tui", "--expired-max-days",
                                                              "x"]):
        assert entry.main(given) == 0
        assert opened[-1] == given[1:]


def test_two_bundles_beside_the_executable_leave_the_choice_to_the_person(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    v = make_vendor(tmp_path)
    make_bundle(tmp_path, SiteVendor(v.key, v.root_path), 1)
    make_bundle(tmp_path, SiteVendor(v.key, v.root_path), 2)
    as_executable_in(monkeypatch, tmp_path)
    assert entry.stick_bundle() is None


def test_a_command_runs_the_appliance_cli(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    v = make_vendor(tmp_path)
    assert entry.main(["keys", "fingerprint", str(v.root_path)]) == 0
    assert v.key.public_key.fingerprint in capsys.readouterr().out


def test_help_says_no_arguments_starts_the_tui(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        entry.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("appliance-installer: with no arguments, the installer TUI")
    assert "install" in out and "stick" in out


def test_tui_word_passes_the_rest_to_the_tui(monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[list[str]] = []
    monkeypatch.setattr("installer_tui.app.main", recording_main(opened))
    assert entry.main(["tui", "--status"]) == 0
    assert opened == [["--status"]]


def test_hidden_supervise_form_runs_the_process_engines_supervisor(tmp_path: Path) -> None:
    """The frozen executable has no `python -m`: `__supervise` reaches the supervisor."""
    import os
    import signal
    import subprocess

    from appliance.engines.supervise import SUPERVISE_ARG, self_command
    from tests.enginekit import wait_for

    pidfile, log = tmp_path / "svc.pid", tmp_path / "svc.log"
    argv = [SUPERVISE_ARG, "--foreground", "--pidfile", str(pidfile), "--log", str(log),
            "--", "sleep", "60"]
    script = f"import sys; from appliance.installer import main; sys.exit(main({argv!r}))"
    proc = subprocess.Popen([sys.executable, "-c", script], env={**os.environ,
                            "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    try:
        child = pidfile.with_suffix(".child")
        wait_for(lambda: child.exists() and child.read_text().strip(), 20, "the first start")
        first = int(child.read_text())
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: child.exists() and int(child.read_text()) != first, 20, "a restart")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0 and not pidfile.exists()
    finally:
        proc.kill()
        proc.wait()
    frozen = subprocess.run([sys.executable, "-c", "import sys; sys.frozen = True; "
                             "from appliance.engines.supervise import *; "
                             f"print(self_command('m', {SUPERVISE_ARG!r}))"],
                            capture_output=True, text=True, check=True)
    assert frozen.stdout.strip() == repr([sys.executable, SUPERVISE_ARG])
    assert self_command("m", SUPERVISE_ARG, "py") == ["py", "-m", "m"]


def test_the_bootloaders_library_directory_is_taken_off_for_host_programs() -> None:
    from appliance.engines.supervise import host_library_path
    mei = "/tmp/_MEI12345"
    env = {"LD_LIBRARY_PATH": f"{mei}:/opt/site-libs", "LD_LIBRARY_PATH_ORIG": "/opt/site-libs"}
    host_library_path(env, mei)
    assert env["LD_LIBRARY_PATH"] == "/opt/site-libs"
    env = {"LD_LIBRARY_PATH": mei}  # the caller had none
    host_library_path(env, mei)
    assert "LD_LIBRARY_PATH" not in env
    env = {"LD_LIBRARY_PATH": "/opt/a:/opt/b"}  # not frozen by us: left as it is
    host_library_path(env, None)
    assert env["LD_LIBRARY_PATH"] == "/opt/a:/opt/b"
