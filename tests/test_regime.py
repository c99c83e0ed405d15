"""Regime robustness (issue 16): on GARCH data whose volatility doubles after the validation split, a model trained
on ewma-scaled tokens still covers about 90% of its test outcomes with its 90% intervals; static scaling, whose
tokens mean "k train standard deviations", under-covers. Real tokenizer, real training, real evaluation."""

from __future__ import annotations

import json

import pytest

from pricegpt.evaluate import evaluate_run
from pricegpt.tokenizer import fit_to_dir, load_tokenizer, write_token_store
from pricegpt.train import train_run
from test_scaling import garch_frame
from train_helpers import TINY

HORIZON = 4


@pytest.fixture(scope="module")
def regime_change():
    frame, jump = garch_frame(3, n_train=1500, n_test=1000)
    times = sorted(frame["timestamp"].unique())
    return frame, times[1200], jump  # train 1200 bars, validate 300 calm bars, test 1000 bars at twice the vol


def coverage_after_the_jump(frame, train_end, val_end, scaling: str, root) -> dict:
    run = root / scaling
    fit_to_dir(frame, run / "tokenizer", kind="quantile", train_end=train_end, val_end=val_end, seed=0,
               patch_len=1, codebook_size=48, scaling=scaling)
    from pricegpt.data import time_splits
    write_token_store(load_tokenizer(run / "tokenizer"), frame, run / "tokens",
                      time_splits(frame, train_end=train_end, val_end=val_end))
    train_run(tokens=run / "tokens", out=run, allow_existing=True, max_steps=150,
              overrides=[*TINY, "train.eval_every=50"])
    evaluate_run(run, data=frame, split="test", horizons=[HORIZON], num_samples=128, out=run / "eval")
    return json.loads((run / "eval" / "metrics.json").read_text())["forecast"]["model"]


def test_ewma_tokens_keep_their_coverage_when_volatility_doubles(regime_change, tmp_path):
    frame, train_end, val_end = regime_change
    ewma = coverage_after_the_jump(frame, train_end, val_end, "ewma", tmp_path)
    static = coverage_after_the_jump(frame, train_end, val_end, "static", tmp_path)
    print(f"90% coverage after the jump: ewma {ewma['coverage_90']:.3f}, static {static['coverage_90']:.3f}")
    assert 0.85 <= ewma["coverage_90"] <= 0.95, ewma
    assert static["coverage_90"] < 0.85, static  # its intervals are still the calm regime's
