"""Mistakes a notebook or command-line user makes that used to slip through or end in a raw exception: each is now
one clear error (or, for a README beside the prices, skipped) before any work."""

from __future__ import annotations

import os
import time

import numpy as np
import pandas as pd
import pytest

from conftest import assert_user_error, run_cli
from pricegpt import Forecaster, load_prices
from pricegpt.backtest import run_backtest
from pricegpt.errors import CheckpointError, ConfigError, DataError
from pricegpt.evaluate import evaluate_run
from pricegpt.forecast import EnsembleForecaster
from pricegpt.pipeline import _report_stale
from pricegpt.rundir import RunDir


def _prices(n: int = 30, start: str = "2024-01-02") -> pd.DataFrame:
    times = pd.bdate_range(start, periods=n)
    close = 100 * np.exp(np.cumsum(np.random.default_rng(0).normal(0, 0.01, n)))
    return pd.DataFrame({"date": times.strftime("%Y-%m-%d"), "close": close})


def test_bar_numbers_in_the_date_column_are_not_read_as_1970(tmp_path):
    path = tmp_path / "bars.csv"
    pd.DataFrame({"timestamp": np.arange(500), "close": np.linspace(100, 110, 500)}).to_csv(path, index=False)
    with pytest.raises(DataError, match="bar numbers or a counter"):
        load_prices(path)
    real = tmp_path / "unix.csv"  # real Unix seconds still load
    pd.DataFrame({"timestamp": 1_700_000_000 + 60 * np.arange(50), "close": np.linspace(100, 110, 50)}).to_csv(
        real, index=False)
    assert load_prices(real)["timestamp"].iloc[0] == pd.Timestamp("2023-11-14 22:13:20", tz="UTC")


def test_a_decimal_comma_file_says_so(tmp_path):
    path = tmp_path / "eu.csv"
    path.write_text("date;close\n2024-01-02;101,25\n2024-01-03;102,50\n2024-01-04;101,75\n")
    with pytest.raises(DataError, match="decimal comma.*decimal=','"):
        load_prices(path)
    us = tmp_path / "us.csv"
    us.write_text('date,close\n2024-01-02,"1,101.25"\n2024-01-03,"1,102.50"\n2024-01-04,"1,101.75"\n')
    with pytest.raises(DataError, match="thousands separators.*thousands=','"):
        load_prices(us)


def test_yfinance_two_level_columns_say_how_to_flatten():
    frame = _prices().set_index("date")
    wide = pd.concat({"Close": frame[["close"]].rename(columns={"close": "AAPL"}),
                      "Open": frame[["close"]].rename(columns={"close": "AAPL"})}, axis=1)
    wide.columns.names = ["Price", "Ticker"]
    with pytest.raises(DataError, match="2-level columns.*yfinance.*droplevel.*stack"):
        load_prices(wide)


def test_a_readme_beside_the_prices_is_skipped(tmp_path):
    for symbol in ("AAA", "BBB"):
        _prices().to_csv(tmp_path / f"{symbol}.csv", index=False)
    (tmp_path / "README.txt").write_text("Daily closes from my broker, downloaded 2024-03-01.\n")
    (tmp_path / "LICENSE").write_text("no suffix, never read\n")
    assert sorted(load_prices(tmp_path)["symbol"].unique()) == ["AAA", "BBB"]


def test_an_unknown_pretrained_name_lists_the_built_in_ones(tmp_path):
    os.chdir(tmp_path)
    with pytest.raises(CheckpointError, match="built-in model: pricegpt-small"):
        Forecaster.from_pretrained("pricegpt-smal")


def test_wrong_arguments_of_the_python_api_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="must be a run directory, a loaded Run or a Forecaster, got None"):
        evaluate_run(None)
    with pytest.raises(ConfigError, match="allow_overlap .* must be true or false, got 'yes'"):
        evaluate_run(tmp_path, allow_overlap="yes")
    with pytest.raises(ConfigError, match="unknown backtest option.*nosuchoption.*valid options are"):
        run_backtest(tmp_path, nosuchoption=1)
    with pytest.raises(ConfigError, match="list of Forecasters, got None"):
        EnsembleForecaster(None)
    forecaster = Forecaster.from_pretrained("pricegpt-small")
    with pytest.raises(ConfigError, match="overwrite must be true or false, got 'yes'"):
        forecaster.save_pretrained(tmp_path / "copy", overwrite="yes")
    assert not (tmp_path / "copy").exists()


def test_the_command_lines_horizon_bound_is_the_apis(tmp_path):
    result = run_cli("forecast", "--model", "pricegpt-small", "--data", "sample:stocks-daily", "--symbol", "IBM",
                     "--horizon", "200000", cwd=tmp_path)
    assert_user_error(result, "--horizon", "100,000")


def test_an_interrupted_report_refresh_is_redone_by_the_next_run(tmp_path):
    run = RunDir(tmp_path)
    run.eval.mkdir()
    run.backtest.mkdir()
    run.eval_metrics.write_text("{}")
    assert _report_stale(run)  # no report yet
    run.report_html.write_text("<html></html>")
    run.backtest_metrics.write_text("{}")
    old = time.time() - 60
    os.utime(run.eval_metrics, (old, old))
    os.utime(run.report_html, (old + 1, old + 1))
    assert _report_stale(run)  # the backtest came after the report: the refresh never finished
    os.utime(run.report_html, None)
    assert not _report_stale(run)
