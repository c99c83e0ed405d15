"""Frames in, frames out: `Forecaster.predict_df` with the future bars' real timestamps (daily equities skip the
weekend, hourly FX its closed hours, 24x7 crypto nothing), caller-given timestamps, `ForecastPaths.to_frame` and
its notebook summary, `load_prices` on in-memory frames, progress bars and `pricegpt.enable_logging`.

The forecaster is a real run (test_evaluate's tiny_run: a quantile tokenizer and 30 training steps of a tiny GPT)."""

from __future__ import annotations

import logging
import math
import sys
import types

import numpy as np
import pandas as pd
import pytest

import pricegpt
from pricegpt.data import load_prices
from pricegpt.errors import ConfigError
from pricegpt.forecast import Forecaster
from pricegpt.forecast.sampling import show_progress
from test_evaluate import SCRIPT_SYMBOL, tiny_run  # noqa: F401  (the fixture: a real run trained for 30 steps)

LEVELS = ["0.1", "0.2", "0.3", "0.4", "0.5", "0.6", "0.7", "0.8", "0.9"]


@pytest.fixture(scope="module")
def forecaster(tiny_run):  # noqa: F811
    return Forecaster.from_run(tiny_run[0])


def _utc(*times) -> list[pd.Timestamp]:
    return [pd.Timestamp(t, tz="UTC") for t in times]


def _crypto(days: int = 120, end: str = "2024-03-01", drop=()) -> pd.DataFrame:
    """A 24x7 daily series (weekends traded), optionally with some days missing."""
    times = pd.date_range(end=end, periods=days, freq="D", tz="UTC")
    times = times[~times.isin(pd.DatetimeIndex(_utc(*drop)))] if drop else times
    rng = np.random.default_rng(0)
    close = 40_000 * np.exp(np.cumsum(rng.normal(0, 0.03, len(times))))
    return pd.DataFrame({"timestamp": times, "symbol": "BTC-USD", "close": close})


def _check_values(table: pd.DataFrame, prices: pd.DataFrame) -> None:
    """Quantiles rise with the level; price columns are the last close times exp(the return columns)."""
    assert list(table.columns) == ["symbol", "timestamp", "mean", *LEVELS, "price_mean",
                                   *[f"price_{q}" for q in LEVELS]]
    assert isinstance(table["timestamp"].dtype, pd.DatetimeTZDtype) and str(table["timestamp"].dt.tz) == "UTC"
    returns = table[LEVELS].to_numpy()
    assert np.all(np.diff(returns, axis=1) >= 0)
    assert np.any(np.diff(returns, axis=1) > 0)  # real spread, not one repeated number
    last_close = prices.groupby("symbol")["close"].last()
    close = table["symbol"].map(last_close).to_numpy()[:, None]
    np.testing.assert_allclose(table[[f"price_{q}" for q in LEVELS]].to_numpy(), close * np.exp(returns))


def test_daily_equities_step_over_weekends_and_missing_holidays(forecaster, stocks_frame):
    history = stocks_frame[stocks_frame["timestamp"] <= pd.Timestamp("2013-02-19", tz="UTC")]  # a Tuesday
    assert not (history["timestamp"] == pd.Timestamp("2013-02-18", tz="UTC")).any()  # Presidents' Day: no bar
    table = forecaster.predict_df(history, horizon=6, num_samples=64)
    assert sorted(table["symbol"].unique()) == ["AAPL", "GOOG", "IBM", "MSFT"]
    for _, rows in table.groupby("symbol"):
        assert rows["timestamp"].tolist() == _utc("2013-02-20", "2013-02-21", "2013-02-22", "2013-02-25",
                                                  "2013-02-26", "2013-02-27")
    _check_values(table, history)

    table = forecaster.predict_df("sample:stocks-daily", horizon=3, num_samples=32, symbols=["IBM"])  # a path too
    assert table["timestamp"].tolist() == _utc("2013-03-04", "2013-03-05", "2013-03-06")  # after Friday: Monday


def test_hourly_fx_skips_the_weekend_close(forecaster):
    prices = load_prices("sample:eurusd-hourly")
    assert prices["timestamp"].iloc[-1] == pd.Timestamp("2017-12-29 21:00", tz="UTC")  # Friday's last hour
    table = forecaster.predict_df(prices, horizon=5, num_samples=64)
    assert table["timestamp"].tolist() == _utc("2017-12-31 21:00", "2017-12-31 22:00", "2017-12-31 23:00",
                                               "2018-01-01 00:00", "2018-01-01 01:00")  # Sunday's open onwards
    _check_values(table, prices)


def test_crypto_trades_through_the_weekend_even_with_a_day_missing(forecaster):
    prices = _crypto(end="2024-03-01", drop=["2024-02-21"])  # ends on a Friday; a Wednesday is missing
    table = forecaster.predict_df(prices, horizon=4, num_samples=64)
    assert table["timestamp"].tolist() == _utc("2024-03-02", "2024-03-03", "2024-03-04", "2024-03-05")
    assert table["timestamp"].iloc[0].day_name() == "Saturday"
    _check_values(table, prices)


def test_the_paths_are_decoded_for_the_timestamps_reported(forecaster, stocks_frame, monkeypatch):
    """The times a seasonal or calendar forecaster decodes with are those of the frame (whole patches of them)."""
    seen = []
    original = Forecaster.sample_returns

    def spy(self, *args, **kwargs):
        seen.append(kwargs["target_times"])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Forecaster, "sample_returns", spy)
    given = pd.date_range("2013-03-05", periods=5, freq="2D", tz="UTC")  # every other day: the caller's calendar
    table = forecaster.predict_df(stocks_frame, horizon=5, num_samples=16, future_timestamps=given)
    (targets,) = seen
    P = forecaster.patch_len
    for i, (_, rows) in enumerate(table.groupby("symbol", sort=False)):
        assert len(targets[i]) == math.ceil(5 / P) * P
        assert pd.DatetimeIndex(targets[i][:5]).tz_localize("UTC").equals(pd.DatetimeIndex(rows["timestamp"]))
        assert rows["timestamp"].tolist() == list(given)


def test_caller_timestamps_per_symbol_and_the_wrong_ones_refused(forecaster, stocks_frame):
    frame = stocks_frame[stocks_frame["symbol"].isin(["IBM", "MSFT"])]
    mine = {"IBM": _utc("2013-03-04 16:00", "2013-03-05 16:00"), "MSFT": ["2013-03-10", "2013-03-11"]}
    table = forecaster.predict_df(frame, horizon=2, num_samples=16, future_timestamps=mine)
    assert table.loc[table["symbol"] == "IBM", "timestamp"].tolist() == mine["IBM"]
    assert table.loc[table["symbol"] == "MSFT", "timestamp"].tolist() == _utc(*mine["MSFT"])  # naive = UTC
    bad = [
        (_utc("2013-03-04"), "1 timestamps for a horizon of 2"),
        (_utc("2013-03-04", "2013-03-05", "2013-03-06"), "3 timestamps for a horizon of 2"),
        (_utc("2013-03-05", "2013-03-04"), "increasing"),
        (_utc("2013-03-01", "2013-03-04"), "not after the last bar"),
        ({"IBM": _utc("2013-03-04", "2013-03-05")}, "no entry for symbol 'MSFT'"),
        (["2013-03-04", "not a time"], "cannot read"),
        ("2013-03-04", "sequence"),
    ]
    for future, fragment in bad:
        with pytest.raises(ConfigError, match=fragment):
            forecaster.predict_df(frame, horizon=2, num_samples=16, future_timestamps=future)
    with pytest.raises(ConfigError, match="quantile_levels"):
        forecaster.predict_df(frame, horizon=2, quantile_levels=(0.5, 1.5))
    with pytest.raises(ConfigError, match="horizon"):
        forecaster.predict_df(frame, horizon=0)


def test_paths_as_a_tidy_frame_agree_with_predict_df(forecaster, stocks_frame):
    frame = stocks_frame[stocks_frame["symbol"].isin(["IBM", "MSFT"])]
    paths = forecaster.sample_paths(frame, 3, 32, seed=5)
    tidy = paths.to_frame()
    assert list(tidy.columns) == ["symbol", "sample", "step", "timestamp", "log_return", "cumulative", "price"]
    assert len(tidy) == 2 * 32 * 3
    ibm = tidy[tidy["symbol"] == "IBM"]
    assert pd.DatetimeIndex(ibm.loc[ibm["sample"] == 7, "timestamp"]).equals(paths.future_timestamps[0])
    np.testing.assert_allclose(ibm.loc[ibm["sample"] == 7, "log_return"], paths.for_symbol("IBM")[7])
    np.testing.assert_allclose(ibm["cumulative"], ibm.groupby("sample")["log_return"].cumsum())
    np.testing.assert_allclose(ibm["price"], paths.last_close[0] * np.exp(ibm["cumulative"]))

    table = forecaster.predict_df(frame, horizon=3, num_samples=32, seed=5)  # the same paths
    means = tidy.groupby(["symbol", "timestamp"], sort=True)[["cumulative", "price"]].mean().reset_index()
    np.testing.assert_allclose(table["mean"], means["cumulative"])
    np.testing.assert_allclose(table["price_mean"], means["price"])  # the mean price, not exp(mean return)
    assert not np.allclose(table["price_mean"], table["symbol"].map(frame.groupby("symbol")["close"].last())
                           * np.exp(table["mean"]))


def test_notebook_summary_escapes_symbols(forecaster, tiny_run):  # noqa: F811
    paths = forecaster.sample_paths(tiny_run[1], 4, 16)
    page = paths._repr_html_()
    assert "&lt;script&gt;" in page and SCRIPT_SYMBOL not in page
    assert "MSFT" in page and "16 sample paths x 4 bar(s)" in page


def test_in_memory_frames_of_every_common_shape(forecaster, stocks_frame):
    ibm = stocks_frame[stocks_frame["symbol"] == "IBM"].tail(300)
    expected = load_prices(ibm)
    shapes = {
        "naive": ibm.assign(timestamp=ibm["timestamp"].dt.tz_localize(None)),
        "other zone": ibm.assign(timestamp=ibm["timestamp"].dt.tz_convert("America/New_York")),
        "text": ibm.assign(timestamp=ibm["timestamp"].dt.strftime("%Y-%m-%d")),
    }
    for name, frame in shapes.items():
        pd.testing.assert_frame_equal(load_prices(frame), expected, check_dtype=False, obj=name)
    by_date = ibm.drop(columns="symbol").rename(columns={"timestamp": "Date", "close": "Close"}).set_index("Date")
    series = load_prices(by_date)
    assert series["symbol"].unique().tolist() == ["series"]
    np.testing.assert_array_equal(series["close"], expected["close"])
    table = forecaster.predict_df(by_date, horizon=2, num_samples=16)
    assert table["symbol"].tolist() == ["series", "series"]
    assert table["timestamp"].tolist() == _utc("2013-03-04", "2013-03-05")


def test_progress_bars_show_in_terminals_and_notebooks_not_in_logs(forecaster, stocks_frame, capsys, monkeypatch):
    frame = stocks_frame[stocks_frame["symbol"] == "IBM"]
    forecaster.predict_df(frame, horizon=2, num_samples=8)
    assert "sampling" not in capsys.readouterr().err  # stderr is not a terminal here
    forecaster.predict_df(frame, horizon=2, num_samples=8, progress=True)
    assert "sampling" in capsys.readouterr().err
    assert show_progress(None) is False
    kernel_shell = types.SimpleNamespace(kernel=object())
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: kernel_shell))
    assert show_progress(None) is True and show_progress(False) is False
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: None))  # plain python
    assert show_progress(None) is False


def test_enable_logging_adds_one_stderr_handler(capsys):
    logger = logging.getLogger("pricegpt")
    saved = logger.handlers[:], logger.level, logger.propagate
    try:
        logger.handlers[:] = []
        assert pricegpt.enable_logging() is logger
        pricegpt.enable_logging("debug")
        assert len(logger.handlers) == 1 and logger.level == logging.DEBUG
        logger.debug("fitting the tokenizer")
        assert "DEBUG pricegpt: fitting the tokenizer" in capsys.readouterr().err
        pricegpt.enable_logging(logging.WARNING)
        logger.info("quiet now")
        assert capsys.readouterr().err == ""
        with pytest.raises(ConfigError, match="LOUD"):
            pricegpt.enable_logging("LOUD")
    finally:
        logger.handlers[:], logger.level, logger.propagate = saved


def test_notebook_mistakes_are_config_errors_before_any_sampling(forecaster, tiny_run, tmp_path):  # noqa: F811
    """What a notebook user gets wrong is a ConfigError naming the argument, never a raw TypeError or an empty or
    duplicated table; save_pretrained never replaces a run directory; the pipeline checks its values first."""
    import shutil

    from pricegpt.errors import OutputExistsError
    from pricegpt.evaluate import evaluate_run
    from pricegpt.pipeline import run_pipeline

    run_dir, csv, _ = tiny_run
    frame = load_prices(csv)
    symbol = sorted(frame["symbol"].unique())[0]
    for bad, fragment in (([], "symbols is empty"), ([symbol, symbol], "twice"), (5, "list of symbol names")):
        with pytest.raises(ConfigError, match=fragment):
            forecaster.predict_df(frame, 2, symbols=bad, num_samples=4)
    assert forecaster.predict_df(frame, 2, symbols=symbol, num_samples=4)["symbol"].unique().tolist() == [symbol]
    for bad in ((2,), 0.5, None):
        with pytest.raises(ConfigError, match="quantile_levels"):
            forecaster.predict_quantiles(frame, 2, levels=bad, num_samples=4)
    with pytest.raises(ConfigError, match="autocast"):
        Forecaster.from_run(run_dir, autocast="bf16")
    with pytest.raises(ConfigError, match="run_dir must be a path"):
        Forecaster.from_run(None)
    with pytest.raises(ConfigError, match="at least 2"):
        evaluate_run(run_dir, data=csv, num_samples=1, out=tmp_path / "e")
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    with pytest.raises(OutputExistsError, match="not a forecaster folder"):
        Forecaster.from_run(run).save_pretrained(run, overwrite=True)
    assert (run / "model" / "model.safetensors").is_file()
    for kwargs, fragment in ((dict(num_samples=0), "--num-samples"), (dict(horizon=0), "--horizon"),
                             (dict(nosuch=1), "unknown pipeline setting"), (dict(overrides="x=1"), "overrides")):
        with pytest.raises(ConfigError, match=fragment):
            run_pipeline(csv, tmp_path / "p", **kwargs)
        assert not (tmp_path / "p").exists()
