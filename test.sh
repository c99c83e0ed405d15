#!/usr/bin/env bash
# Set up (idempotent), then the linters (ruff; lint-imports checks the layers in pyproject.toml) and the test
# suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
./scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/lint-imports
.venv/bin/python -m pytest -q "$@"
