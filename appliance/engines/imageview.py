"""What a service sees when the process engine runs it from its image root.

One `ImageView` per service: the unpacked root, the model and data directories
bound into it, the user, the environment and the command (the image's
entrypoint and cmd with the runtime's arguments, as the container engines give
them). It becomes either the launcher's arguments (`appliance.engines.confine`)
or a systemd unit's confinement lines; both say the same thing.
"""

from __future__ import annotations

import json
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.bundle.store import ContentStore
from appliance.engines.gpulibs import DRIVER_DIR
from appliance.errors import ImageLoadError
from appliance.frontdoor.token import TOKEN_DIR_IN_RUNTIME

DEFAULT_MODEL_PATH = "/models"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
GPU_DEVICE_ALLOW = ("/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools",
                    "/dev/nvidia-modeset", "char-nvidia-frontend", "char-nvidia-uvm")


@dataclass(frozen=True)
class ImageView:
    """One service's confined view: root, binds, user, environment and command."""

    root: Path
    models: Path  # host directory, bound read-only at model_path
    model_path: str
    data: Path  # host directory, bound read-write at data_path
    data_path: str
    uid: int
    gid: int
    workdir: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    gpu: bool = False
    nofile: int = 65536
    driver: tuple[tuple[str, str], ...] = ()  # host driver files and their paths inside
    tokens: str = ""  # host runtime token directory, bound read-only at TOKEN_DIR_IN_RUNTIME


def image_config(store: ContentStore, config_digest: str) -> dict[str, Any]:
    """The `config` object (Cmd, Entrypoint, Env, User...) of a stored image config.

    Raises:
        ImageLoadError: the config blob is missing or not an image config.
    """
    try:
        doc = json.loads(store.path(config_digest).read_bytes())
    except (OSError, ValueError) as e:
        raise ImageLoadError(f"image config {config_digest[:19]} cannot be read from the "
                             f"content store: {e}; install the bundle again") from e
    cfg = doc.get("config") if isinstance(doc, dict) else None
    return cfg if isinstance(cfg, dict) else {}


def model_path(cmd: list[str]) -> str:
    """Where the image's runtime reads its models: its `--models` argument, else /models."""
    for i, arg in enumerate(cmd):
        if arg == "--models" and i + 1 < len(cmd):
            return cmd[i + 1]
        if arg.startswith("--models="):
            return arg.partition("=")[2]
    return DEFAULT_MODEL_PATH


def image_env(config: dict[str, Any]) -> dict[str, str]:
    """The image's `Env` as a mapping."""
    out = {}
    for item in config.get("Env") or []:
        key, _, value = str(item).partition("=")
        out[key] = value
    return out


def image_user(config: dict[str, Any], root: Path) -> tuple[int, int] | None:
    """The image's non-root `USER` as uid and gid (names looked up in the root's
    /etc/passwd and /etc/group), or None when the image runs as root or names none."""
    user, _, group = str(config.get("User") or "").partition(":")
    if not user:
        return None
    uid = int(user) if user.isdigit() else _lookup(root / "etc" / "passwd", user, 2)
    if uid is None or uid == 0:
        return None
    if group:
        gid = int(group) if group.isdigit() else _lookup(root / "etc" / "group", group, 2)
    else:
        gid = _gid_of(root / "etc" / "passwd", uid)
    return uid, uid if gid is None else gid


def _lookup(path: Path, name: str, field_index: int) -> int | None:
    for line in _lines(path):
        parts = line.split(":")
        if len(parts) > field_index and parts[0] == name and parts[field_index].isdigit():
            return int(parts[field_index])
    return None


def _gid_of(passwd: Path, uid: int) -> int | None:
    for line in _lines(passwd):
        parts = line.split(":")
        if len(parts) > 3 and parts[2] == str(uid) and parts[3].isdigit():
            return int(parts[3])
    return None


def _lines(path: Path) -> list[str]:
    try:
        if path.is_symlink():
            return []  # the root is the image's: never follow its links on the host
        return path.read_text(errors="replace").splitlines()
    except OSError:
        return []


def resolve_in_root(root: Path, name: str, path_env: str) -> str:
    """The absolute path inside `root` of the command `name`, searched along `path_env`
    (systemd wants an absolute ExecStart); `name` unchanged when not found."""
    if "/" in name:
        return name
    for d in (path_env or DEFAULT_PATH).split(":"):
        if d.startswith("/") and os.path.lexists(root / d.lstrip("/") / name):
            return f"{d.rstrip('/')}/{name}"
    return name


def confine_args(view: ImageView) -> list[str]:
    """The launcher's arguments for `view` (after its own program name)."""
    args = ["--root", str(view.root), "--ro", f"{view.models}:{view.model_path}",
            "--rw", f"{view.data}:{view.data_path}", "--user", f"{view.uid}:{view.gid}",
            "--nofile", str(view.nofile), "--workdir", view.workdir]
    if view.gpu:
        args.append("--gpu")
    args += driver_args(view)
    if view.tokens:
        args += ["--tokens", view.tokens]
    for key, value in sorted(view.env.items()):
        args += ["--env", f"{key}={value}"]
    return [*args, "--", *view.argv]


def unit_confinement(view: ImageView, memory_max: int) -> list[str]:
    """The `[Service]` lines that confine `view` under systemd as the launcher does."""
    argv = [resolve_in_root(view.root, view.argv[0], view.env.get("PATH", "")), *view.argv[1:]]
    lines = [
        f"ExecStart={shlex.join(argv)}",
        *(f'Environment="{k}={v}"' for k, v in sorted(view.env.items())),
        f"RootDirectory={view.root}",
        "MountAPIVFS=yes",
        f"BindReadOnlyPaths={view.models}:{view.model_path}",
        f"BindPaths={view.data}:{view.data_path}",
        f"WorkingDirectory={view.workdir}",
        # Confinement: the image's root read-only, an unprivileged user that cannot
        # gain privileges, bounded memory and files, only the devices it needs.
        f"User={view.uid}",
        f"Group={view.gid}",
        "NoNewPrivileges=yes",
        f"LimitNOFILE={view.nofile}",
        f"MemoryMax={memory_max}",
        "TasksMax=1024",
        "UMask=0027",
        "PrivateTmp=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        f"ReadWritePaths={view.data_path}",
    ]
    if view.gpu:
        lines += ["PrivateDevices=no", "DevicePolicy=closed",
                  *(f"DeviceAllow={d} rw" for d in GPU_DEVICE_ALLOW), *driver_unit_lines(view)]
    else:
        lines.append("PrivateDevices=yes")
    if view.tokens:
        lines += ["TemporaryFileSystem=/run", f"BindReadOnlyPaths={view.tokens}:"
                  f"{TOKEN_DIR_IN_RUNTIME}"]
    return lines


def driver_args(view: ImageView) -> list[str]:
    """The launcher's `--driver` arguments: the host driver's files, GPU services only."""
    return [a for src, dst in view.driver for a in ("--driver", f"{src}:{dst}")] \
        if view.gpu else []


def driver_unit_lines(view: ImageView) -> list[str]:
    """The unit's lines for the host driver's files: a read-only tmpfs at their
    directory (the shared root stays untouched) with each file bound into it; "-" so
    a file a later driver no longer has does not keep the service from starting."""
    if not (view.gpu and view.driver):
        return []
    return [f"TemporaryFileSystem={DRIVER_DIR}:ro",
            *(f"BindReadOnlyPaths=-{src}:{dst}" for src, dst in view.driver)]
