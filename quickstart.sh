#!/usr/bin/env bash
# The automated quickstart: set up, then run the whole pipeline on the embedded real data (sample:stocks-daily).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
./scripts/setup.sh
py=.venv/bin/python
echo "== the embedded data"
$py -m pricegpt data info sample:stocks-daily
