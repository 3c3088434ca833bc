#!/usr/bin/env bash
# Lays the installed package out as one folder tree, .lint/mergetune/ (symlinks to the real files), so
# tools that walk folders (import-linter, mypy) see `mergetune.core...` where setuptools' package-dir
# maps it, then runs them there. The folders themselves stay at the repository's top.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .lint
mkdir -p .lint
cp -as "$PWD/client/mergetune" .lint/mergetune
for pkg in api common core migrations ops worker; do
    cp -as "$PWD/$pkg" ".lint/mergetune/$pkg"
done
find .lint -name __pycache__ -prune -exec rm -rf {} +
VENV=${VENV:-.venv}
PYTHONPATH="$PWD/.lint" "$VENV/bin/lint-imports"
cd .lint && MYPYPATH= "../$VENV/bin/mypy" --config-file ../pyproject.toml -p mergetune
