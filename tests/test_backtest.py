"""Backtest: costs, statistics, position timing, no look-ahead, buy-and-hold, outputs and the CLI."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pandas as pd
import pytest
import torch

from pricegpt.backtest import (
    BacktestConfig,
    BootstrapForecaster,
    bars_per_year,
    kelly_positions,
    momentum_positions,
    performance,
    run_backtest,
    sharpe_ci,
    sign_positions,
    simulate,
    stationary_bootstrap_indices,
    walk_forward,
)
from pricegpt.cli.text import headline
from pricegpt.errors import ConfigError, OutputExistsError

VAL_END = pd.Timestamp("2011-03-19", tz="UTC")
CUT = pd.Timestamp("2012-03-15", tz="UTC")  # about the middle of the stocks-daily test split (2011-03 .. 2013-03)
DECISION_COLUMNS = ["timestamp", "symbol", "trailing_return", "p_up", "mean", "var", "var_95", "es_99", "target",
                    "momentum_target"]


# --------------------------------------------------------------------------------------------- pure layer
def test_costs_reduce_returns_by_exactly_turnover_times_cost():
    rng = np.random.default_rng(0)
    returns = rng.normal(0, 0.01, size=(50, 3))
    positions = rng.choice([-1.0, 0.0, 0.5, 1.0], size=(50, 3))
    gross, turnover = simulate(positions, returns)
    net, turnover_again = simulate(positions, returns, cost_bps=2.0, slippage_bps=0.5)
    np.testing.assert_array_equal(turnover, turnover_again)
    np.testing.assert_allclose(gross - net, turnover * 2.5e-4, rtol=0, atol=1e-15)
    # turnover counts the entry from flat and every change, nothing else
    np.testing.assert_array_equal(turnover[0], np.abs(positions[0]))
    np.testing.assert_array_equal(turnover[1:], np.abs(np.diff(positions, axis=0)))
    one, _ = simulate(positions[:, 1], returns[:, 1], cost_bps=2.0, slippage_bps=0.5)
    np.testing.assert_array_equal(one, net[:, 1])
    assert np.all(net <= gross) and np.any(net < gross)


def test_known_positions_give_hand_computed_statistics():
    # long, long, short, short on returns +2%, -1%, -2%, +1% -> gross +2%, -1%, +2%, -1%
    positions = np.array([1.0, 1.0, -1.0, -1.0])
    returns = np.array([0.02, -0.01, -0.02, 0.01])
    net, turnover = simulate(positions, returns)
    np.testing.assert_allclose(net, [0.02, -0.01, 0.02, -0.01])
    stats = performance(net, bars_per_year=252, turnover=turnover, positions=positions)
    # mean 0.005, sample std sqrt(0.0009 / 3) = sqrt(0.0003): Sharpe = 0.005 / sqrt(0.0003) * sqrt(252) = sqrt(21)
    assert stats["sharpe"] == pytest.approx(math.sqrt(21), rel=1e-12)
    # downside deviation sqrt((0.01^2 + 0.01^2) / 4) = sqrt(0.00005): Sortino = sqrt(126)
    assert stats["sortino"] == pytest.approx(math.sqrt(126), rel=1e-12)
    # equity 1.02, 1.0098, 1.029996, 1.01969604: both dips are exactly 1% below the running peak
    assert stats["max_drawdown"] == pytest.approx(-0.01, abs=1e-12)
    assert stats["total_return"] == pytest.approx(1.02 ** 2 * 0.99 ** 2 - 1, rel=1e-12)
    assert stats["cagr"] == pytest.approx((1.02 ** 2 * 0.99 ** 2) ** (252 / 4) - 1, rel=1e-9)
    assert stats["turnover"] == pytest.approx((1 + 0 + 2 + 0) / 4)
    assert stats["hit_rate"] == 0.5
    # a deeper, later drawdown is the one reported
    stats = performance(np.array([0.1, -0.05, 0.1, -0.2, -0.1, 0.3]), bars_per_year=12)
    assert stats["max_drawdown"] == pytest.approx(0.8 * 0.9 - 1)
    flat = performance(np.zeros(10), bars_per_year=252, turnover=np.zeros(10), positions=np.zeros(10))
    assert flat["sharpe"] is None and flat["hit_rate"] is None and flat["total_return"] == 0.0


def test_sharpe_ci_is_a_seeded_stationary_bootstrap():
    rng = np.random.default_rng(3)
    drift = rng.normal(0.002, 0.01, size=1000)  # true annualised Sharpe about 3.2
    ci = sharpe_ci(drift, 252, n_boot=400, seed=1)
    point = performance(drift, 252)["sharpe"]
    assert 0 < ci["low"] < point < ci["high"]
    assert ci == sharpe_ci(drift, 252, n_boot=400, seed=1)
    assert ci["low"] != sharpe_ci(drift, 252, n_boot=400, seed=2)["low"]
    noise = sharpe_ci(rng.normal(0, 0.01, size=1000), 252, n_boot=400, seed=1)
    assert noise["low"] < 0 < noise["high"]
    assert "stationary" in ci["method"] and ci["mean_block"] == pytest.approx(10.0)
    # blocks: consecutive indices continue with probability 1 - 1/mean_block
    idx = stationary_bootstrap_indices(500, 200, 10.0, np.random.default_rng(0))
    continues = np.mean(np.diff(idx, axis=1) % 500 == 1)
    assert 0.88 < continues < 0.92


def test_strategy_rules():
    p_up = np.array([0.7, 0.55, 0.5, 0.45, 0.2])
    np.testing.assert_array_equal(sign_positions(p_up), [1, 0, 0, 0, -1])
    np.testing.assert_array_equal(sign_positions(p_up, long_only=True), [1, 0, 0, 0, 0])
    np.testing.assert_array_equal(sign_positions(p_up, long_above=0.5, short_below=0.5), [1, 1, 0, -1, -1])
    mean, var = np.array([0.01, -0.01, 0.001, 0.0, 0.01]), np.array([0.001, 0.001, 0.01, 0.0, 0.0])
    np.testing.assert_allclose(kelly_positions(mean, var), [1.0, -1.0, 0.05, 0.0, 1.0])
    np.testing.assert_allclose(kelly_positions(mean, var, fraction=0.1, cap=0.5, long_only=True),
                               [0.5, 0.0, 0.01, 0.0, 0.5])
    np.testing.assert_array_equal(momentum_positions([0.1, -0.2, 0.0]), [1, -1, 0])
    np.testing.assert_array_equal(momentum_positions([0.1, -0.2], long_only=True), [1, 0])
    with pytest.raises(ConfigError, match="short_below"):
        BacktestConfig(long_above=0.4, short_below=0.6)
    with pytest.raises(ConfigError, match="--strategy"):
        BacktestConfig(strategy="martingale")


def test_bars_per_year_from_the_data(stocks_frame):
    from pricegpt.data import load_prices

    aapl = stocks_frame.loc[stocks_frame["symbol"] == "AAPL", "timestamp"]
    assert 249 < bars_per_year(aapl) < 254
    fx = load_prices("sample:eurusd-hourly")["timestamp"]
    assert 6000 < bars_per_year(fx) < 6400  # 24 x 5 hourly bars


# ------------------------------------------------------------------------------------------ walk-forward
class LastReturnForecaster:
    """Every sampled path repeats the context's last return: P(up) is 1 exactly when the decision bar rose."""

    def sample_cumulative(self, contexts, symbols, horizon, num_samples, *, seed=0, context_ends=None):
        last = np.array([np.asarray(c, dtype=float).reshape(len(c), -1)[-1, 0] for c in contexts])
        return np.cumsum(np.broadcast_to(last[:, None, None], (len(last), num_samples, horizon)), axis=-1)


def test_position_is_decided_at_a_close_and_held_from_the_next_bar(stocks_frame):
    frame = stocks_frame[stocks_frame["symbol"] == "IBM"]
    returns = np.diff(np.log(frame["close"].to_numpy()))
    times = frame["timestamp"].iloc[1:]  # the timestamp of each return
    walk = walk_forward(frame, LastReturnForecaster(), VAL_END, BacktestConfig(horizon=1, num_samples=4))
    bars = walk.bars
    first = int((times <= VAL_END).sum())  # the first test bar: the first bar held, decided at the close before
    assert bars["timestamp"].iloc[0] == times.iloc[first] and len(bars) == len(returns) - first
    assert walk.decisions["timestamp"].iloc[0] == times.iloc[first - 1]
    # held during bar t = sign of bar t-1's return (the last return known at the decision), never of bar t's own
    np.testing.assert_array_equal(bars["position"].to_numpy(), np.sign(returns[first - 1:-1]))
    np.testing.assert_allclose(bars["bar_return"].to_numpy(), np.expm1(returns[first:]))
    # rebalancing every 3 bars: positions change only on bars after a decision
    walk = walk_forward(frame, LastReturnForecaster(), VAL_END, BacktestConfig(horizon=2, rebalance=3, num_samples=4))
    held = walk.bars["position"].to_numpy()
    np.testing.assert_array_equal(held, np.repeat(np.sign(returns[first - 1:-1:3]), 3)[:len(held)])
    assert len(walk.decisions) == math.ceil((len(returns) - first) / 3)


def _moved_after(frame: pd.DataFrame, cut: pd.Timestamp, seed: int = 0) -> pd.DataFrame:
    """The same frame with every price after `cut` on a different random path (same bars, still > 0)."""
    moved = frame.copy()
    later = moved["timestamp"] > cut
    shock = np.exp(np.random.default_rng(seed).normal(0, 0.03, size=int(later.sum())).cumsum())
    for column in ("open", "high", "low", "close"):
        moved.loc[later, column] = moved.loc[later, column] * shock
    return moved


def _assert_no_lookahead(frame, forecaster, config, val_end=VAL_END):
    base = walk_forward(frame, forecaster, val_end, config)
    # cut at a decision time inside the test split, so even a one-bar peek at the future would show
    times = base.decisions["timestamp"]
    cut = times[times >= CUT].min()
    moved = walk_forward(_moved_after(frame, cut), forecaster, val_end, config)
    short = walk_forward(frame[frame["timestamp"] <= cut], forecaster, val_end, config)

    def decided(walk, until):
        d = walk.decisions
        return d.loc[d["timestamp"] <= until, DECISION_COLUMNS].reset_index(drop=True)

    last_short = short.decisions["timestamp"].max()
    pd.testing.assert_frame_equal(decided(base, cut), decided(moved, cut))
    pd.testing.assert_frame_equal(decided(base, last_short), decided(short, last_short))
    # every bar up to the cut, and the first bar after it (decided at or before the cut), keeps its position
    for symbol, group in base.bars.groupby("symbol"):
        upto = int((group["timestamp"] <= cut).sum()) + 1
        for other in (moved, short):
            theirs = other.bars[other.bars["symbol"] == symbol]
            n = min(upto, len(theirs))
            np.testing.assert_array_equal(group["position"].to_numpy()[:n], theirs["position"].to_numpy()[:n])
            np.testing.assert_array_equal(group["momentum_position"].to_numpy()[:n],
                                          theirs["momentum_position"].to_numpy()[:n])
    # the change after the cut is seen by the later decisions: the comparison above could fail
    later = base.decisions["timestamp"] > cut
    assert not np.allclose(base.decisions.loc[later, "p_up"], moved.decisions.loc[later, "p_up"])


def test_no_lookahead_with_a_statistical_forecaster(stocks_frame):
    _assert_no_lookahead(stocks_frame, BootstrapForecaster(window=60),
                         BacktestConfig(horizon=5, num_samples=64, seed=7))


@pytest.fixture(scope="module")
def tiny_run(stocks_frame, tmp_path_factory):
    """A real run directory: a quantile tokenizer fit on the train split and a tiny, untrained but
    context-sensitive GPT (random non-zero head), so the model path of the backtest runs end to end in seconds."""
    from pricegpt.data import iso
    from pricegpt.fileio import write_json
    from pricegpt.model.gpt import GPT, GPTConfig
    from pricegpt.tokenizer import create_tokenizer

    train_end = pd.Timestamp("2009-04-06", tz="UTC")
    run_dir = tmp_path_factory.mktemp("run")
    tokenizer = create_tokenizer("quantile", patch_len=4, codebook_size=16).fit(stocks_frame, train_end=train_end)
    tokenizer.save_pretrained(run_dir / "tokenizer")
    torch.manual_seed(0)
    model = GPT(GPTConfig(sequence_len=8, vocab_size=16, n_layer=1, n_head=2, n_kv_head=2, n_embd=16,
                          zero_init_head=False, zero_init_proj=False))
    model.save_pretrained(run_dir / "model")
    write_json(run_dir / "model" / "meta.json", {"train_end": iso(train_end), "val_end": iso(VAL_END)})
    write_json(run_dir / "run.json", {"data": "sample:stocks-daily"})
    return run_dir


def test_no_lookahead_with_the_model_forecaster(stocks_frame, tiny_run):
    from pricegpt.forecast import Forecaster
    from pricegpt.model.gpt import GPT
    from pricegpt.runs import Run
    from pricegpt.tokenizer import load_tokenizer

    run = Run(dir=tiny_run, model=GPT.from_pretrained(tiny_run / "model").eval(),
              tokenizer=load_tokenizer(tiny_run / "tokenizer"))
    frame = stocks_frame[stocks_frame["symbol"].isin(["IBM", "MSFT"])]
    _assert_no_lookahead(frame, Forecaster(run), BacktestConfig(horizon=4, num_samples=16, seed=3))


# ---------------------------------------------------------------------------------------- outputs and CLI
@pytest.fixture(scope="module")
def stocks_backtest(stocks_frame, tmp_path_factory):
    out = tmp_path_factory.mktemp("bt") / "backtest"
    metrics = run_backtest(None, stocks_frame, forecaster=BootstrapForecaster(), horizon=5, out=out, n_boot=300,
                           val_end=VAL_END)
    return metrics, out


def test_buy_and_hold_is_the_price_change_over_the_window(stocks_frame, stocks_backtest):
    metrics, out = stocks_backtest
    positions = pd.read_csv(out / "positions.csv")
    for symbol, block in metrics["per_symbol"].items():
        close = stocks_frame.loc[stocks_frame["symbol"] == symbol].set_index("timestamp")["close"]
        first = pd.Timestamp(block["first_decision"])  # the window starts at the first decision's close
        expected = close.iloc[-1] / close.loc[first] - 1
        assert block["buy_and_hold"]["total_return"] == pytest.approx(expected, rel=1e-9)
        held = positions[positions["symbol"] == symbol]
        assert pd.Timestamp(held["timestamp"].iloc[0]) > first and len(held) == block["n_bars"]
    # single symbol: the portfolio is that symbol
    ibm = stocks_frame[stocks_frame["symbol"] == "IBM"]
    single = run_backtest(None, ibm, forecaster=BootstrapForecaster(), horizon=5, n_boot=50, val_end=VAL_END)
    assert single["buy_and_hold"]["total_return"] == pytest.approx(
        metrics["per_symbol"]["IBM"]["buy_and_hold"]["total_return"], rel=1e-12)
    assert single["strategy"] == single["per_symbol"]["IBM"]["strategy"]


def test_outputs_and_headline(stocks_frame, stocks_backtest, tmp_path):
    metrics, out = stocks_backtest
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "decisions.csv", "equity.png", "metrics.json", "positions.csv"]
    assert json.loads((out / "metrics.json").read_text()) == metrics
    for name in ("strategy", "buy_and_hold", "momentum"):
        assert set(metrics[name]) == {"total_return", "cagr", "sharpe", "sortino", "max_drawdown", "turnover",
                                      "hit_rate"}
        assert metrics["portfolio"][name] == metrics[name]
    assert set(metrics["per_symbol"]) == set(metrics["risk"]) == {"AAPL", "GOOG", "IBM", "MSFT"}
    risk = metrics["risk"]["AAPL"]
    assert 0 <= risk["var_95"] <= risk["es_95"] and risk["var_95"] <= risk["var_99"] <= risk["es_99"]
    assert set(risk["p_touch_down"]) == {"0.05", "0.1"} and 0 <= risk["p_up"] <= 1
    s = metrics["settings"]
    assert (s["horizon"], s["rebalance"], s["num_samples"], s["thresholds"]) == (
        5, 5, 256, {"long_above": 0.55, "short_below": 0.45})
    # decided at the close of the last validation bar at the earliest; every bar held is a test bar
    held = pd.read_csv(out / "positions.csv")["timestamp"]
    assert s["first_decision"] < "2011-03-19" < held.min() and s["n_decisions"] == sum(
        b["n_decisions"] for b in metrics["per_symbol"].values())
    assert metrics["sharpe_ci"]["low"] < metrics["strategy"]["sharpe"] < metrics["sharpe_ci"]["high"]
    assert (out / "equity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    line = headline(metrics)
    assert re.fullmatch(r"backtest \(sign, 1\.0 bps\): Sharpe -?\d+\.\d\d \[-?\d+\.\d\d, -?\d+\.\d\d\] vs "
                        r"buy-and-hold -?\d+\.\d\d, max DD -\d+\.\d%, turnover \d+\.\d\d/bar", line), line
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(OutputExistsError, match="does not hold a backtest"):
        run_backtest(None, stocks_frame[stocks_frame["symbol"] == "IBM"], forecaster=BootstrapForecaster(),
                     horizon=5, n_boot=10, val_end=VAL_END, out=tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


def test_cli_backtest_on_a_run(tiny_run):
    from conftest import run_cli

    result = run_cli("backtest", "--run", tiny_run, "--horizon", "20", "--num-samples", "16", "--cost-bps", "2",
                     "--strategy", "kelly", timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("backtest (kelly, 2.0 bps): Sharpe ")
    metrics = json.loads((tiny_run / "backtest" / "metrics.json").read_text())
    assert metrics["cost_bps"] == 2.0 and metrics["settings"]["forecaster"] == "Forecaster"
    assert metrics["settings"]["val_end"] == "2011-03-19T00:00:00Z" and metrics["portfolio"]["n_symbols"] == 4
    positions = pd.read_csv(tiny_run / "backtest" / "positions.csv")
    assert list(positions.columns[:3]) == ["timestamp", "symbol", "position"]
    assert positions["position"].abs().max() <= 1.0


def test_data_before_the_runs_train_end_is_refused(stocks_frame, tiny_run):
    from pricegpt.errors import PriceGPTError
    from pricegpt.runs import Run

    run = Run(dir=tiny_run, model=None, tokenizer=None, meta={"train_end": "2009-04-06T00:00:00Z",
                                                              "val_end": "2011-03-19T00:00:00Z"})
    early = stocks_frame[stocks_frame["timestamp"] < "2008-01-01"]
    with pytest.raises(PriceGPTError, match="val_end 2011-03-19.*chosen on those bars"):
        run_backtest(run, early, forecaster=BootstrapForecaster(), write=False)


# ------------------------------------------------------------------------------------------------ zero-shot
def _folder_state(folder):
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


def test_zero_shot_backtest_of_the_pretrained_model_writes_its_files_and_not_the_models(tmp_path):
    from pricegpt.backtest import backtest_model
    from pricegpt.data import load_prices
    from pricegpt.forecast.forecaster import resolve_model

    shipped = resolve_model("pricegpt-small")
    before = _folder_state(shipped)
    eurusd = load_prices("sample:eurusd-hourly").head(1600)  # 2017: after the model's 2015-12-31 data cutoff
    out = tmp_path / "zero"
    metrics = backtest_model("pricegpt-small", eurusd, out, num_samples=16, n_boot=50)
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "decisions.csv", "equity.png", "metrics.json", "positions.csv"]
    assert json.loads((out / "metrics.json").read_text()) == metrics
    zero, settings = metrics["zero_shot"], metrics["settings"]
    assert zero["data_cutoff"].startswith("2015-12-31") and zero["temperature_from"] == "this data's validation split"
    assert zero["temperature"] in (0.7, 0.8, 0.9, 1.0, 1.1, 1.25, 1.5)  # forecast.calibrate's grid
    # the data's own cutoffs split it (85% of its span), not the model's: every decision trades bars after both
    assert settings["train_end"] == zero["train_end"] > "2017" and settings["val_end"] == zero["val_end"]
    assert settings["run_val_end"].startswith("2015-12-31") and settings["horizon"] == 4
    held = pd.to_datetime(pd.read_csv(out / "positions.csv")["timestamp"])
    assert len(held) > 0 and (held > pd.Timestamp(zero["val_end"])).all()
    assert settings["overlap_allowed"] is False and settings["overlapping_decisions"] == 0
    assert _folder_state(shipped) == before  # the temperature was chosen in memory only


def test_zero_shot_backtest_refuses_bars_before_the_models_cutoff_and_needs_an_out(stocks_frame, tmp_path):
    from conftest import assert_user_error, run_cli
    from pricegpt.backtest import backtest_model
    from pricegpt.errors import LeakageError

    # the embedded daily stocks end in 2013: the pretrained model trained on such bars
    with pytest.raises(LeakageError, match=r"2015-12-31.*--allow-overlap"):
        backtest_model("pricegpt-small", stocks_frame, tmp_path / "bt", num_samples=16)
    assert not (tmp_path / "bt").exists()
    result = run_cli("backtest", "--model", "pricegpt-small", "--data", "sample:eurusd-hourly", cwd=tmp_path,
                     timeout=120)
    assert_user_error(result, "--out")
    result = run_cli("backtest", "--run", tmp_path, "--val-end", "2017-06-01", cwd=tmp_path, timeout=120)
    assert_user_error(result, "--val-end", "--model")
    assert [p.name for p in tmp_path.iterdir()] == []
