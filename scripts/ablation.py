"""The tokenizer ablation of MODEL_README: scaling x decode (x kind) on several real datasets, chosen on the
VALIDATION split, the winner and the previous default then scored once on the test split.

    .venv/bin/python scripts/ablation.py --out runs/ablation [--num-samples 128] [--configs a,b] [--test]

Datasets: the embedded samples and the files of scripts/ablation_data.sh (data/ablation/). Every run uses the
tiny preset with its default schedule and seed 0; only the tokenizer options differ. Resumable: a finished step
of a (dataset, config) is skipped. Writes OUT/ablation.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path

from ablation_runs import finish_run, tokenizer_store

from pricegpt.data import load_prices, time_splits

ROOT = Path(__file__).resolve().parents[1]
DATASETS = {"stocks-daily": "sample:stocks-daily", "eurusd-hourly": "sample:eurusd-hourly",
            "indices-1990-2001": str(ROOT / "data/ablation/indices"),
            "googl-2009-2018": str(ROOT / "data/ablation/GOOGL.csv")}
CONFIGS = {
    "static-centroid": {},  # the default before this ablation
    "static-within": {"decode": "within"},
    "ewma-centroid": {"scaling": "ewma"},
    "ewma-within": {"scaling": "ewma", "decode": "within"},
    "ewma30-within": {"scaling": "ewma", "halflife": 30.0, "decode": "within"},
    "garch-within": {"scaling": "garch", "decode": "within"},
    "ewma-seasonal": {"scaling": "ewma", "seasonal": True},
    # the bar's range, gap and volume inside each token (features "ohlcv": the VQ-VAE encodes all five per bar)
    "ewma-seasonal-ohlcv": {"scaling": "ewma", "seasonal": True, "features": "ohlcv"},
    # model options ("set": --set overrides of the training config) on top of the tokenizer's
    "ewma-calendar": {"scaling": "ewma", "set": ["model.calendar=true"]},
    "ewma-seasonal-calendar": {"scaling": "ewma", "seasonal": True, "set": ["model.calendar=true"]},
}
HORIZON = 4


def run_one(name: str, source: str, config: str, out: Path, num_samples: int, split: str) -> dict:
    run = out / name / config
    frame = load_prices(source)
    splits = time_splits(frame)
    options = dict(CONFIGS[config])
    overrides = options.pop("set", [])
    tokens = tokenizer_store(run, frame, splits, **options)
    metrics, _ = finish_run(run, tokens, frame, splits, overrides, split=split, horizon=HORIZON,
                            num_samples=num_samples)
    forecast, tokens = metrics["forecast"], metrics["tokens"]
    verdict = forecast.get("verdict") or {}
    return {"dataset": name, "config": config, "split": split, "n_origins": forecast["n_origins"],
            "crps_model": forecast["model"]["crps"], "best_baseline": verdict.get("best_baseline"),
            "crps_ratio": verdict.get("crps_ratio"), "crps_ratio_ci": verdict.get("crps_ratio_ci"),
            "verdict": verdict.get("verdict"), "coverage_50": forecast["model"]["coverage_50"],
            "coverage_90": forecast["model"]["coverage_90"],
            "perplexity": tokens["model"]["perplexity"], "perplexity_unigram": tokens["unigram"]["perplexity"],
            "temperature": forecast.get("temperature")}


def table(rows: list[dict]) -> str:
    lines = ["| dataset | config | split | CRPS ratio to best baseline [95% CI] | verdict | cov50 | cov90 | "
             "perplexity (unigram) | T |", "|---|---|---|---|---|---:|---:|---:|---:|"]
    for r in rows:
        ci = r["crps_ratio_ci"] or [math.nan, math.nan]
        ratio = "n/a" if r["crps_ratio"] is None else f"{r['crps_ratio']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"
        lines.append(f"| {r['dataset']} | {r['config']} | {r['split']} | {ratio} ({r['best_baseline']}) | "
                     f"{r['verdict']} | {r['coverage_50']:.1%} | {r['coverage_90']:.1%} | "
                     f"{r['perplexity']:.1f} ({r['perplexity_unigram']:.1f}) | {r['temperature']:g} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/ablation")
    parser.add_argument("--num-samples", type=int, default=128)
    parser.add_argument("--configs", help="comma-separated subset of " + ", ".join(CONFIGS))
    parser.add_argument("--datasets", help="comma-separated subset of " + ", ".join(DATASETS))
    parser.add_argument("--split", default="val", choices=["val", "test"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    out = Path(args.out)
    configs = args.configs.split(",") if args.configs else list(CONFIGS)
    datasets = args.datasets.split(",") if args.datasets else list(DATASETS)
    rows = []
    for name in datasets:
        for config in configs:
            start = time.perf_counter()
            rows.append(run_one(name, DATASETS[name], config, out, args.num_samples, args.split))
            print(f"{name} {config}: {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    results = out / f"ablation-{args.split}.json"
    previous = json.loads(results.read_text()) if results.is_file() else []
    keep = [r for r in previous if (r["dataset"], r["config"]) not in {(r2["dataset"], r2["config"]) for r2 in rows}]
    results.write_text(json.dumps(keep + rows, indent=2) + "\n")
    print(table(keep + rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
