"""The process engine serving the real runtime image from its unpacked root, confined.

A bundle over the slim runtime image is installed with the process engine (no
systemd: the supervisor and the launcher confine the service); it answers a
correct inference, runs as the image's unprivileged user in the image's root,
sees neither the host's /root nor /home, and comes back after `kill -9`.
"""

from __future__ import annotations

import os
import resource
import secrets
import signal
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from appliance.engines.imageview import ImageView, unit_confinement
from appliance.engines.process import ProcessEngine
from appliance.engines.rootfs import roots_dir
from appliance.site.gpu import GpuReport, RecordedProbe
from appliance.site.layout import Site
from appliance.site.plan import InstallOptions, InstallPlan
from tests.enginekit import wait_for
from tests.image.fixtures import proxy_image_tar, runtime_image, runtime_image_tar  # noqa: F401
from tests.site.installkit import ready, runtime_status
from tests.site.releasekit import free_port_pair
from tests.stick.kit import make_vendor
from tests.stick.test_tui_install import mlp_bundle

pytest.importorskip("onnxruntime")
pytestmark = [pytest.mark.slow]


def uids(pid: int) -> list[int]:
    """Real, effective, saved and file-system uid of a process."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return [int(x) for x in line.split()[1:]]
    raise AssertionError(f"no Uid line for {pid}")


def mounts(pid: int) -> dict[str, str]:
    """Mount point -> options of the process's mount namespace."""
    out = {}
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        f = line.split()
        out[f[4]] = f[5]
    return out


def check_serves(url: str) -> None:
    from bundler.samples import mlp_reference
    from tests.e2e.kit import infer
    x = np.linspace(-1, 1, 64, dtype=np.float32).reshape(1, 64)
    np.testing.assert_allclose(infer(url, "mlp", x), mlp_reference(x), rtol=1e-4, atol=1e-5)


def install(tmp_path: Path, runtime_archive: Path, proxy_archive: Path | None = None):
    """Install the one-model bundle on the process engine from its image (with the front
    door from the proxy image, when given); yield the site, engine and runtime URL."""
    if os.geteuid() != 0:
        pytest.skip("the process engine confines services with chroot and mounts: needs root")
    v = make_vendor(tmp_path)
    bundle = mlp_bundle(tmp_path, v, f"proc{secrets.token_hex(3)}", free_port_pair(),
                        runtime_archive, proxy_archive)
    site = Site(tmp_path / "site")
    engine = ProcessEngine(site, unit_dir=tmp_path / "units", use_systemd=False,
                           proxy_from="image")
    assert engine.runtime_from == "image"
    try:
        result = InstallPlan(InstallOptions(
            bundle=bundle, site=site, engine=engine,
            gpu_probe=RecordedProbe(GpuReport(unavailable="no GPU in tests")),
            trust=v.root_path, health_timeout_s=120)).run()
        yield site, engine, result.endpoints["mlp"]
    finally:
        for rel in site.releases():
            engine.stop(rel.sequence)
        if proxy_archive is not None:
            engine.stop_proxy()


@pytest.fixture
def installed(tmp_path: Path, runtime_image_tar: Path):  # noqa: F811
    yield from install(tmp_path, runtime_image_tar)


def test_service_runs_confined_in_the_image_root_and_survives_kill(installed):
    site, engine, url = installed
    check_serves(url)
    child = site.release(1).path / "run" / "mlp.child"
    pid = int(child.read_text())
    assert all(u == 10001 for u in uids(pid))  # the image's USER, not root
    [root] = roots_dir(site.root).iterdir()
    assert os.path.samefile(f"/proc/{pid}/root", root)  # chrooted into the image root
    seen = Path(f"/proc/{pid}/root")
    for private in ("root", "home"):  # its /root and /home are the image's, not the host's
        assert not os.path.samefile(seen / private, f"/{private}")
        assert os.path.samefile(seen / private, root / private)
    m = mounts(pid)
    assert m["/"].startswith("ro") and m["/models"].startswith("ro")
    assert m["/var/lib/appliance-runtime"].startswith("rw") and "/tmp" in m and "/proc" in m
    assert sorted(os.listdir(seen / "dev")) == ["fd", "null", "random", "shm", "stderr",
                                                "stdin", "stdout", "urandom", "zero"]
    status = Path(f"/proc/{pid}/status").read_text()
    assert "NoNewPrivs:\t1" in status
    limits = next(x for x in Path(f"/proc/{pid}/limits").read_text().splitlines()
                  if x.startswith("Max open files")).split()
    # 65536, or as far as the hard limit goes where root lacks CAP_SYS_RESOURCE
    assert int(limits[3]) == min(65536, resource.getrlimit(resource.RLIMIT_NOFILE)[1])

    os.kill(pid, signal.SIGKILL)  # the runtime dies; its supervisor starts it again
    wait_for(lambda: child.exists() and int(child.read_text()) != pid, 30, "a restart")
    wait_for(lambda: ready(url), 120, "the restarted runtime to answer ready")
    check_serves(url)
    assert engine.alive(1, "mlp")


def test_unit_confines_the_service_like_the_launcher(installed, tmp_path):
    site, engine, _url = installed
    text = (tmp_path / "units" / engine.unit_name(1, "mlp")).read_text()
    [root] = roots_dir(site.root).iterdir()
    models = site.release(1).path / "models" / "mlp"
    for line in (f"RootDirectory={root}", f"BindReadOnlyPaths={models}:/models",
                 f"BindPaths={site.root}/runtime/mlp:/var/lib/appliance-runtime",
                 "User=10001", "Group=10001", "NoNewPrivileges=yes", "PrivateTmp=yes",
                 "PrivateDevices=yes", "LimitNOFILE=65536", "MountAPIVFS=yes",
                 "WorkingDirectory=/var/lib/appliance-runtime", "Restart=always"):
        assert line in text.splitlines(), line
    assert any(line.startswith("MemoryMax=") for line in text.splitlines())
    exec_start = next(x for x in text.splitlines() if x.startswith("ExecStart="))
    # the image's own interpreter, by its path inside the root; the runtime's port
    assert exec_start.startswith("ExecStart=/opt/runtime/bin/python -m runtime --models /models")
    assert sys.executable not in exec_start  # not the installer's interpreter


def test_a_gpu_service_unit_allows_only_the_nvidia_devices(tmp_path):
    view = ImageView(tmp_path, tmp_path / "m", "/models", tmp_path / "d", "/data", 10001, 10001,
                     "/", ["python", "-m", "runtime"], {"PATH": "/usr/bin"}, gpu=True)
    lines = unit_confinement(view, 2_000_000_000)
    assert "PrivateDevices=yes" not in lines and "DevicePolicy=closed" in lines
    assert "DeviceAllow=char-nvidia-frontend rw" in lines
    assert "PrivateDevices=yes" in unit_confinement(
        ImageView(**{**view.__dict__, "gpu": False}), 2_000_000_000)


def test_the_token_directory_reaches_unit_and_launcher_alike(tmp_path):
    from appliance.engines.confine import parse
    from appliance.engines.imageview import confine_args
    view = ImageView(tmp_path, tmp_path / "m", "/models", tmp_path / "d", "/data", 10001, 10001,
                     "/", ["python", "-m", "runtime"], {"PATH": "/usr/bin"},
                     tokens=str(tmp_path / "runtime-token"))
    lines = unit_confinement(view, 2_000_000_000)
    assert "TemporaryFileSystem=/run" in lines
    assert f"BindReadOnlyPaths={tmp_path}/runtime-token:/run/appliance-token" in lines
    assert parse(confine_args(view)).tokens == str(tmp_path / "runtime-token")
    bare = ImageView(**{**view.__dict__, "tokens": ""})
    assert "TemporaryFileSystem=/run" not in unit_confinement(bare, 2_000_000_000)
    assert parse(confine_args(bare)).tokens == ""


def test_a_weights_only_bundle_is_refused_at_load_naming_the_host_runtime(tmp_path):
    """The image mode needs a runtime image; a weights-only bundle says what to do instead."""
    from appliance.errors import ImageLoadError
    from tests.site.bundlekit import make_bundle, vendor

    v = vendor(tmp_path)
    site = Site(tmp_path / "site")
    engine = ProcessEngine(site, unit_dir=tmp_path / "units", use_systemd=False)
    plan = InstallPlan(InstallOptions(bundle=make_bundle(tmp_path, v, 1, port=free_port_pair()),
                                      site=site, engine=engine, trust=v.root_path,
                                      gpu_probe=RecordedProbe(GpuReport())))
    with pytest.raises(ImageLoadError) as err:
        plan.run()
    assert "no runtime image" in str(err.value) and "--runtime-from host" in str(err.value)
    assert "\n" not in str(err.value)
    assert not roots_dir(site.root).exists() or not any(roots_dir(site.root).iterdir())


def test_a_runtime_behind_the_front_door_reads_the_token_from_a_read_only_mount(
        tmp_path, runtime_image_tar, proxy_image_tar):  # noqa: F811
    for site, _engine, url in install(tmp_path, runtime_image_tar, proxy_image_tar):
        token = (site.root / "token").read_text().strip()
        # around the proxy, on loopback, the runtime itself asks for the token
        assert runtime_status(url) == 401
        assert runtime_status(url, "wrong") == 401
        assert runtime_status(url, token) == 200
        with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=10) as r:
            assert r.status == 200  # health needs none: the proxy's checks send none
        pid = int((site.release(1).path / "run" / "mlp.child").read_text())
        m = mounts(pid)
        assert m["/run/appliance-token"].startswith("ro"), m
        seen = Path(f"/proc/{pid}/root/run/appliance-token/tokens")
        assert seen.read_text() == f"{token}\n"
        host = site.root / "runtime-token" / "tokens"
        st = host.stat()
        assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (10001, 10001, 0o400)
        assert (host.parent.stat().st_mode & 0o777) == 0o700
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        assert b"RUNTIME_TOKEN_FILE=/run/appliance-token/tokens" in environ
        assert not any(token.encode() in e for e in environ)  # a file, never a value
