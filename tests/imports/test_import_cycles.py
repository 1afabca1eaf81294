"""Every module of appliance/ imports on its own, first, in a fresh interpreter.

An import cycle only shows when a module of the cycle is the first one imported,
which a test run that has already imported the rest never sees.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _modules(package: str) -> list[str]:
    base = ROOT / package
    names = []
    for path in sorted(base.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__main__":
            continue  # runs the CLI when imported
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names.append(".".join(parts))
    return names


MODULES = _modules("appliance")


def test_the_module_list_covers_the_packages():
    assert {"appliance", "appliance.bundle.imagearchive", "appliance.bundle.tarfmt",
            "appliance.engines.docker", "appliance.k8s"} <= set(MODULES)


@pytest.mark.parametrize("module", MODULES)
def test_module_imports_first_in_a_fresh_interpreter(module):
    r = subprocess.run([sys.executable, "-c", f"import {module}"], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"import {module} failed:\n{r.stderr[-2000:]}"
