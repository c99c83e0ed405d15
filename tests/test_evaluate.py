"""Evaluation: honest origins, the leakage guard, baselines that never see the future, and end to end."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pricegpt.data import Splits, iso, time_splits
from pricegpt.data.windows import (
    LeakageError,
    Origins,
    check_leakage,
    resolve_cutoffs,
    select_origins,
    symbol_series,
)
from pricegpt.errors import PriceGPTError
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


def test_leakage_rule_refuses_targets_outside_the_stage_window(stocks_frame, stocks_series):
    from types import SimpleNamespace

    splits, series = stocks_series
    origins = select_origins(series, "test", 4, max_origins=3)

    def cutoffs(stage, train_end, val_end):
        run = SimpleNamespace(meta={"train_end": iso(train_end), "val_end": iso(val_end)}, tokenizer=None)
        return resolve_cutoffs(stocks_frame, stage, run, train_end=splits.train_end, val_end=splits.val_end)

    assert check_leakage(origins, series, cutoffs("test", splits.train_end, splits.val_end)) == 0
    starts = origins.target_start(series)
    late = pd.Timestamp(starts.max()).tz_localize("UTC")  # a run selected on bars up to the last origin
    with pytest.raises(LeakageError, match="val_end.*chosen on those bars.*--allow-overlap"):
        check_leakage(origins, series, cutoffs("test", splits.train_end, late))
    assert check_leakage(origins, series, cutoffs("test", splits.train_end, late), allow_overlap=True) > 0
    # a target starting exactly at val_end counts as leaked; the backtest has no --allow-overlap to offer
    exact = pd.Timestamp(starts.min()).tz_localize("UTC")
    with pytest.raises(LeakageError, match="extends past"):
        check_leakage(origins, series, cutoffs("backtest", splits.train_end, exact))
    # calibration: val targets must lie after train_end and end at or before val_end
    val = select_origins(series, "val", 4)
    assert check_leakage(val, series, cutoffs("calibrate", splits.train_end, splits.val_end), horizon=4) == 0
    ends = val.target_end(series, 4)
    early_val_end = pd.Timestamp(ends.max()).tz_localize("UTC") - pd.Timedelta(days=1)
    with pytest.raises(LeakageError, match="end after the run's val_end"):
        check_leakage(val, series, cutoffs("calibrate", splits.train_end, early_val_end), horizon=4)
    later_train_end = pd.Timestamp(val.target_start(series).min()).tz_localize("UTC")
    with pytest.raises(LeakageError, match="train_end.*trained on those bars"):
        check_leakage(val, series, cutoffs("calibrate", later_train_end, splits.val_end), horizon=4)


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
        assert set(notes) <= {"seasonal", "range_ewma"}, notes  # daily closes: no intraday times, no ranges
        out = {}
        for name in BASELINES:
            p = preds[name]
            if p is None:
                continue
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
        for name in base:
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
    # ... while the trailing windows do see the (past) validation bars (tests/test_baselines.py checks the rest)
    assert not np.array_equal(base["histvol20"]["std"], changed["histvol20"]["std"])


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


# ------------------------------------------------------------------------------------------------ end to end
SCRIPT_SYMBOL = '<script>alert("x")</script>'
TINY_TRAIN = ["model.sequence_len=16", "model.n_layer=1", "model.n_embd=32", "model.n_head=2", "model.n_kv_head=2",
              "train.batch_size=8", "train.eval_batches=2", "train.eval_every=10", "train.warmup_steps=5",
              "train.num_threads=1", "train.lr=1e-3"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, stocks_frame):
    """A real run on two symbols of sample:stocks-daily (IBM renamed to a <script> tag): quantile tokenizer,
    token store, 30 training steps of a very small GPT."""
    import torch

    from pricegpt.data import load_prices
    from pricegpt.tokenizer import fit_to_dir, load_tokenizer, write_token_store
    from pricegpt.train import train_run

    root = tmp_path_factory.mktemp("eval_e2e")
    frame = stocks_frame[stocks_frame["symbol"].isin(["IBM", "MSFT"])
                         & (stocks_frame["timestamp"] >= pd.Timestamp("2006-01-01", tz="UTC"))].copy()
    frame["symbol"] = frame["symbol"].replace({"IBM": SCRIPT_SYMBOL})
    csv = root / "prices.csv"
    frame.to_csv(csv, index=False)
    frame = load_prices(csv)
    splits = time_splits(frame)
    run = root / "run"
    fit_to_dir(frame, run / "tokenizer", kind="quantile", train_end=splits.train_end, val_end=splits.val_end,
               codebook_size=16)
    write_token_store(load_tokenizer(run / "tokenizer"), frame, run / "tokens", splits)
    threads = torch.get_num_threads()
    try:
        train_run(tokens=run / "tokens", out=run, preset="tiny", overrides=TINY_TRAIN, max_steps=30,
                  allow_existing=True)
    finally:
        torch.set_num_threads(threads)
    return run, csv, splits


METRIC_KEYS = {"crps", "coverage_50", "coverage_90", "directional_accuracy", "mae_median"}


def test_evaluate_end_to_end(tiny_run):
    import json

    from pricegpt.evaluate import evaluate_run

    run, csv, splits = tiny_run
    metrics = evaluate_run(run, data=str(csv), horizon=4, num_samples=32, max_origins=4, seed=0,
                           ablation_runs={"quantile": run})
    assert json.loads((run / "eval" / "metrics.json").read_text()) == metrics
    assert metrics["split"] == "test" and metrics["train_end"] == splits.to_dict()["train_end"]
    assert metrics["n_symbols"] == 2 and metrics["n_tokens"] > 0
    for name in ("model", "unigram", "bigram"):
        assert set(metrics["tokens"][name]) >= {"loss", "perplexity", "top1", "top5"}
        assert metrics["tokens"][name]["perplexity"] == pytest.approx(np.exp(metrics["tokens"][name]["loss"]))
    fc = metrics["forecast"]
    assert fc["horizon_bars"] == 4 and fc["num_samples"] == 32 and fc["n_origins"] == 8
    assert fc["seasonal"] is None and "intraday" in fc["notes"]["seasonal"]  # daily bars
    for name in ("model", *(b for b in BASELINES if b != "seasonal")):
        assert fc[name] is not None, fc["notes"]
        assert set(fc[name]) >= METRIC_KEYS | {"width_50", "width_90", "pit_histogram", "directional_accuracy_ci95"}
        assert sum(fc[name]["pit_histogram"]) == fc["n_origins"]  # every forecaster scored on the same origins
        assert fc[name]["crps"] > 0 and 0 <= fc[name]["coverage_50"] <= fc[name]["coverage_90"] <= 1
    assert fc["crps_relative_to_histvol20"]["histvol20"] == 1.0
    assert sum(row["n_origins"] for row in fc["per_symbol"].values()) == fc["n_origins"]
    assert set(fc["risk"]) == {SCRIPT_SYMBOL, "MSFT"}
    assert {"p_up", "var_95", "es_95", "var_99", "es_99", "p_touch_up"} <= set(fc["risk"]["MSFT"])
    # the same run as an "ablation" on the same origins with the same seed reproduces the model exactly
    assert fc["ablations"]["quantile"]["crps"] == pytest.approx(fc["model"]["crps"], rel=1e-12)

    html_text = (run / "eval" / "report.html").read_text()
    assert "<script>" not in html_text and "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in html_text
    assert "data:image/png;base64," in html_text and 'src="fan_' not in html_text  # self-contained
    markdown = (run / "eval" / "report.md").read_text()
    assert "<script>" not in markdown and "&lt;script&gt;" in markdown
    assert list((run / "eval").glob("fan_*.png"))
    assert all("<" not in p.name for p in (run / "eval").iterdir())


def test_failed_evaluation_leaves_previous_results(tiny_run, monkeypatch):
    from pricegpt.evaluate import evaluate_run, report

    run, csv, _ = tiny_run
    evaluate_run(run, data=str(csv), horizon=4, num_samples=8, max_origins=1)
    before = (run / "eval" / "metrics.json").read_bytes()

    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(report, "write_report", broken)
    with pytest.raises(RuntimeError, match="disk on fire"):
        evaluate_run(run, data=str(csv), horizon=2, num_samples=8, max_origins=1)
    assert (run / "eval" / "metrics.json").read_bytes() == before
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".eval")) == []


def test_evaluation_refuses_test_origins_inside_the_training_period(tiny_run, tmp_path):
    from pricegpt.data import load_prices
    from pricegpt.evaluate import evaluate_run

    run, csv, splits = tiny_run
    frame = load_prices(csv)
    # files that end soon after the run's train_end (val_end): their own test splits lie in the training
    # (validation) period, which the model was fit (selected) on
    for end in (splits.train_end + pd.Timedelta(days=30), splits.val_end - pd.Timedelta(days=10)):
        path = tmp_path / "early.csv"
        frame[frame["timestamp"] <= end].to_csv(path, index=False)
        with pytest.raises(PriceGPTError, match="before the run's val_end.*--allow-overlap"):
            evaluate_run(run, data=str(path), horizon=4, num_samples=8, max_origins=2)
    allowed = evaluate_run(run, data=str(path), horizon=4, num_samples=8, max_origins=2, allow_overlap=True,
                           out=tmp_path / "eval")
    assert allowed["overlap_allowed"] and allowed["overlapping_origins"] == allowed["forecast"]["n_origins"] > 0
    assert "WARNING" in (tmp_path / "eval" / "report.md").read_text()
    # the validation split is guarded against the training period
    frame[frame["timestamp"] <= splits.train_end].to_csv(path, index=False)
    with pytest.raises(PriceGPTError, match="before the run's train_end"):
        evaluate_run(run, data=str(path), split="val", horizon=4, num_samples=8, max_origins=2)


def test_forecast_symbol_returns_quantiles_and_risk_and_writes_a_safely_named_chart(tiny_run):
    from pricegpt.errors import DataError
    from pricegpt.forecast import Forecaster, forecast_symbol

    run, csv, _ = tiny_run
    result = forecast_symbol(run, csv, SCRIPT_SYMBOL, horizon=6, num_samples=64, seed=0)
    assert list(result.table["step"]) == [1, 2, 3, 4, 5, 6] and set(result.table["symbol"]) == {SCRIPT_SYMBOL}
    assert {"p_up", "var_95", "es_99", "p_touch_up"} <= set(result.risk) and result.paths.paths.shape == (1, 64, 6)
    charts = [p for p in (run / "forecast").iterdir() if not p.name.startswith(".")]
    assert charts == [result.chart_path] and result.chart_path.suffix == ".png" and "<" not in result.chart_path.name
    again = forecast_symbol(Forecaster.from_run(run), csv, SCRIPT_SYMBOL, 6, 64, 0)  # its own chart is replaced
    assert again.table.equals(result.table) and again.risk == result.risk
    with pytest.raises(DataError, match=r"AAPL.*available: .*MSFT"):
        forecast_symbol(run, csv, "AAPL", 6, 64, 0)


def test_cli_forecast_prints_risk_and_the_chart(tiny_run, capsys):
    from pricegpt.cli.text import format_forecast
    from pricegpt.forecast import forecast_symbol
    from test_reliability import cli

    run, csv, _ = tiny_run
    printed = cli(capsys, "forecast", "--run", run, "--data", csv, "--symbol", "MSFT", "--horizon", 6,
                  "--num-samples", 64)
    assert printed.returncode == 0, printed.stderr
    assert "VaR 95%" in printed.stdout and "P(up over 6 bars)" in printed.stdout and "P(touch +5%)" in printed.stdout
    result = forecast_symbol(run, csv, "MSFT", 6, 64, 0)
    assert printed.stdout == format_forecast(result) + "\n"
    assert printed.stdout.endswith(f"fan chart: {run / 'forecast' / 'MSFT.png'}\n")


def test_calibrated_temperature_is_chosen_on_validation_and_used(tiny_run, tmp_path):
    import json
    import shutil

    from pricegpt.data import load_prices
    from pricegpt.forecast import Forecaster, calibrate_temperature
    from pricegpt.runs import load_run

    run_dir, csv, splits = tiny_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    run = load_run(copy)
    frame = load_prices(csv)
    result = calibrate_temperature(run, frame, splits, horizon=4, num_samples=16, grid=(0.5, 1.0, 2.0),
                                   max_origins=2)
    saved = json.loads((copy / "calibration.json").read_text())
    assert saved == result and saved["split"] == "val" and saved["n_origins"] == 4
    lowest = min((0.5, 1.0, 2.0), key=lambda t: saved["crps"][f"{t:g}"])
    assert saved["lowest_crps_temperature"] == lowest and lowest in saved["within_one_se"]
    # of the temperatures CRPS cannot tell apart, the one whose 90% interval covers closest to 90%
    tied = saved["within_one_se"]
    assert saved["temperature"] in tied
    assert abs(saved["coverage_90"][f"{saved['temperature']:g}"] - 0.9) == \
        min(abs(saved["coverage_90"][f"{t:g}"] - 0.9) for t in tied)
    assert Forecaster.from_run(copy).temperature == saved["temperature"]


def test_the_temperature_rule_prefers_calibrated_coverage_only_among_crps_ties():
    import numpy as np

    from pricegpt.forecast.calibrate import choose_temperature

    rng = np.random.default_rng(0)
    base = rng.gamma(2.0, 1.0, 400)
    noise = rng.normal(0, 0.05, (3, 400))
    # 1.0 is within noise of 0.8 (the lowest) and covers 90%; 1.2 is clearly worse by CRPS
    per_origin = {"0.8": base, "1": base + 0.001 + noise[1] - noise[1].mean(), "1.2": base + 0.5 + noise[2]}
    coverage = {"0.8": 0.84, "1": 0.90, "1.2": 0.90}
    lowest, chosen, tied = choose_temperature((0.8, 1.0, 1.2), per_origin, coverage)
    assert (lowest, chosen, tied) == (0.8, 1.0, [0.8, 1.0])
    # a significantly higher CRPS is never traded for coverage
    per_origin["1"] = base + 0.05
    assert choose_temperature((0.8, 1.0, 1.2), per_origin, coverage) == (0.8, 0.8, [0.8])


def test_an_evaluation_never_replaces_a_run_or_anything_but_an_earlier_evaluation(tiny_run, tmp_path):
    """--out onto the run directory itself, or onto a folder holding more than an evaluation, is refused before
    anything is sampled and leaves every file as it was; an earlier evaluation is replaced."""
    import shutil

    from pricegpt.errors import OutputExistsError
    from pricegpt.evaluate import evaluate_run

    run_dir, csv, _ = tiny_run
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    for out in (run, run / "model"):
        with pytest.raises(OutputExistsError, match="does not hold an evaluation"):
            evaluate_run(run, data=csv, num_samples=8, max_origins=2, horizons=[4], out=out)
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before
    evaluate_run(run, data=csv, num_samples=8, max_origins=2, horizons=[4], out=tmp_path / "e")
    evaluate_run(run, data=csv, num_samples=8, max_origins=2, horizons=[4], out=tmp_path / "e")  # replaced


@pytest.mark.parametrize("calibration, fragment", [({"crps": {}}, "has no temperature"),
                                                   ({"temperature": 1e308}, "not a number in [0.001, 100]")])
def test_a_damaged_calibration_names_its_file(tiny_run, tmp_path, calibration, fragment):
    import json
    import shutil

    from pricegpt.errors import CheckpointError
    from pricegpt.forecast import Forecaster

    run_dir, _, _ = tiny_run
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    (run / "calibration.json").write_text(json.dumps(calibration))
    with pytest.raises(CheckpointError, match="calibration.json") as err:
        Forecaster.from_run(run)
    assert fragment in str(err.value)
