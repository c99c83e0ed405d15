"""What the ablation scripts (ablation.py, side_ablation.py, ensemble.py) share: a tokenizer and its token store
fit on a dataset's train split, and a run trained, calibrated and evaluated on one split. Each step is skipped when
its output is there, so a killed script finishes when it is run again."""

from __future__ import annotations

import json
import time
from pathlib import Path

from pricegpt.config import preset_tokenizer_options
from pricegpt.evaluate import evaluate_run
from pricegpt.forecast import calibrate_temperature
from pricegpt.runs import load_run
from pricegpt.tokenizer import fit_to_dir, load_tokenizer, write_token_store
from pricegpt.train import train_run


def tokenizer_store(folder: Path, frame, splits, **options) -> Path:
    """folder/tokenizer (the tiny preset's VQ-VAE, `options` on top) and folder/tokens; returns the store."""
    if not (folder / "tokenizer" / "report.json").is_file():
        fit_to_dir(frame, folder / "tokenizer", kind="vqvae", train_end=splits.train_end, val_end=splits.val_end,
                   seed=0, overwrite=(folder / "tokenizer").exists(),
                   **{**preset_tokenizer_options("tiny"), **options})
    if not (folder / "tokens" / "index.json").is_file():
        write_token_store(load_tokenizer(folder / "tokenizer"), frame, folder / "tokens", splits,
                          overwrite=(folder / "tokens").exists())
    return folder / "tokens"


def finish_run(run: Path, tokens: Path, frame, splits, overrides: list[str], *, split: str, horizon: int,
               num_samples: int) -> tuple[dict, float]:
    """The tiny preset trained on `tokens` with `overrides` into `run` (resumed if killed), its temperature
    calibrated and `split` evaluated into run/eval-SPLIT: (its metrics.json, seconds spent training now)."""
    meta = run / "model" / "meta.json"
    start = time.perf_counter()
    if not meta.is_file() or not json.loads(meta.read_text()).get("finished", True):
        train_run(tokens=tokens, out=run, preset="tiny", allow_existing=True, overrides=overrides,
                  resume=(run / "checkpoints").exists())
    train_s = time.perf_counter() - start
    if not (run / "calibration.json").is_file():
        calibrate_temperature(load_run(run), frame, splits, horizon=horizon, num_samples=num_samples)
    eval_dir = run / f"eval-{split}"
    if not (eval_dir / "metrics.json").is_file():
        evaluate_run(run, data=frame, split=split, horizons=[horizon], num_samples=num_samples, out=eval_dir)
    return json.loads((eval_dir / "metrics.json").read_text()), train_s
