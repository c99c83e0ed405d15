"""The ensemble ablation of MODEL_README: K tiny models that differ only in their training seed (same tokenizer,
same tokens), their paths pooled equally at one temperature calibrated on the pooled forecaster, against the
first member alone; chosen on the VALIDATION split, the test split reported once with --split test.

    .venv/bin/python scripts/ensemble.py --out runs/ensemble [--k 3] [--datasets eurusd-hourly] [--split val]

Prints a Markdown table and writes OUT/ensemble-SPLIT.json. Cost: K trainings; sampling time does not grow
(the same number of paths, split among the members). Resumable: finished trainings are kept.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from ablation_runs import tokenizer_store

from pricegpt.data import load_prices, time_splits
from pricegpt.evaluate import evaluate_run
from pricegpt.forecast import EnsembleForecaster, Forecaster, calibrate_temperature
from pricegpt.train import train_run

DATASETS = {"stocks-daily": "sample:stocks-daily", "eurusd-hourly": "sample:eurusd-hourly"}
HORIZON, NUM_SAMPLES = 4, 128


def member(root: Path, frame, splits, k: int) -> Path:
    run = root / f"member-{k}"
    if (run / "model" / "meta.json").is_file():
        return run
    run.mkdir(parents=True, exist_ok=True)
    shared = root / "shared"
    tokenizer_store(shared, frame, splits)
    for name in ("tokenizer", "tokens"):
        if not (run / name).exists():
            shutil.copytree(shared / name, run / name)
    train_run(tokens=run / "tokens", out=run, preset="tiny", allow_existing=True,
              overrides=[f"train.seed={1337 + k}"])
    return run


def score(forecaster, frame, splits, split: str, out: Path) -> dict:
    calibrate_temperature(forecaster, frame, splits, HORIZON, num_samples=NUM_SAMPLES, save=False)
    start = time.perf_counter()
    metrics = evaluate_run(forecaster, data=frame, split=split, horizons=[HORIZON], num_samples=NUM_SAMPLES,
                           out=out)
    f = metrics["forecast"]
    return {"crps": f["model"]["crps"], "verdict": f["verdict"], "coverage_90": f["model"]["coverage_90"],
            "temperature": forecaster.temperature, "evaluate_s": round(time.perf_counter() - start, 1)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="runs/ensemble")
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--datasets", default="eurusd-hourly,stocks-daily")
    parser.add_argument("--split", default="val", choices=["val", "test"])
    args = parser.parse_args()
    rows = []
    for name in args.datasets.split(","):
        frame = load_prices(DATASETS[name])
        splits = time_splits(frame)
        root = Path(args.out) / name
        start = time.perf_counter()
        runs = [member(root, frame, splits, k) for k in range(args.k)]
        train_s = time.perf_counter() - start
        single = Forecaster.from_run(runs[0])
        pooled = EnsembleForecaster([Forecaster.from_run(r) for r in runs])
        rows.append({"dataset": name, "k": 1, **score(single, frame, splits, args.split, root / f"eval1-{args.split}")})
        rows.append({"dataset": name, "k": args.k, "train_s_all_members": round(train_s, 1),
                     **score(pooled, frame, splits, args.split, root / f"eval{args.k}-{args.split}")})
    (Path(args.out) / f"ensemble-{args.split}.json").write_text(json.dumps(rows, indent=2))
    print("| dataset | models | CRPS | ratio to best baseline [95% CI] | verdict | cov90 | T |")
    print("|---|---:|---:|---|---|---:|---:|")
    for r in rows:
        v = r["verdict"]
        print(f"| {r['dataset']} | {r['k']} | {r['crps']:.6f} | {v['crps_ratio']:.3f} [{v['crps_ratio_ci'][0]:.3f}, "
              f"{v['crps_ratio_ci'][1]:.3f}] ({v['best_baseline']}) | {v['verdict']} | {r['coverage_90']:.1%} | "
              f"{r['temperature']:g} |")


if __name__ == "__main__":
    main()
