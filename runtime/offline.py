"""Keep model libraries from reaching out: the runtime serves only what is on disk."""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from pathlib import Path

OFFLINE_VARS = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "DO_NOT_TRACK": "1",
}


def go_offline(data_dir: Path, env: MutableMapping[str, str] | None = None) -> None:
    """Set the offline variables, and point torch's hub cache at local disk."""
    env = os.environ if env is None else env
    env.update(OFFLINE_VARS)
    env.setdefault("TORCH_HOME", str(data_dir / "torch"))
    env.setdefault("HF_HOME", str(data_dir / "hf"))
