"""Evaluation: honest origins, the leakage guard, baselines that never see the future, and end to end."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pricegpt.data import Splits, time_splits
from pricegpt.errors import PriceGPTError
from pricegpt.evaluate import Origins, check_no_overlap, select_origins, symbol_series
from pricegpt.evaluate.baselines import BASELINES, baseline_forecasts
from pricegpt.tokenizer import bar_features


@pytest.fixture(scope="module")
def stocks_series(stocks_frame):
    splits = time_splits(stocks_frame)
    return splits, symbol_series(bar_features(stocks_frame), splits)


@pytest.mark.parametrize("split,horizon,cap", [("test", 4, None), ("val", 7, None), ("test", 20, 5)])
def test_every_origin_ends_its_context_strictly_before_its_target(stocks_series, split, horizon, cap):
    splits, series = stocks_series
    origins = select_origins(series, split, horizon, max_origins=cap, min_context=4)
    assert origins.n > 0
    context_end, target_start = origins.context_end(series), origins.target_start(series)
    assert np.all(context_end < target_start)
    code = {"val": 1, "test": 2}[split]
    for symbol, i in zip(origins.symbols, origins.index):
        s = series[symbol]
        # the context is exactly the bars before the target, the whole target lies in the split
        assert len(origins.contexts(series)[0]) == origins.index[0]
        assert np.all(s.labels[i:i + horizon] == code)
        assert s.timestamps[i - 1] < s.timestamps[i]
    for symbol in set(origins.symbols):
        idx = origins.index[origins.symbols == symbol]
        assert np.all(np.diff(idx) >= horizon)  # targets never overlap
        if cap:
            assert len(idx) == cap
    realised = origins.realised(series, horizon)
    s, i = origins.symbols[-1], origins.index[-1]
    assert realised[-1, -1] == pytest.approx(series[s].returns[i:i + horizon].sum())


def test_origins_are_strided_from_the_split_start(stocks_series):
    splits, series = stocks_series
    origins = select_origins(series, "test", 4)
    ibm = origins.index[origins.symbols == "IBM"]
    first_test_bar = int(np.flatnonzero(series["IBM"].labels == 2)[0])
    assert ibm[0] == first_test_bar and np.all(np.diff(ibm) == 4)
    assert ibm[-1] + 4 <= len(series["IBM"].labels) < ibm[-1] + 8


def test_leakage_guard_refuses_origins_at_or_before_train_end(stocks_series):
    splits, series = stocks_series
    origins = select_origins(series, "test", 4, max_origins=3)
    assert check_no_overlap(origins, series, splits.train_end) == 0
    late_cutoff = pd.Timestamp(origins.target_start(series).max()).tz_localize("UTC")
    with pytest.raises(PriceGPTError, match="allow-overlap"):
        check_no_overlap(origins, series, late_cutoff)
    assert check_no_overlap(origins, series, late_cutoff, allow_overlap=True) > 0
    # a target starting exactly at train_end counts as overlapping
    exact = pd.Timestamp(origins.target_start(series).min()).tz_localize("UTC")
    with pytest.raises(PriceGPTError):
        check_no_overlap(origins, series, exact)


def test_baselines_never_see_the_future_and_fit_on_train_only(stocks_series):
    splits, series = stocks_series
    horizon = 5
    origins = select_origins(series, "test", horizon, max_origins=4)
    symbols = ["IBM", "MSFT"]
    keep = np.isin(origins.symbols, symbols)
    origins = Origins(origins.symbols[keep], origins.index[keep])
    returns = {s: series[s].returns.copy() for s in symbols}
    train_len = {s: series[s].train_len for s in symbols}

    def params(rets):
        preds, notes = baseline_forecasts(rets, train_len, origins.symbols, origins.index, horizon, 64, seed=3)
        assert notes == {}, notes
        out = {}
        for name in BASELINES:
            p = preds[name]
            out[name] = {a: np.asarray(getattr(p, a)).copy() for a in ("mean", "std", "scale", "df", "samples")
                         if hasattr(p, a)}
        return out

    base = params(returns)
    # 1. scramble every bar at or after the first origin's target of each symbol: the first origin of each
    #    symbol must be forecast identically
    for s in symbols:
        first = origins.index[origins.symbols == s][0]
        future = {k: v.copy() for k, v in returns.items()}
        future[s][first:] = np.random.default_rng(0).normal(0, 0.2, len(future[s]) - first)
        changed = params(future)
        row = int(np.flatnonzero(origins.symbols == s)[0])
        for name in BASELINES:
            for attr in base[name]:
                np.testing.assert_array_equal(base[name][attr][row], changed[name][attr][row],
                                              err_msg=f"{name}.{attr} looked past origin {s}[{first}]")
    # 2. change the validation bars (after train, before the origins): fitted parameters stay, only the
    #    trailing-window forecasts may move
    val = {k: v.copy() for k, v in returns.items()}
    for s in symbols:
        in_val = series[s].labels == 1
        val[s][in_val] *= 3.0
    changed = params(val)
    np.testing.assert_array_equal(base["random_walk"]["std"], changed["random_walk"]["std"])
    np.testing.assert_array_equal(base["garch"]["df"], changed["garch"]["df"])  # fit on train only
    np.testing.assert_array_equal(base["garch"]["mean"], changed["garch"]["mean"])
    # ... while the trailing windows do see the (past) validation bars
    assert not np.array_equal(base["histvol20"]["std"], changed["histvol20"]["std"])
    assert not np.array_equal(base["garch"]["scale"], changed["garch"]["scale"])


def test_baseline_volatility_rules():
    n = 400
    rng = np.random.default_rng(4)
    returns = {"X": np.concatenate([rng.normal(0, 0.01, 300), rng.normal(0, 0.04, 100)])}
    labels = np.array([0] * 300 + [2] * 100)
    series = symbol_series({"X": (pd.date_range("2020-01-01", periods=n, freq="D").to_numpy(),
                                  returns["X"][:, None])},
                           Splits(pd.Timestamp("2020-10-26", tz="UTC"), pd.Timestamp("2020-10-26 12:00", tz="UTC")))
    assert series["X"].labels.tolist() == labels.tolist()
    origins = Origins(np.array(["X"], dtype=object), np.array([380]))
    preds, _ = baseline_forecasts(returns, {"X": 300}, origins.symbols, origins.index, 4, 2000, seed=0)
    assert preds["random_walk"].std[0] == pytest.approx(np.std(returns["X"][:300], ddof=1) * 2)
    assert preds["histvol20"].std[0] == pytest.approx(np.std(returns["X"][360:380], ddof=1) * 2)
    assert preds["histvol20"].std[0] > 3 * preds["random_walk"].std[0]  # it adapts to the volatile regime
    assert 0.025 * 2 < preds["ewma"].std[0] < 0.06 * 2  # about 16 bars of memory: noisy, but in the new regime
    assert np.std(preds["bootstrap"].samples[0]) == pytest.approx(np.std(returns["X"][130:380]) * 2, rel=0.1)
