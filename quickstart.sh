#!/usr/bin/env bash
# The automated quickstart: set up, then run the whole pipeline on the embedded real data (sample:stocks-daily):
# ingest -> tokenizer -> train -> calibrate -> evaluate -> backtest -> report, then generate a few token paths.
# Re-running finishes whatever is incomplete in runs/quickstart and skips the rest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
./scripts/setup.sh
py=.venv/bin/python
run=runs/quickstart
start=$(date +%s)

echo "== 1/4 the embedded data"
$py -m pricegpt data info sample:stocks-daily

echo
echo "== 2/4 the pipeline: tokenizer -> tokens -> GPT -> calibration -> evaluation -> backtest"
$py -m pricegpt pipeline --data sample:stocks-daily --out "$run" --preset tiny

echo
echo "== 3/4 three sampled continuations of the last test tokens of AAPL (token ids, then decoded)"
context=$($py - "$run" <<'PY'
import sys
from pricegpt.tokenizer import TokenStore
store = TokenStore.open(f"{sys.argv[1]}/tokens")
print(" ".join(str(int(t)) for t in store.tokens("AAPL")[-16:]))
PY
)
$py -m pricegpt generate --run "$run" --seed-tokens "$context" --num-generate 8 --num-samples 3 --seed 0 \
    --decode --symbol AAPL --start-price 100

echo
echo "== 4/4 done in $(( $(date +%s) - start ))s"
echo "report:   $run/eval/report.html (and report.md)"
echo "backtest: $run/backtest/metrics.json, $run/backtest/equity.png"
