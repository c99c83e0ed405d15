"""The README's commands, run for real as a new user would (shortened: fewer steps and samples).

One pipeline run on the embedded data is shared by the tests below; each then runs a documented command
against it in a subprocess, from the directory a user would be in.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from conftest import REPO, assert_user_error, run_cli

PIPELINE_ARGS = ("pipeline", "--data", "sample:stocks-daily", "--out", "runs/quickstart", "--preset", "tiny",
                 "--max-steps", "40", "--calibration-max-origins", "25", "--num-samples", "32")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A user's working directory after a (shortened) quickstart: runs/quickstart is a complete run."""
    cwd = tmp_path_factory.mktemp("user")
    result = run_cli(*PIPELINE_ARGS, cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "report:" in result.stdout and "backtest (" in result.stdout
    return cwd


def run_script(script: str, *args, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / script), *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=600)


def test_pipeline_writes_every_documented_output(workdir):
    run = workdir / "runs" / "quickstart"
    for rel in ("run.json", "config.yaml", "metrics.csv", "calibration.json", "tokenizer/report.json",
                "tokens/index.json", "tokens/all_tokens.txt", "model/config.json", "model/model.safetensors",
                "checkpoints/LATEST", "eval/metrics.json", "eval/report.md", "eval/report.html",
                "backtest/metrics.json", "backtest/positions.csv", "backtest/equity.png"):
        assert (run / rel).is_file(), rel
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["n_symbols"] == 4
    for name in ("model", "unigram", "bigram"):
        assert set(metrics["tokens"][name]) >= {"loss", "perplexity", "top1", "top5"}
    forecast = metrics["forecast"]
    assert forecast["horizon_bars"] == 4 and forecast["num_samples"] == 32 and forecast["n_origins"] > 100
    for name in ("model", "random_walk", "histvol20", "ewma", "bootstrap", "garch"):
        assert set(forecast[name]) >= {"crps", "coverage_50", "coverage_90", "directional_accuracy", "mae_median"}
    backtest = json.loads((run / "backtest" / "metrics.json").read_text())
    assert {"cost_bps", "strategy", "buy_and_hold"} <= set(backtest)
    calibration = json.loads((run / "calibration.json").read_text())  # --calibration-max-origins 25, 4 symbols
    assert calibration["max_origins_per_symbol"] == 25 and 50 < calibration["n_origins"] <= 100
    # the pipeline trains a volatility head for its horizon; its QLIKE against GARCH and EWMA is in the report
    assert json.loads((run / "model" / "config.json").read_text())["vol_bars"] == 4
    volatility = forecast["volatility"]
    assert volatility["headline"] == "vol_head" and volatility["forecasters"]["vol_head"]["qlike"] > 0
    assert set(volatility["comparison"]) == {"garch", "ewma"}
    assert all(set(c) >= {"qlike_ratio", "qlike_ratio_ci", "verdict"} for c in volatility["comparison"].values() if c)
    report = (run / "eval" / "report.md").read_text()
    assert "## Volatility forecast" in report and "vol\\_head vs garch" in report


def test_rerunning_the_pipeline_skips_finished_stages(workdir):
    start = time.perf_counter()
    result = run_cli(*PIPELINE_ARGS, cwd=workdir)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stderr.count("already complete, skipped") >= 6
    assert time.perf_counter() - start < 120  # generous: it must not retrain
    different = run_cli(*PIPELINE_ARGS[:-1], "16", cwd=workdir)
    assert_user_error(different, "different settings")


def test_generate_py_prints_50_ids_per_sample(workdir):
    result = run_script("generate.py", "--seed_tokens", "80 81 83 89 66", "--num_generate", "50",
                        "--num_samples", "3", "--seed", "1", cwd=workdir)
    assert result.returncode == 0, result.stderr
    lines = [line.split(":", 1)[-1].split() for line in result.stdout.strip().splitlines()]
    assert len(lines) == 3
    for ids in lines:
        assert len(ids) == 50 and all(0 <= int(i) < 128 for i in ids)
    bad = run_script("generate.py", "--seed_tokens", "80 81 999", "--num_generate", "5", cwd=workdir)
    assert_user_error(bad, "999")


def test_generate_decodes_to_a_price_path(workdir):
    result = run_cli("generate", "--run", "runs/quickstart", "--seed-tokens", "3 4 5", "--num-generate", "8",
                     "--decode", "--symbol", "AAPL", "--start-price", "100", "--seed", "0", cwd=workdir)
    assert result.returncode == 0, result.stderr
    prices = [line for line in result.stdout.splitlines() if "prices from 100" in line][0]
    assert len(prices.split(":", 1)[1].split()) == 8


def test_forecast_and_analyze_commands(workdir):
    result = run_cli("forecast", "--run", "runs/quickstart", "--data", "sample:stocks-daily", "--symbol", "MSFT",
                     "--horizon", "4", "--num-samples", "64", cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert "VaR" in result.stdout and (workdir / "runs" / "quickstart" / "forecast" / "MSFT.png").is_file()
    assert_user_error(run_cli("forecast", "--run", "runs/quickstart", "--data", "sample:stocks-daily",
                              "--symbol", "NOPE", "--horizon", "4", cwd=workdir), "NOPE")
    analysis = run_cli("analyze", "--tokens", "runs/quickstart/tokens", "--out", "analysis", cwd=workdir)
    assert analysis.returncode == 0, analysis.stderr
    assert "unigram entropy" in analysis.stdout and "conditional entropy" in analysis.stdout
    assert (workdir / "analysis" / "transition_matrix.png").is_file()


def test_quickstart_and_test_scripts_are_wired():
    quickstart = (REPO / "quickstart.sh").read_text()
    assert "scripts/setup.sh" in quickstart and "pricegpt pipeline" in quickstart
    assert "./test.sh" in (REPO / ".ci" / "run").read_text()
    readme = (REPO / "README.md").read_text()
    assert readme.index("./quickstart.sh") < readme.index("## Command line")
    assert shutil.which("bash")


def test_the_seeds_four_commands_in_order_in_an_empty_directory(tmp_path):
    """The seed README's journey, exactly: examples, train, evaluate (no flags), generate, from an empty directory."""
    run_sh = str(REPO / "run.sh")

    def seed(*args):
        env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONWARNINGS": "ignore"}
        result = subprocess.run([run_sh, *map(str, args)], capture_output=True, text=True, cwd=tmp_path,
                                env=env, timeout=600)
        assert result.returncode == 0, (args, result.stdout[-2000:], result.stderr[-3000:])
        assert "Traceback" not in result.stderr, result.stderr
        return result

    seed("examples.py")
    seed("train.py", "--max-steps", "30")
    tokens = (tmp_path / "data" / "all_tokens.txt").read_text().split()
    assert len(tokens) > 1000 and all(0 <= int(t) < 128 for t in tokens)
    (run,) = (tmp_path / "runs").iterdir()
    assert (run / "model" / "model.safetensors").is_file()
    evaluation = seed("evaluate.py").stdout
    for line in ("accuracy:", "top-5 accuracy:", "perplexity:", "cross-entropy loss:", "parameters:", "model size:"):
        assert line in evaluation, evaluation
    assert (run / "eval" / "metrics.json").is_file()
    generated = seed("generate.py", "--seed_tokens", "80 81 83 89 66", "--num_generate", "50").stdout.split()
    assert len(generated) == 50 and all(t.isdigit() for t in generated), generated
