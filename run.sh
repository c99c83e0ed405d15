#!/usr/bin/env bash
# The seed's helper: `./run.sh SCRIPT.py [args]` runs a script with the project's Python (after set-up).
# A SCRIPT not found in the current directory is taken from the repository, so `/path/to/pricegpt/run.sh train.py`
# works from any (even empty) working directory, which then receives data/ and runs/.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
"$root/scripts/setup.sh"
if [ $# -lt 1 ]; then
    echo "usage: ./run.sh SCRIPT.py [args...]" >&2
    exit 2
fi
script="$1"
shift
if [ ! -e "$script" ] && [ -e "$root/$script" ]; then
    script="$root/$script"
fi
exec "$root/.venv/bin/python" "$script" "$@"
