"""Preflight: pass/warn/fail lines before anything on the site changes.

Each check is a small function over things passed in (the unverified
manifest, the store, the engine, the GPU report, the clock), so the screens
and the headless installer show the same lines and tests need no real
hardware. A single `fail` stops the install before it touches the site.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import yaml

from appliance.bundle.manifest import Manifest
from appliance.bundle.store import ContentStore
from appliance.bundle.verify import DEFAULT_MAX_EXPIRED, expired_too_long
from appliance.errors import ApplianceError
from appliance.site.engine import Engine
from appliance.site.gpu import GpuReport
from appliance.units import human
from signing import SigningError, TrustRoot

Level = Literal["pass", "warn", "fail"]
# Room left over after the install, so logs and metrics history keep working.
DISK_MARGIN_BYTES = 512 * 1024 * 1024
# A clock this far behind the bundle's creation time is wrong, not merely skewed.
CLOCK_SKEW = timedelta(days=1)
EARLIEST_PLAUSIBLE = datetime(2024, 1, 1, tzinfo=UTC)
# The oldest Linux driver each CUDA major version runs on (CUDA's minor version
# compatibility: any 12.x runtime on a 525.60.13 or newer driver).
CUDA_MIN_DRIVER = {13: "580.65.06", 12: "525.60.13", 11: "450.80.02"}
CDI_KIND = "nvidia.com/gpu"
CDI_DIRS = (Path("/etc/cdi"), Path("/var/run/cdi"))
CDI_MAX_BYTES = 4 * 1024 * 1024
CDI_GENERATE = ("nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml "
                "--device-name-strategy=uuid")
# nvidia-ctk mounts the driver's libraries by their versioned names
DRIVER_LIB_RE = re.compile(r"lib(?:cuda|nvidia-ml)\.so\.(\d+\.\d+(?:\.\d+)?)")


@dataclass(frozen=True)
class Check:
    """One preflight line."""

    name: str
    level: Level
    message: str

    def line(self) -> str:
        return f"{self.level.upper():4}  {self.name}: {self.message}"


def check_trust(trust_path: Path, recorded_version: int = 0) -> tuple[Check, TrustRoot | None]:
    """The site's trust root (or the one given with --trust) is present, parses, and is not
    older than the version this site already accepted (`recorded_version`, state.json)."""
    try:
        root = TrustRoot.from_json(trust_path.read_bytes())
    except FileNotFoundError:
        return Check("trust root", "fail",
                     f"no trust root at {trust_path}; pass --trust root.json from the vendor "
                     "after comparing its fingerprint"), None
    except (OSError, SigningError) as e:
        return Check("trust root", "fail", f"{trust_path} is not a usable trust root: {e}"), None
    if root.version < recorded_version:
        # A retired root (its keys perhaps leaked) must not come back by deleting root.json.
        return Check("trust root", "fail",
                     f"{trust_path} is root version {root.version}, older than version "
                     f"{recorded_version} this site already accepted; use the vendor's current "
                     f"root (version {recorded_version} or later)"), None
    return Check("trust root", "pass",
                 f"version {root.version}, {root.threshold} of {len(root.keys)} key(s) must "
                 "sign"), root


def check_disk(manifest: Manifest, store: ContentStore, extract_bytes: int = 0) -> Check:
    """Free space for the blobs not yet in the store (plus model files to extract)."""
    need = sum(m.size for m in manifest.members
               if m.path.startswith("blobs/sha256/")
               and not store.has("sha256:" + m.path.rsplit("/", 1)[1]))
    need += extract_bytes
    probe = store.root
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    text = f"{human(need)} needed (blobs not yet stored), {human(free)} free on {probe}"
    if need + DISK_MARGIN_BYTES > free:
        return Check("disk", "fail", f"{text}; free {human(need + DISK_MARGIN_BYTES - free)} "
                                     "more (e.g. remove old releases) and run again")
    if need * 2 + DISK_MARGIN_BYTES > free:
        return Check("disk", "warn", f"{text}; little room is left for the next update")
    return Check("disk", "pass", text)


def check_engine(engine: Engine) -> Check:
    """The container engine (or process supervisor) answers."""
    try:
        return Check("engine", "pass", engine.ping())
    except ApplianceError as e:
        return Check("engine", "fail", str(e))


def check_front_door(engine: Engine, manifest: Manifest) -> Check:
    """An engine that runs the front door's proxy itself (the process engine) can run it
    for `manifest` (from the bundle's proxy image, or the host's package when asked)."""
    if manifest.frontdoor_image() is None:
        return Check("front door", "pass", "not used (the bundle carries no proxy image)")
    probe = getattr(engine, "proxy_preflight", None)
    if probe is None:
        return Check("front door", "pass", f"the proxy runs from the bundle's image on "
                                           f"{engine.name}")
    try:
        return Check("front door", "pass", str(probe(manifest)))
    except ApplianceError as e:
        return Check("front door", "fail", str(e))


def check_gpus(report: GpuReport, manifest: Manifest) -> Check:
    """NVML and driver: GPUs found, or why not and what that means for placement."""
    wants = [s for s in manifest.services if s.gpu != "none"]
    required = [s.name for s in manifest.services if s.gpu == "required"]
    if report.gpus:
        names = ", ".join(sorted({g.name for g in report.gpus}))
        return Check("gpu", "pass", f"{len(report.gpus)} GPU(s) ({names}), driver "
                                    f"{report.driver}, CUDA {report.cuda}")
    why = report.unavailable or "NVML found no GPU"
    if required:
        return Check("gpu", "fail", f"services {required} require a GPU but {why}; install "
                                    "the NVIDIA driver and run again")
    if wants:
        return Check("gpu", "warn", f"{why}; services will run on the CPU")
    return Check("gpu", "pass", f"no GPU wanted ({why})")


def check_gpu_runtime(engine: Engine, report: GpuReport, manifest: Manifest,
                      uses_cdi: bool = False) -> Check:
    """The NVIDIA container runtime is present when GPUs are wanted and found."""
    wants = [s for s in manifest.services if s.gpu != "none"]
    if not wants or not report.gpus:
        return Check("nvidia runtime", "pass", "not needed (no GPU in use)")
    if uses_cdi:  # no hook or runtime to find: the CDI spec is all (its own line says)
        return Check("nvidia runtime", "pass", f"{engine.name} takes GPUs as CDI devices")
    if engine.gpu_runtime():
        return Check("nvidia runtime", "pass", f"{engine.name} can hand GPUs to services")
    required = [s.name for s in wants if s.gpu == "required"]
    if required:
        return Check("nvidia runtime", "fail",
                     f"services {required} require a GPU but {engine.name} has no NVIDIA "
                     "container runtime; install nvidia-container-toolkit and restart the engine")
    return Check("nvidia runtime", "warn",
                 f"{engine.name} has no NVIDIA container runtime; services will run on the CPU "
                 "(install nvidia-container-toolkit to use the GPUs)")


def check_driver_for_cuda(report: GpuReport, manifest: Manifest) -> Check:
    """The NVIDIA driver is new enough for the CUDA of every GPU service's image."""
    if not report.gpus:
        return Check("driver", "pass", "no GPU in use")
    gpu_images = {s.image for s in manifest.services if s.gpu != "none"}
    cudas = sorted({i.cuda for i in manifest.images if i.name in gpu_images and i.cuda},
                   key=_version)
    if not cudas:
        return Check("driver", "pass", f"driver {report.driver}; no service image uses CUDA")
    need = max(cudas, key=lambda c: _version(_min_driver(c)))
    least = _min_driver(need)
    if _version(report.driver) < _version(least):
        return Check("driver", "fail",
                     f"the runtime image needs CUDA {need}, which needs NVIDIA driver {least} "
                     f"or newer; this server has driver {report.driver or 'unknown'}: upgrade "
                     "the driver, reboot, and run again")
    return Check("driver", "pass", f"driver {report.driver} runs CUDA {need} (needs {least})")


def check_driver_libraries(report: GpuReport, manifest: Manifest,
                           missing: Callable[[], list[str]] | None) -> Check:
    """The host has the NVIDIA driver's user-space libraries that an engine binding them
    into each GPU service (`missing` lists those it lacks; None: the engine needs none)."""
    wants = [s for s in manifest.services if s.gpu != "none"]
    if missing is None or not wants or not report.gpus:
        return Check("driver libraries", "pass", "not needed (no GPU service binds them)")
    names = missing()
    if not names:
        return Check("driver libraries", "pass", "the NVIDIA driver's libraries are on the host")
    required = any(s.gpu == "required" for s in wants)
    # Debian names each package after its soname without ".so." (libcuda.so.1: libcuda1)
    pkgs = " ".join(n.replace(".so.", "") for n in names)
    then = "" if required else "; until then the GPU services run on the CPU"
    return Check("driver libraries", "fail" if required else "warn",
                 f"the NVIDIA driver's {', '.join(names)} not found on this host (ldconfig -p), "
                 "so CUDA cannot start in the services' image roots; install the driver's "
                 f"user-space libraries (Debian: apt-get install {pkgs}; or the driver's own "
                 f"installer), run ldconfig, and run again{then}")


def check_cdi(report: GpuReport, manifest: Manifest, uses_cdi: bool,
              dirs: Iterable[Path] = CDI_DIRS) -> Check:
    """An engine that takes GPUs by CDI has a spec naming every GPU, made for this driver."""
    wants = [s for s in manifest.services if s.gpu != "none"]
    if not uses_cdi or not wants or not report.gpus:
        return Check("cdi", "pass", "not needed (no GPU handed over by CDI)")
    level: Level = "fail" if any(s.gpu == "required" for s in wants) else "warn"
    specs = cdi_specs(dirs)
    where = " or ".join(str(d) for d in dirs)
    if not specs:
        return Check("cdi", level, f"no CDI spec for {CDI_KIND} under {where}, so no GPU can "
                                   f"reach a container; run {CDI_GENERATE}")
    names = {str(d.get("name")) for _, doc in specs for d in doc.get("devices") or []
             if isinstance(d, dict)}
    missing = [g.uuid for g in report.gpus if g.uuid and g.uuid not in names]
    files = ", ".join(str(p) for p, _ in specs)
    if missing:
        return Check("cdi", level, f"the CDI spec ({files}) names no device {missing[0]}: it "
                                   f"is stale or not by UUID; run {CDI_GENERATE}")
    made_for = sorted({v for p, _ in specs for v in DRIVER_LIB_RE.findall(_text(p))})
    if report.driver and made_for and report.driver not in made_for:
        return Check("cdi", level, f"the CDI spec ({files}) was made for driver "
                                   f"{', '.join(made_for)} but driver {report.driver} is "
                                   f"loaded (stale after a driver upgrade); run {CDI_GENERATE}")
    return Check("cdi", "pass", f"{files} names every GPU, driver {report.driver or '?'}")


def cdi_specs(dirs: Iterable[Path]) -> list[tuple[Path, dict[str, Any]]]:
    """The parsed CDI specs of kind nvidia.com/gpu (unreadable files are not specs)."""
    out = []
    for d in dirs:
        try:
            files = sorted(p for p in d.iterdir() if p.suffix in (".yaml", ".yml", ".json"))
        except OSError:
            continue
        for p in files:
            try:
                if p.stat().st_size > CDI_MAX_BYTES:
                    continue
                doc = yaml.safe_load(p.read_bytes())
            except (OSError, yaml.YAMLError):
                continue
            if isinstance(doc, dict) and doc.get("kind") == CDI_KIND:
                out.append((p, doc))
    return out


def _text(p: Path) -> str:
    try:
        return p.read_text(errors="replace")
    except OSError:
        return ""


def _min_driver(cuda: str) -> str:
    return CUDA_MIN_DRIVER.get(_version(cuda)[0], CUDA_MIN_DRIVER[max(CUDA_MIN_DRIVER)])


def _version(text: str) -> tuple[int, ...]:
    """"535.161.08" -> (535, 161, 8); anything unreadable sorts first."""
    try:
        return tuple(int(x) for x in text.split("."))
    except ValueError:
        return (0,)


def check_clock(manifest: Manifest, now: datetime, allow_expired: bool,
                max_expired: timedelta = DEFAULT_MAX_EXPIRED) -> Check:
    """The site clock is plausible: not before 2024, not before the bundle was made."""
    if now < EARLIEST_PLAUSIBLE:
        return Check("clock", "fail", f"the site clock says {now:%Y-%m-%d %H:%M}; set the "
                                      "correct time (date -s, or timedatectl) and run again")
    if now + CLOCK_SKEW < manifest.created_at:
        return Check("clock", "fail",
                     f"the site clock ({now:%Y-%m-%d %H:%M}) is before the bundle was made "
                     f"({manifest.created}); set the correct time and run again")
    if now > manifest.expires_at:
        if allow_expired and now - manifest.expires_at > max_expired:
            return Check("clock", "fail", expired_too_long(manifest, now, max_expired))
        if allow_expired:
            return Check("clock", "warn", f"the bundle expired {manifest.expires}; installing "
                                          "anyway as --allow-expired asks (logged)")
        return Check("clock", "fail",
                     f"the bundle expired {manifest.expires} by the site clock "
                     f"({now:%Y-%m-%d %H:%M}); if the clock is wrong set it, else pass "
                     "--allow-expired (logged)")
    return Check("clock", "pass", f"{now:%Y-%m-%d %H:%M %Z}, bundle valid until "
                                  f"{manifest.expires}")


def check_site_paths(paths: list[Path]) -> Check:
    """Each site directory that exists is a real directory owned by us, not a link.

    A link planted at, say, `blobs/tmp` would make the installer clean or write files
    wherever it points; so nothing under a path that fails here is touched.
    """
    uid = os.geteuid()
    for p in paths:
        try:
            st = os.lstat(p)
        except FileNotFoundError:
            continue
        except OSError as e:
            return Check("site", "fail", f"cannot inspect {p}: {e.strerror}; run as root")
        if stat.S_ISLNK(st.st_mode):
            return Check("site", "fail", f"{p} is a symbolic link to {os.readlink(p)!r}, not a "
                                         "directory; remove the link (nothing was changed) and "
                                         "run again")
        if not stat.S_ISDIR(st.st_mode):
            return Check("site", "fail", f"{p} is not a directory; move it away and run again")
        if st.st_uid != uid:
            return Check("site", "fail", f"{p} is owned by uid {st.st_uid}, not by this "
                                         f"installer (uid {uid}); check who made it, fix its "
                                         "owner and run again")
    return Check("site", "pass", "site directories are real directories owned by us")


def run_checks(checks: list[Callable[[], Check]]) -> list[Check]:
    """Run every check (one failing does not hide the others)."""
    return [c() for c in checks]
