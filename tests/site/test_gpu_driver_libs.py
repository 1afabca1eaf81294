"""The host GPU driver's libraries in a confined GPU service's image root.

No GPU here: a fake "driver" (small files named like the driver's libraries, and an
`nvidia-smi`, in a temp dir) is found through the one lookup seam, `ldconfig -p`
text as the host prints it. The process engine (image mode, its own supervisor)
starts a real confined service on a recorded four-L4 placement; what the service
sees is read from /proc/PID/root and /proc/PID/environ, its unit from the file.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from appliance.engines.gpulibs import (
    DRIVER_DIR,
    DRIVER_LIB_DIR,
    REQUIRED_LIBRARIES,
    DriverFiles,
    driver_from,
    parse_ldconfig,
)
from appliance.engines.process import ProcessEngine
from appliance.site.gpu import GpuReport, RecordedProbe
from appliance.site.layout import Site
from appliance.site.placement import plan_placement
from appliance.site.preflight import check_driver_libraries
from tests.enginekit import wait_for
from tests.site.factory import manifest
from tests.site.releasekit import free_port_pair, release_manifest

STATES = Path(__file__).parent / "gpu_states"
DRIVER_VERSION = "550.54.15"


def state(name: str) -> GpuReport:
    return RecordedProbe.from_file(STATES / f"{name}.json").probe()


def fake_driver(tmp_path: Path, skip: tuple[str, ...] = ()) -> tuple[Path, str]:
    """A driver directory as the .run installer leaves it (versioned files, soname
    links) and the `ldconfig -p` text that lists it; returns (bin dir, ldconfig text)."""
    lib = tmp_path / "driver" / "lib"
    bin_dir = tmp_path / "driver" / "bin"
    lib.mkdir(parents=True)
    bin_dir.mkdir()
    lines = [f"{len(REQUIRED_LIBRARIES) + 2} libs found in cache `/etc/ld.so.cache'"]
    for soname in (*REQUIRED_LIBRARIES, "libnvidia-cfg.so.1"):
        if soname in skip:
            continue
        real = lib / f"{soname.rsplit('.', 1)[0]}.{DRIVER_VERSION}"
        real.write_bytes(f"fake {soname} of driver {DRIVER_VERSION}\n".encode())
        (lib / soname).symlink_to(real.name)
        lines.append(f"\t{soname} (libc6,x86-64) => {lib / soname}")
    # a 32-bit copy and an unrelated library: neither is bound
    lines.append(f"\tlibcuda.so.1 (libc6) => {lib / 'i386-libcuda.so.1'}")
    lines.append("\tlibz.so.1 (libc6,x86-64) => /lib/x86_64-linux-gnu/libz.so.1")
    smi = bin_dir / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho fake nvidia-smi\n")
    smi.chmod(0o755)
    return bin_dir, "\n".join(lines) + "\n"


def lookup(tmp_path: Path, skip: tuple[str, ...] = ()) -> DriverFiles:
    bin_dir, ldconfig = fake_driver(tmp_path, skip)
    return driver_from(ldconfig, path_env=str(bin_dir))


def test_ldconfig_output_gives_the_64_bit_driver_libraries_by_soname(tmp_path):
    bin_dir, text = fake_driver(tmp_path)
    libs = parse_ldconfig(text)
    assert sorted(libs) == sorted([*REQUIRED_LIBRARIES, "libnvidia-cfg.so.1"])
    assert libs["libcuda.so.1"] == tmp_path / "driver" / "lib" / "libcuda.so.1"
    files = driver_from(text, path_env=str(bin_dir))
    assert files.missing() == []
    binds = dict((dst, src) for src, dst in files.binds())
    # the soname link, not the versioned file behind it: after a driver upgrade the
    # same unit binds the new driver's file
    assert binds[f"{DRIVER_LIB_DIR}/libcuda.so.1"] == str(tmp_path / "driver/lib/libcuda.so.1")
    assert binds[f"{DRIVER_DIR}/bin/nvidia-smi"] == str(bin_dir / "nvidia-smi")
    assert driver_from(text.replace("libnvidia-ml.so.1 (", "x ("), path_env=str(bin_dir)) \
        .missing() == ["libnvidia-ml.so.1"]


def test_the_toolkit_list_names_versioned_files_found_under_their_sonames(tmp_path):
    _bin, _text = fake_driver(tmp_path)
    lib = tmp_path / "driver" / "lib"
    listed = [str(lib / f"libcuda.so.{DRIVER_VERSION}"),
              str(lib / f"libnvidia-ml.so.{DRIVER_VERSION}")]
    files = driver_from("", listed, path_env=str(tmp_path / "nowhere"))
    assert files.libraries["libcuda.so.1"] == lib / "libcuda.so.1"  # the link beside it
    assert files.libraries[f"libcuda.so.{DRIVER_VERSION}"] == lib / f"libcuda.so.{DRIVER_VERSION}"
    assert files.missing() == ["libnvidia-ptxjitcompiler.so.1", "libnvidia-nvvm.so.4"]


@pytest.fixture
def engine_for(tmp_path):
    """Install-less: a release staged, loaded and started by the image-mode process engine."""
    if os.geteuid() != 0:
        pytest.skip("the process engine confines services with chroot and mounts: needs root")
    started: list[ProcessEngine] = []

    def start(gpu: str, driver: DriverFiles) -> tuple[Site, ProcessEngine, int]:
        site = Site(tmp_path / f"site-{gpu}")
        site.ensure()
        m = release_manifest(site.store, 1, free_port_pair(), gpu=gpu)
        rel = site.stage_release(m.to_json(), b"{}", 1, "process")
        eng = ProcessEngine(site, unit_dir=tmp_path / f"units-{gpu}", use_systemd=False,
                            runtime_from="image", driver=lambda: driver)
        eng.load(m, rel, site.store)
        started.append(eng)
        eng.start(m, rel, plan_placement(m, state("four_l4")), slot=0)
        child = rel.path / "run" / "mlp.child"

        def serving() -> int:
            pid = int(child.read_text())
            return pid if b"healthd" in Path(f"/proc/{pid}/cmdline").read_bytes() else 0
        return site, eng, wait_for(serving, 30, "the confined service to start")

    yield start
    for eng in started:
        eng.stop(1)


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(x.decode().partition("=")[::2] for x in raw if x)


def mount_options(pid: int) -> dict[str, str]:
    out = {}
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        f = line.split()
        out[f[4]] = f[5]
    return out


def test_a_gpu_service_gets_the_driver_read_only_in_its_root(tmp_path, engine_for):
    driver = lookup(tmp_path)
    site, eng, pid = engine_for("required", driver)
    seen = Path(f"/proc/{pid}/root")
    for soname in REQUIRED_LIBRARIES:
        assert (seen / DRIVER_LIB_DIR.lstrip("/") / soname).read_bytes() == \
            f"fake {soname} of driver {DRIVER_VERSION}\n".encode()
    assert (seen / "usr/local/nvidia/bin/nvidia-smi").read_text().startswith("#!/bin/sh")
    assert not (seen / DRIVER_LIB_DIR.lstrip("/") / "libz.so.1").exists()
    m = mount_options(pid)
    assert m[DRIVER_DIR].startswith("ro")  # nothing can be added beside them
    assert m[f"{DRIVER_LIB_DIR}/libcuda.so.1"].startswith("ro")
    env = environ(pid)
    assert env["LD_LIBRARY_PATH"].split(":")[0] == DRIVER_LIB_DIR
    assert f"{DRIVER_DIR}/bin" in env["PATH"].split(":")
    # the shared image root on the host holds only the empty mount point
    [root] = (site.root / "rootfs").iterdir()
    assert list((root / DRIVER_DIR.lstrip("/")).iterdir()) == []

    unit = (tmp_path / "units-required" / eng.unit_name(1, "mlp")).read_text().splitlines()
    link = tmp_path / "driver" / "lib" / "libcuda.so.1"
    assert f"TemporaryFileSystem={DRIVER_DIR}:ro" in unit
    assert f"BindReadOnlyPaths=-{link}:{DRIVER_LIB_DIR}/libcuda.so.1" in unit
    assert any(x.startswith(f'Environment="LD_LIBRARY_PATH={DRIVER_LIB_DIR}') for x in unit)


def test_a_restart_after_a_driver_upgrade_binds_the_new_drivers_files(tmp_path, engine_for):
    site, _eng, pid = engine_for("required", lookup(tmp_path))
    lib = tmp_path / "driver" / "lib"
    new = lib / "libcuda.so.560.35.03"  # the upgrade: a new file behind the same soname
    new.write_bytes(b"fake libcuda.so.1 of driver 560.35.03\n")
    (lib / "libcuda.so.1").unlink()
    (lib / "libcuda.so.1").symlink_to(new.name)
    for gone in lib.glob("libnvidia-cfg.so*"):  # and a library the new driver dropped
        gone.unlink()
    os.kill(pid, signal.SIGKILL)  # its supervisor starts it again with the same arguments
    child = site.release(1).path / "run" / "mlp.child"

    def restarted() -> int:
        new_pid = int(child.read_text())
        ok = new_pid != pid and b"healthd" in Path(f"/proc/{new_pid}/cmdline").read_bytes()
        return new_pid if ok else 0
    seen = Path(f"/proc/{wait_for(restarted, 30, 'the restart')}/root")
    assert (seen / DRIVER_LIB_DIR.lstrip("/") / "libcuda.so.1").read_bytes() == \
        b"fake libcuda.so.1 of driver 560.35.03\n"
    assert not (seen / DRIVER_LIB_DIR.lstrip("/") / "libnvidia-cfg.so.1").exists()


def test_a_cpu_service_gets_no_driver(tmp_path, engine_for):
    _site, eng, pid = engine_for("none", lookup(tmp_path))
    assert not any(Path(f"/proc/{pid}/root/usr/local/nvidia").glob("*/*"))
    assert DRIVER_LIB_DIR not in environ(pid).get("LD_LIBRARY_PATH", "")
    unit = (tmp_path / "units-none" / eng.unit_name(1, "mlp")).read_text()
    assert "TemporaryFileSystem" not in unit and "/usr/local/nvidia" not in unit


def test_preflight_names_the_missing_driver_library_and_what_to_install(tmp_path):
    site = Site(tmp_path / "site")
    driver = lookup(tmp_path, skip=("libcuda.so.1",))
    eng = ProcessEngine(site, unit_dir=tmp_path / "units", use_systemd=False,
                        runtime_from="image", driver=lambda: driver)
    required = manifest([("mlp", [("mlp", 1000)], "required")])
    c = check_driver_libraries(state("four_l4"), required, eng.missing_driver_libraries)
    assert c.level == "fail" and "\n" not in c.message
    assert "libcuda.so.1" in c.message and "apt-get install libcuda1" in c.message
    preferred = manifest([("mlp", [("mlp", 1000)], "preferred")])
    c = check_driver_libraries(state("four_l4"), preferred, eng.missing_driver_libraries)
    assert c.level == "warn" and "run on the CPU" in c.message
    # no GPU on the host, no GPU service, or an engine whose containers get the driver
    # from the toolkit: nothing to say
    assert check_driver_libraries(state("none"), required,
                                  eng.missing_driver_libraries).level == "pass"
    cpu = manifest([("mlp", [("mlp", 0)], "none")])
    assert check_driver_libraries(state("four_l4"), cpu, eng.missing_driver_libraries) \
        .level == "pass"
    assert check_driver_libraries(state("four_l4"), required, None).level == "pass"
    whole = ProcessEngine(site, unit_dir=tmp_path / "units", use_systemd=False,
                          runtime_from="image", driver=lambda: lookup(tmp_path / "full"))
    assert check_driver_libraries(state("four_l4"), required,
                                  whole.missing_driver_libraries).level == "pass"


def test_an_install_on_a_gpu_host_without_the_driver_libraries_is_refused(tmp_path):
    """The install plan asks the engine, and stops before the site changes."""
    from appliance.errors import PreflightError
    from appliance.site.plan import InstallOptions, InstallPlan
    from tests.site.bundlekit import make_bundle, vendor

    v = vendor(tmp_path)
    site = Site(tmp_path / "site")
    driver = lookup(tmp_path, skip=("libnvidia-ml.so.1",))
    engine = ProcessEngine(site, unit_dir=tmp_path / "units", use_systemd=False,
                           runtime_from="image", driver=lambda: driver)
    plan = InstallPlan(InstallOptions(
        bundle=make_bundle(tmp_path, v, 1, gpu="required", port=free_port_pair()), site=site,
        engine=engine, trust=v.root_path, gpu_probe=RecordedProbe(state("four_l4"))))
    with pytest.raises(PreflightError, match=r"driver libraries: .*libnvidia-ml\.so\.1 not found"
                                             r".*apt-get install libnvidia-ml1"):
        plan.run()
    assert not site.releases()
