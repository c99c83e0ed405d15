"""Ensembles (issue 17): members' paths pooled equally at one temperature, reproducible, independent of batching,
calibrated and evaluated as one forecaster."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from pricegpt.data import load_prices
from pricegpt.data.windows import select_origins, symbol_series
from pricegpt.errors import ConfigError
from pricegpt.evaluate import evaluate_run
from pricegpt.forecast import EnsembleForecaster, Forecaster, calibrate_temperature
from pricegpt.train import train_run
from test_evaluate import TINY_TRAIN, tiny_run  # noqa: F401  (the fixture)


@pytest.fixture(scope="module")
def two_members(tiny_run, tmp_path_factory):  # noqa: F811
    run, csv, splits = tiny_run
    second = tmp_path_factory.mktemp("ensemble") / "run"
    second.mkdir()
    for name in ("tokenizer", "tokens"):
        shutil.copytree(run / name, second / name)
    threads = torch.get_num_threads()
    try:
        train_run(tokens=second / "tokens", out=second, preset="tiny", max_steps=30, allow_existing=True,
                  overrides=[*TINY_TRAIN, "train.seed=7"])
    finally:
        torch.set_num_threads(threads)
    return [run, second], csv, splits


def contexts(forecaster, csv, splits, n: int = 6):
    frame = load_prices(csv)
    series = symbol_series(forecaster.features(frame), splits)
    origins = select_origins(series, "val", 4, max_origins=n, min_context=forecaster.patch_len)
    return origins.contexts(series), list(origins.symbols), origins.context_end(series), origins


def test_paths_are_pooled_equally_and_reproducibly(two_members):
    runs, csv, splits = two_members
    ens = EnsembleForecaster.from_runs(runs)
    ctx, symbols, ends, _ = contexts(ens, csv, splits)
    paths = ens.sample_returns(ctx, symbols, 4, 9, seed=3, context_ends=ends)
    assert paths.shape == (len(ctx), 9, 4)
    again = ens.sample_returns(ctx, symbols, 4, 9, seed=3, context_ends=ends)
    np.testing.assert_array_equal(paths, again)
    # member 0 draws the first 5 paths, member 1 the last 4, each with its own seed and the ensemble's temperature
    members = [Forecaster.from_run(r) for r in runs]
    first = members[0].sample_returns(ctx, symbols, 4, 5, seed=ens_seed(3, 0), context_ends=ends, temperature=1.0)
    second = members[1].sample_returns(ctx, symbols, 4, 4, seed=ens_seed(3, 1), context_ends=ends, temperature=1.0)
    np.testing.assert_array_equal(paths, np.concatenate([first, second], axis=1))
    # one origin alone gets the same paths as among the others
    alone = ens.sample_returns(ctx[2:3], symbols[2:3], 4, 9, seed=3, context_ends=ends[2:3])
    np.testing.assert_array_equal(alone[0], paths[2])


def ens_seed(seed: int, k: int) -> int:
    from pricegpt.config import derive_seed
    return derive_seed(seed, k) % 2**32


def test_the_pooled_temperature_is_calibrated_in_memory_and_evaluated_as_one(two_members, tmp_path):
    runs, csv, splits = two_members
    ens = EnsembleForecaster.from_runs(runs)
    calibration = calibrate_temperature(ens, load_prices(csv), splits, 4, num_samples=16, max_origins=5,
                                        save=False)
    assert ens.temperature == calibration["temperature"]
    assert not any((r / "calibration.json").exists() for r in runs)  # in memory: no member's run was written
    metrics = evaluate_run(ens, data=csv, split="test", horizons=[4], num_samples=16, max_origins=5,
                           out=tmp_path / "eval")
    assert metrics["forecast"]["n_origins"] > 0 and metrics["forecast"]["model"]["crps"] > 0
    assert set(metrics["forecast"]["comparison"]) >= {"histvol20", "ewma"}


def test_an_ensemble_needs_two_compatible_members(two_members):
    runs, _, _ = two_members
    with pytest.raises(ConfigError, match="at least 2"):
        EnsembleForecaster([Forecaster.from_run(runs[0])])
    with pytest.raises(ConfigError, match="fewer than"):
        ens = EnsembleForecaster.from_runs(runs)
        ens.sample_returns([np.zeros(40)], ["MSFT"], 4, 1)
