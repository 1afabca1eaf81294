"""The runtime's settings: one typed object read from environment variables, then flags."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Literal

from runtime.auth import read_tokens
from runtime.errors import SettingsError

ENV_PREFIX = "RUNTIME_"
DeviceChoice = Literal["auto", "cpu"]
GPU_POLICIES = ("required", "preferred", "none")  # as a bundle's services declare them


def _default_threads() -> int:
    # Half the cores: the other half serves HTTP. On a 2-core box that is 1.
    return max(1, (os.cpu_count() or 2) // 2)


@dataclass(frozen=True)
class Settings:
    """Everything the server can be told; limits carry their unit in the name."""

    models: Path = Path("/models")
    host: str = "127.0.0.1"
    port: int = 8000
    data_dir: Path = Path("/var/lib/appliance/runtime")
    token: str | None = None
    token_file: Path | None = None  # one token a line, re-read when it changes
    device: str = "auto"  # auto | cpu | cuda:N
    # The service's GPU policy from the bundle: `required` refuses to become ready on the
    # CPU (with the reason), `preferred` falls back to it, `none` never asks for a GPU.
    gpu_policy: str = "preferred"
    max_body_bytes: int = 64 * 1024 * 1024
    # Request bodies held at once, all connections together; past it new requests get 503.
    inflight_max_bytes: int = 256 * 1024 * 1024
    header_timeout_s: float = 10.0  # from a connection's first byte to its headers' end
    idle_timeout_s: float = 30.0  # no byte while a request is incomplete, or before the first
    keep_alive_timeout_s: float = 5.0  # between requests on one connection
    max_header_bytes: int = 32 * 1024  # request line and headers together
    max_header_count: int = 100
    max_queue: int = 1024  # per model; more waiting requests get 503
    ort_threads: int = 0  # 0: half the cores
    log_max_bytes: int = 10 * 1024 * 1024
    log_backups: int = 5
    history_interval_s: float = 10.0
    history_max_bytes: int = 50 * 1024 * 1024
    history_days: float = 14.0
    request_log: bool = True
    switch_interval_ms: float = 0.5  # how long one thread may hold the GIL

    @property
    def threads(self) -> int:
        """Intra-op threads per model session."""
        return self.ort_threads if self.ort_threads > 0 else _default_threads()

    def validate(self) -> Settings:
        """Return self, or raise on values no server could run with.

        Raises:
            SettingsError: a port out of range, a non-positive limit, a bad device.
        """
        if not 0 <= self.port <= 65535:
            raise SettingsError(f"port {self.port} is out of range; use 0-65535")
        for name in ("max_body_bytes", "max_queue", "log_max_bytes", "history_max_bytes",
                     "inflight_max_bytes", "header_timeout_s", "idle_timeout_s",
                     "keep_alive_timeout_s", "max_header_bytes", "max_header_count"):
            if getattr(self, name) <= 0:
                raise SettingsError(f"{name} must be positive, got {getattr(self, name)}")
        if self.inflight_max_bytes < self.max_body_bytes:
            raise SettingsError(
                f"inflight_max_bytes ({self.inflight_max_bytes}) must be at least "
                f"max_body_bytes ({self.max_body_bytes}): one largest request must fit")
        if not 0 < self.switch_interval_ms <= 100:
            raise SettingsError("switch_interval_ms must be in (0, 100]")
        if self.history_interval_s <= 0 or self.history_days <= 0:
            raise SettingsError("history_interval_s and history_days must be positive")
        if self.device not in ("auto", "cpu") and not self.device.startswith("cuda:"):
            raise SettingsError(f"device {self.device!r} is not auto, cpu or cuda:N")
        if self.gpu_policy not in GPU_POLICIES:
            raise SettingsError(f"gpu_policy {self.gpu_policy!r} is not one of "
                                f"{', '.join(GPU_POLICIES)}")
        return self


def _convert(name: str, kind: type, raw: str) -> object:
    try:
        if kind is bool:
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        return kind(raw)
    except ValueError as e:
        raise SettingsError(
            f"{ENV_PREFIX}{name.upper()}={raw!r} is not a valid {kind.__name__}") from e


_KINDS: dict[str, type] = {
    "models": Path, "host": str, "port": int, "data_dir": Path, "token": str,
    "token_file": Path, "device": str, "gpu_policy": str,
    "max_body_bytes": int, "max_queue": int, "ort_threads": int, "log_max_bytes": int,
    "log_backups": int, "history_interval_s": float, "history_max_bytes": int,
    "history_days": float, "request_log": bool, "switch_interval_ms": float,
    "inflight_max_bytes": int, "header_timeout_s": float, "idle_timeout_s": float,
    "keep_alive_timeout_s": float, "max_header_bytes": int, "max_header_count": int,
}


def from_env(env: Mapping[str, str], base: Settings | None = None) -> Settings:
    """Settings from `RUNTIME_*` variables (and `RUNTIME_TOKEN_FILE`) over `base`.

    Raises:
        SettingsError: a variable does not parse or the token file cannot be read.
    """
    values: dict[str, object] = {}
    for f in fields(Settings):
        raw = env.get(ENV_PREFIX + f.name.upper())
        if raw is not None:
            values[f.name] = _convert(f.name, _KINDS[f.name], raw)
    if values.get("token_file") is not None:
        read_tokens(values["token_file"])  # type: ignore[arg-type]  # fail at start, not later
    return replace(base or Settings(), **values)  # type: ignore[arg-type]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags shared by `python -m runtime` and `appliance serve`."""
    parser.add_argument("--models", type=Path, help="directory of <name>/<version>/model.json")
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="TCP port (default 8000)")
    parser.add_argument("--data-dir", type=Path, help="logs and metrics history")
    parser.add_argument("--device", help="auto (NVML picks), cpu, or cuda:N")
    parser.add_argument("--gpu-policy", choices=GPU_POLICIES,
                        help="required: not ready unless every model runs on a GPU; "
                             "preferred (default): CPU fallback; none: CPU only")
    parser.add_argument("--token-file", type=Path,
                        help="bearer tokens, one a line, re-read when the file changes")
    parser.add_argument("--ort-threads", type=int, help="intra-op threads per model")
    parser.add_argument("--max-body-bytes", type=int, help="largest request body accepted")


def from_args(
    argv: Sequence[str] | argparse.Namespace, env: Mapping[str, str] | None = None
) -> Settings:
    """Settings from the environment, then flags (flags win).

    Raises:
        SettingsError: a bad value in either place.
    """
    if isinstance(argv, argparse.Namespace):
        args = argv
    else:
        parser = argparse.ArgumentParser(prog="python -m runtime")
        add_arguments(parser)
        args = parser.parse_args(list(argv))
    settings = from_env(os.environ if env is None else env)
    values: dict[str, object] = {}
    for name in ("models", "host", "port", "data_dir", "device", "gpu_policy", "ort_threads",
                 "max_body_bytes"):
        value = getattr(args, name, None)
        if value is not None:
            values[name] = value
    if getattr(args, "token_file", None) is not None:
        read_tokens(args.token_file)
        values["token_file"] = args.token_file
    return replace(settings, **values).validate()  # type: ignore[arg-type]
