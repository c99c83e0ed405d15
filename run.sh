#!/usr/bin/env bash
# The seed's helper: `./run.sh SCRIPT.py [args]` runs a script with the project's Python (after set-up).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
"$root/scripts/setup.sh"
if [ $# -lt 1 ]; then
    echo "usage: ./run.sh SCRIPT.py [args...]" >&2
    exit 2
fi
exec "$root/.venv/bin/python" "$@"
