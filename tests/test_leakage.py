"""One leakage rule for calibration, evaluation and backtests; values checked before any work; outputs that never
replace a user's file; reports and CSVs that never turn a symbol into markup or a formula; per-origin seeds.

Every case runs the real command in-process (`pricegpt.cli.main`) or the library API on one tiny run: a quantile
tokenizer and an untrained (random, context-sensitive) GPT with recorded cutoffs, on two real symbols renamed to a
Markdown link and a 300-character spreadsheet formula, whose test split holds exactly 45 bars.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import assert_user_error
from pricegpt.data import iso
from test_reliability import cli, tree

LINK = "[x](javascript:alert(1))"
FORMULA = '=HYPERLINK("http://evil.example/x","click")'  # also a path: '/' and ':' must not reach a file name
TEST_BARS = 45


@pytest.fixture(scope="module")
def world(tmp_path_factory, stocks_frame):
    """(folder, run, prices.csv, frame, train_end, val_end): the run records its cutoffs and its data."""
    from pricegpt.data import load_prices
    from pricegpt.fileio import write_json
    from pricegpt.model.gpt import GPT, GPTConfig
    from pricegpt.tokenizer import create_tokenizer

    root = tmp_path_factory.mktemp("leakage")
    frame = stocks_frame[stocks_frame["symbol"].isin(["AAPL", "MSFT"])
                         & (stocks_frame["timestamp"] >= pd.Timestamp("2011-06-01", tz="UTC"))].copy()
    frame["symbol"] = frame["symbol"].replace({"AAPL": LINK, "MSFT": FORMULA})
    csv = root / "prices.csv"
    frame.to_csv(csv, index=False)
    frame = load_prices(csv)
    times = np.sort(frame["timestamp"].unique())
    val_end = pd.Timestamp(times[-TEST_BARS - 1])
    train_end = pd.Timestamp(times[len(times) // 2])
    run = root / "run"
    tokenizer = create_tokenizer("quantile", patch_len=2, codebook_size=16).fit(frame, train_end=train_end)
    tokenizer.save_pretrained(run / "tokenizer")
    torch.manual_seed(0)
    model = GPT(GPTConfig(sequence_len=8, vocab_size=16, n_layer=1, n_head=2, n_kv_head=2, n_embd=16,
                          zero_init_head=False, zero_init_proj=False))
    model.save_pretrained(run / "model")
    write_json(run / "model" / "meta.json", {"train_end": iso(train_end), "val_end": iso(val_end)})
    write_json(run / "run.json", {"data": str(csv), "horizon": 2})
    return root, run, csv, frame, train_end, val_end


def refused(capsys, world, *args, fragments=()):
    """Run `pricegpt ARGS`: a user error (exit 2, one `error:` line, no traceback) that changed no file."""
    root = world[0]
    before = tree(root)
    result = cli(capsys, *args)
    assert_user_error(result, *fragments)
    assert tree(root) == before
    return result


# ---------------------------------------------------------------------------------------------- 7. leakage
def test_a_file_ending_inside_the_validation_period_is_refused_by_backtest_and_evaluate(world, capsys):
    root, run, csv, frame, train_end, val_end = world
    early = root / "early.csv"
    frame[frame["timestamp"] <= val_end - pd.Timedelta(days=5)].to_csv(early, index=False)
    try:
        error = refused(capsys, world, "backtest", "--run", run, "--data", early, "--out", root / "bt",
                        fragments=(f"val_end {iso(val_end)}", "chosen on those bars", "the data ends on"))
        assert "extends past" in error.stderr
        refused(capsys, world, "evaluate", "--run", run, "--data", early, "--num-samples", 4,
                fragments=(f"val_end {iso(val_end)}", "--allow-overlap"))
    finally:
        early.unlink()


def test_an_explicit_cutoff_cannot_move_the_test_or_validation_window_into_seen_bars(world):
    from pricegpt.backtest import run_backtest
    from pricegpt.data import time_splits
    from pricegpt.data.windows import LeakageError
    from pricegpt.forecast import calibrate_temperature
    from pricegpt.runs import load_run

    root, run, csv, frame, train_end, val_end = world
    before = tree(root)
    with pytest.raises(LeakageError, match=f"val_end {iso(val_end)}"):
        run_backtest(run, val_end=val_end - pd.Timedelta(days=30), num_samples=4, write=False)
    # calibration: a val window that reaches into the run's test bars, or starts before its train_end
    for wrong in (time_splits(frame, train_end=train_end, val_end=frame["timestamp"].max()),
                  time_splits(frame, train_end=train_end - pd.Timedelta(days=60), val_end=val_end)):
        with pytest.raises(LeakageError, match="calibration origins"):
            calibrate_temperature(load_run(run), frame, wrong, horizon=2, num_samples=4, grid=(1.0,), max_origins=2)
    assert tree(root) == before  # no calibration.json written


# -------------------------------------------------------------------------------------------- 5. values
@pytest.mark.parametrize("args, fragments", [
    (["backtest", "--horizon", "2000"], ("test split", f"has {TEST_BARS} bars", "--horizon")),
    (["backtest", "--cost-bps", "1e300"], ("--cost-bps", "10000")),
    (["backtest", "--slippage-bps", "inf"], ("--slippage-bps",)),
    (["backtest", "--seed", "-1"], ("seed",)),
    (["backtest", "--seed", "99999999999999999999"], ("seed",)),
    (["backtest", "--num-samples", "1000000000"], ("num-samples", "1000000")),
    (["evaluate", "--seed", "-1"], ("seed",)),
    (["evaluate", "--num-samples", "1000000000"], ("num-samples",)),
    (["evaluate", "--horizon", "2000"], ("test split", f"has {TEST_BARS} bars")),
    (["forecast", "--symbol", LINK, "--horizon", "2", "--seed", "99999999999999999999"], ("seed",)),
    (["forecast", "--symbol", LINK, "--horizon", "100000", "--num-samples", "1000000"], ("memory",)),
    (["forecast", "--symbol", "NOPE", "--horizon", "2"], ("NOPE", "not in the data")),
])
def test_values_are_refused_before_any_work(world, capsys, args, fragments):
    root, run, csv = world[:3]
    extra = ["--run", run] + (["--data", csv] if args[0] == "forecast" else [])
    if args[0] == "backtest":
        extra += ["--out", root / "bt"]
    start = time.perf_counter()
    refused(capsys, world, *args, *extra, fragments=fragments)
    assert time.perf_counter() - start < 10  # refused up front, not after sampling


@pytest.mark.parametrize("kwargs, fragment", [
    ({"seed": -1}, "seed"), ({"seed": 2**63}, "seed"), ({"num_samples": 10**9}, "num-samples"),
    ({"horizon": 0}, "horizon"), ({"horizon": 2.5}, "horizon"), ({"cost_bps": float("nan")}, "cost-bps"),
    ({"cost_bps": 1e300}, "cost-bps"), ({"horizon": TEST_BARS}, f"has {TEST_BARS} bars"),
])
def test_the_library_checks_the_same_values_for_api_callers(world, kwargs, fragment):
    from pricegpt.backtest import run_backtest
    from pricegpt.errors import PriceGPTError
    from pricegpt.evaluate import evaluate_run

    root, run = world[:2]
    before = tree(root)
    with pytest.raises(PriceGPTError, match=fragment):
        run_backtest(run, **{"num_samples": 4, **kwargs})
    if "cost_bps" not in kwargs:
        if kwargs == {"horizon": TEST_BARS}:  # evaluation needs one whole target, a backtest two decisions
            kwargs = {"horizon": TEST_BARS + 1}
        with pytest.raises(PriceGPTError, match=fragment):
            evaluate_run(run, **{"num_samples": 4, "horizon": 2, **kwargs})
    assert tree(root) == before


def test_a_symbol_with_too_little_history_is_a_clear_error(world, capsys):
    root, run, csv, frame = world[:4]
    short = root / "short.csv"
    frame.groupby("symbol").head(2).to_csv(short, index=False)  # one return per symbol, a patch needs two
    try:
        refused(capsys, world, "forecast", "--run", run, "--data", short, "--symbol", LINK, "--horizon", "2",
                fragments=("at least 2 bars of history",))
    finally:
        short.unlink()


# ------------------------------------------------------------------------------------ 4. forecast --out
def test_forecast_never_replaces_a_users_file(world, capsys):
    root, run, csv = world[:3]
    mine = root / "mine.png"
    mine.write_bytes(b"\x89PNG\r\n\x1a\n my own chart")
    refused(capsys, world, "forecast", "--run", run, "--data", csv, "--symbol", LINK, "--horizon", "2", "--out", csv,
            fragments=("ending in .png",))  # the data file itself
    refused(capsys, world, "forecast", "--run", run, "--data", csv, "--symbol", LINK, "--horizon", "2", "--out", mine,
            fragments=("already exists", "choose another --out"))
    refused(capsys, world, "forecast", "--run", run, "--data", csv, "--symbol", LINK, "--horizon", "2", "--out",
            root / "chart.jpg", fragments=(".png",))
    # pricegpt's own chart in RUN/forecast/ is replaced, by default and when named
    for _ in range(2):
        result = cli(capsys, "forecast", "--run", run, "--data", csv, "--symbol", FORMULA, "--horizon", "2",
                     "--num-samples", "8")
        assert result.returncode == 0, result.stderr
    chart = next((run / "forecast").glob("*.png"))
    assert chart.parent == run / "forecast" and '"' not in chart.name and "=" not in chart.name
    result = cli(capsys, "forecast", "--run", run, "--data", csv, "--symbol", FORMULA, "--horizon", "2",
                 "--num-samples", "8", "--out", chart)
    assert result.returncode == 0, result.stderr


# ----------------------------------------------------------------------------------- 8. reports and CSVs
def test_reports_and_csvs_never_turn_a_symbol_into_markup_or_a_formula(world, capsys):
    root, run, csv = world[:3]
    result = cli(capsys, "evaluate", "--run", run, "--num-samples", "8", "--max-origins", "2")
    assert result.returncode == 0, result.stderr
    markdown = (run / "eval" / "report.md").read_text()
    assert LINK not in markdown and "\\[x\\](javascript:alert(1))" in markdown
    assert "](javascript" not in markdown.replace("\\](", "")
    html_report = (run / "eval" / "report.html").read_text()
    assert "<a " not in html_report and "[x](javascript:alert(1))" in html_report
    assert all(len(p.name) < 100 for p in (run / "eval").iterdir())
    result = cli(capsys, "backtest", "--run", run, "--horizon", "4", "--num-samples", "8")
    assert result.returncode == 0, result.stderr
    for name in ("positions.csv", "decisions.csv"):
        table = pd.read_csv(run / "backtest" / name)
        symbols = set(table["symbol"])
        assert symbols == {LINK, "'" + FORMULA}, symbols  # the formula is text; the other symbol is untouched
        assert not any(str(v).startswith(("=", "+", "-", "@")) for v in table["symbol"])
    positions = pd.read_csv(run / "backtest" / "positions.csv")
    assert (positions["bar_return"] < 0).any()  # negative numbers stay numbers
    assert len(positions.groupby("symbol")) == 2 and positions.groupby("symbol").size().max() == TEST_BARS


# ------------------------------------------------------------------------------------------- 8. seeds
def test_an_origins_paths_do_not_depend_on_the_other_origins(world):
    from pricegpt.data.windows import select_origins, symbol_series
    from pricegpt.forecast import Forecaster

    root, run, csv, frame, train_end, val_end = world
    from pricegpt.data.windows import resolve_cutoffs

    forecaster = Forecaster.from_run(run)
    cutoffs = resolve_cutoffs(frame, "test", forecaster.run)
    series = symbol_series(forecaster.features(frame), cutoffs.splits)
    origins = select_origins(series, "test", 2, min_context=2)
    assert len(set(origins.symbols)) == 2 and origins.n > 4

    def paths(chosen):
        return forecaster.sample_cumulative(chosen.contexts(series), chosen.symbols, 2, 16, seed=5,
                                            context_ends=chosen.context_end(series))

    together = paths(origins)
    k = origins.n - 1  # the last origin, alone, with its own symbol only, and in reverse order
    np.testing.assert_array_equal(paths(origins.take([k]))[0], together[k])
    mine = origins.symbols == origins.symbols[k]
    np.testing.assert_array_equal(paths(origins.take(mine))[-1], together[k])
    np.testing.assert_array_equal(paths(origins.take(np.arange(origins.n)[::-1]))[0], together[k])
    assert not np.array_equal(together[0], together[1])  # different origins do get different streams


def test_evaluate_takes_a_data_frame_like_a_path(world, tmp_path):
    from pricegpt.evaluate import evaluate_run

    root, run, csv, frame = world[:4]
    from_path = evaluate_run(run, data=str(csv), num_samples=8, max_origins=2, out=tmp_path / "a")
    from_frame = evaluate_run(run, data=frame, num_samples=8, max_origins=2, out=tmp_path / "b")
    assert from_frame["data"] == "in-memory DataFrame"
    assert from_frame["forecast"]["model"] == from_path["forecast"]["model"]
