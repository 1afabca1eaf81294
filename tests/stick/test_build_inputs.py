"""What the installer executable's build collects, checked from the sources in a second
(no build root, no PyInstaller): a package or data file the TUI or the CLI needs but the
build leaves out shows up here, not only as a frozen executable that never draws a screen."""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

from installer_exe import build

FIRST_PARTY = ("appliance", "bundler", "installer_tui", "modelcontract", "signing", "runtime",
               "images", "installer_exe")
# Reached only by commands that cannot run from a stick, so left out on purpose.
LEFT_OUT = {"images": "`appliance demo` builds runtime images with podman and pip"}


def _module_file(name: str) -> Path | None:
    base = build.REPO.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(path: Path, module: str) -> set[str]:
    """Every first-party module `path` imports, at any depth of the file (lazy ones too)."""
    found: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                stem = f"{base}.{node.module}" if node.module else base
            else:
                stem = node.module or ""
            names = [stem, *(f"{stem}.{a.name}" for a in node.names)]
        elif (isinstance(node, ast.Constant) and isinstance(node.value, str)
              and node.value.split(".")[0] in FIRST_PARTY and node.value.count(".") >= 1
              and " " not in node.value):
            names = [node.value]  # imported by name (importlib), e.g. the CLI's commands
        found.update(n for n in names if n.split(".")[0] in FIRST_PARTY and _module_file(n))
    return found


def _reached_from_entry() -> set[str]:
    """The first-party modules the executable's entry point reaches, lazily imported ones too."""
    seen: set[str] = set()
    todo = ["appliance.installer"]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = _module_file(name)
        assert path is not None, name
        parts = name.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))  # parent packages run
        todo.extend(_imports(path, name) - seen)
    return seen


def test_every_package_the_entry_point_reaches_is_frozen_into_the_executable() -> None:
    reached = _reached_from_entry()
    assert "installer_tui.app" in reached and "appliance.cli.watchdog" in reached
    packages = {m.split(".")[0] for m in reached}
    missing = packages - set(build.SOURCES) - set(LEFT_OUT)
    assert not missing, f"the executable would lack {sorted(missing)}: add to build.SOURCES"
    frozen = {str(p.with_suffix("")).replace("/", ".").removesuffix(".__init__")
              for p in build.source_files() if p.suffix == ".py"}
    lacking = {m for m in reached - frozen if m.split(".")[0] not in LEFT_OUT}
    assert not lacking, f"not copied into the build root: {sorted(lacking)}"


def test_every_data_file_of_our_packages_is_copied_and_added_to_the_executable() -> None:
    tracked = subprocess.run(["git", "ls-files", *build.SOURCES], cwd=build.REPO, check=True,
                             capture_output=True, text=True).stdout.split()
    data = [Path(p) for p in tracked if not p.endswith(".py")]
    assert Path("installer_tui/app.tcss") in data  # the TUI's styles: no screen without them
    copied = set(build.source_files())
    added = {f.split("=", 1)[1].split(":")[0].removeprefix("/build/src/")
             for f in build.PYINSTALLER_FLAGS if f.startswith("--add-data=")}
    for p in data:
        assert p in copied, f"{p} is not copied into the build root (SOURCE_SUFFIXES)"
        assert str(p) in added, f"{p} is not in the executable: add --add-data for it"
