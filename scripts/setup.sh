#!/usr/bin/env bash
# Idempotent set-up: creates .venv when missing and installs pricegpt (editable) with the dev and baselines
# extras, pinned by constraints.txt. Quiet and quick when everything is already in place.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
venv="$root/.venv"
stamp="$venv/.pricegpt-setup"
want="$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)"

if [ ! -x "$venv/bin/python" ]; then
    echo "setup: creating $venv"
    python3 -m venv "$venv"
fi
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$venv/bin/python" -c "import pricegpt" 2>/dev/null; then
    exit 0
fi
echo "setup: installing pricegpt[dev,baselines,mlflow,hub] into .venv (first run takes a few minutes)"
"$venv/bin/python" -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
"$venv/bin/python" -m pip install --quiet -c constraints.txt -e ".[dev,baselines,mlflow,hub]"
echo "$want" > "$stamp"
echo "setup: done"
