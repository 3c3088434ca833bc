"""The package layout a user installs: one name, ``mergetune``, whose subpackages live in the
repository's top-level folders (``pyproject.toml``'s package-dir). Nothing else lands on ``sys.path``."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
PACKAGE_DIR: dict[str, str] = PYPROJECT["tool"]["setuptools"]["package-dir"]
OLD_TOP_LEVEL = ("api", "cli", "common", "core", "ops", "worker")
SOURCE_FOLDERS = (
    "api",
    "bench",
    "client",
    "common",
    "core",
    "migrations",
    "ops",
    "scripts",
    "tests",
    "worker",
)


def _packages_on_disk() -> set[str]:
    found = set()
    for name, folder in PACKAGE_DIR.items():
        root = REPO / folder
        for init in root.rglob("__init__.py"):
            rel = init.parent.relative_to(root)
            found.add(".".join([name, *rel.parts]))
    return found


def test_every_package_on_disk_is_installed_and_every_installed_package_exists():
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    assert listed == _packages_on_disk()


def test_the_server_folders_install_under_mergetune_only():
    assert PACKAGE_DIR["mergetune"] == "client/mergetune"
    for name in PACKAGE_DIR:
        assert name == "mergetune" or name.startswith("mergetune."), name


def _top_level_imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        bad += [(node.lineno, n) for n in names if n.split(".")[0] in OLD_TOP_LEVEL]
    return bad


def test_no_code_imports_a_folder_as_a_top_level_package():
    offenders = []
    for folder in SOURCE_FOLDERS:
        for path in (REPO / folder).rglob("*.py") if (REPO / folder).exists() else ():
            offenders += [
                f"{path.relative_to(REPO)}:{line}: import {name}" for line, name in _top_level_imports(path)
            ]
    assert offenders == []


def test_each_core_package_says_what_it_is_for():
    for init in sorted((REPO / "core").rglob("__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
        assert doc, f"{init.relative_to(REPO)} has no docstring"
        first = doc.splitlines()[0]
        assert first.endswith(".") and len(first) <= 120, f"{init.relative_to(REPO)}: {first!r}"


@pytest.mark.parametrize("name", OLD_TOP_LEVEL)
def test_the_installed_environment_has_no_bare_server_names(tmp_path, name):
    """Run from an empty folder, as a notebook user would: ``import api`` must not find our API."""
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.find_spec({name!r})\n"
        "origin = spec and (spec.origin or str(list(spec.submodule_search_locations or [])))\n"
        f"sys.exit(1 if origin and {str(REPO)!r} in origin else 0)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, f"`import {name}` finds the repository's folder from {tmp_path}"


def test_the_installed_environment_imports_mergetune_and_its_server_parts(tmp_path):
    code = (
        "import mergetune, mergetune.core.config, mergetune.api.main, mergetune.common.settings\n"
        "assert mergetune.Client.__name__ == 'Client'\n"
        "import sys; assert 'torch' not in sys.modules, 'importing the API must not import torch'\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
