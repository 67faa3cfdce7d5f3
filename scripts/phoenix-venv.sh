#!/usr/bin/env bash
# Create .venv-phoenix at the repository root with a pinned Arize Phoenix server.
#
# The Phoenix server (package arize-phoenix) pins its own versions of several
# libraries (an older anthropic among them), so it lives in its own virtualenv and
# never in the project's .venv. tests/test_adapter_phoenix.py starts
# .venv-phoenix/bin/phoenix serve; without it those tests skip.
#
# Idempotent: does nothing when the pinned version is already installed.
# Usage: bash scripts/phoenix-venv.sh        (PHOENIX_VERSION=x.y.z to override the pin)
set -euo pipefail

PHOENIX_VERSION="${PHOENIX_VERSION:-20.26.1}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv-phoenix"
PY="${PYTHON:-python3}"

installed_version() {
    "$VENV/bin/python" - <<'EOF' 2>/dev/null
from importlib.metadata import version
print(version("arize-phoenix"))
EOF
}

if [ -x "$VENV/bin/phoenix" ] && [ "$(installed_version)" = "$PHOENIX_VERSION" ]; then
    [ -f "$VENV/.gitignore" ] || echo '*' > "$VENV/.gitignore"
    echo "phoenix-venv: arize-phoenix $PHOENIX_VERSION already in $VENV"
    exit 0
fi

if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
# Keep the venv out of git, ruff and other tools that honour .gitignore (what
# `python -m venv` itself does from Python 3.13 on).
[ -f "$VENV/.gitignore" ] || echo '*' > "$VENV/.gitignore"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet "arize-phoenix==$PHOENIX_VERSION"
echo "phoenix-venv: installed arize-phoenix $(installed_version) in $VENV"
