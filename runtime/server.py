"""Start the runtime: settings -> logs -> models -> uvicorn."""

from __future__ import annotations

import importlib.util
import logging
import resource
import sys
from pathlib import Path
from types import FrameType

from modelcontract import ModelContractError, discover
from runtime.app import V2App
from runtime.errors import ModelLoadError, SettingsError
from runtime.gpu import GpuSource, NvmlSource
from runtime.history import MetricsHistory
from runtime.logs import JsonLinesLog, configure, load_id_key
from runtime.offline import go_offline
from runtime.settings import Settings
from runtime.state import ModelRegistry

log = logging.getLogger("runtime.server")


def _data_dirs(settings: Settings) -> tuple[Path, Path]:
    logs, history = settings.data_dir / "logs", settings.data_dir / "history"
    try:
        logs.mkdir(parents=True, exist_ok=True)
        history.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SettingsError(f"cannot create data directory {settings.data_dir}: {e.strerror}; "
                            "pass --data-dir to a writable place") from e
    return logs, history


def _server_class() -> type:
    import uvicorn

    class RuntimeServer(uvicorn.Server):
        """uvicorn's server, but a SIGTERM/SIGINT ends in a clean exit 0 (for supervisors)."""

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            super().handle_exit(sig, frame)
            self._captured_signals.clear()  # do not re-raise the signal after shutdown

    return RuntimeServer


def raise_open_files_limit() -> None:
    """Raise the soft RLIMIT_NOFILE to the hard limit: each connection holds a descriptor."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as e:
            log.warning("cannot raise the open files limit from %d to %d: %s", soft, hard, e)


def _protocol(settings: Settings) -> type | str:
    if importlib.util.find_spec("httptools") is None:
        # h11 bounds the headers (h11_max_incomplete_event_size); no header timeouts.
        return "h11"
    from runtime.http import guarded_protocol

    return guarded_protocol(settings.header_timeout_s, settings.idle_timeout_s,
                            settings.max_header_bytes, settings.max_header_count)


def serve(settings: Settings, gpu: GpuSource | None = None) -> int:
    """Serve until stopped; the exit code is non-zero when a model failed to load.

    Raises:
        SettingsError: the data directory is unusable.
        ModelLoadError: the models directory or a model.json is bad.
    """
    import uvicorn

    # The model workers need the GIL right after they are woken; with the default 5 ms
    # switch interval a busy event loop holds it that long, and requests queue for it
    # (measured: 5 ms mean queue time for a model busy 20% of the time).
    sys.setswitchinterval(settings.switch_interval_ms / 1000)
    go_offline(settings.data_dir)
    logs_dir, history_dir = _data_dirs(settings)
    sink = JsonLinesLog(logs_dir, settings.log_max_bytes, settings.log_backups,
                        load_id_key(settings.data_dir))
    configure(sink)
    try:
        specs = discover(settings.models)
    except ModelContractError as e:
        raise ModelLoadError(str(e)) from e
    history = MetricsHistory(history_dir, settings.history_max_bytes,
                             settings.history_days * 86400)
    fatal: list[str] = []
    server: uvicorn.Server | None = None

    def on_fatal(message: str) -> None:
        fatal.append(message)
        if server is not None:
            server.should_exit = True

    registry = ModelRegistry(settings, specs, gpu=gpu or NvmlSource(), log_sink=sink,
                             history=history, on_fatal=on_fatal)
    raise_open_files_limit()
    config = uvicorn.Config(
        V2App(registry), host=settings.host, port=settings.port,
        loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        http=_protocol(settings), ws="none",
        h11_max_incomplete_event_size=settings.max_header_bytes,
        lifespan="on", access_log=False, log_config=None, server_header=False,
        date_header=False, backlog=2048,
        timeout_keep_alive=settings.keep_alive_timeout_s,  # type: ignore[arg-type]
    )
    server = _server_class()(config)
    log.info("starting: %d model(s) from %s, data in %s", len(specs), settings.models,
             settings.data_dir)
    try:
        server.run()
    finally:
        sink.close()
    if fatal:
        return 1
    return 0
