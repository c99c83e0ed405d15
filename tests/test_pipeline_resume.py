"""Interrupted is never done: a pipeline stopped in its train stage exits 130 and reports nothing; a pipeline
killed before the first checkpoint finishes when the same command is rerun; a stage whose inputs changed is redone.

One small real price file (two symbols of the embedded daily data) and a one-layer model keep each run short.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO

SETTINGS = ["model.n_layer=1", "model.n_embd=32", "model.n_head=2", "model.n_kv_head=1", "model.sequence_len=32",
            "train.batch_size=8", "train.eval_every=10", "train.eval_batches=2", "train.save_every=1000",
            "train.warmup_steps=5", "train.num_threads=1", "train.early_stopping_patience=0"]


@pytest.fixture(scope="module")
def prices(tmp_path_factory, stocks_frame) -> Path:
    frame = stocks_frame[stocks_frame["symbol"].isin(["AAPL", "IBM"])].groupby("symbol").head(700)
    path = tmp_path_factory.mktemp("data") / "prices.csv"
    frame.to_csv(path, index=False)
    return path


def pipeline_args(prices: Path, out: Path, max_steps: int) -> list[str]:
    args = ["pipeline", "--data", str(prices), "--out", str(out), "--preset", "tiny", "--max-steps", str(max_steps),
            "--num-samples", "16", "--tokenizer-kind", "quantile", "--codebook-size", "32",
            "--calibration-max-origins", "25"]
    for setting in SETTINGS:
        args += ["--set", setting]
    return args


def start(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "pricegpt", *args], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def run(args: list[str]) -> subprocess.CompletedProcess:
    process = start(args)
    out, err = process.communicate(timeout=600)
    return subprocess.CompletedProcess(args, process.returncode, out, err)


def wait_for_line(process: subprocess.Popen, fragment: str, timeout: float = 120) -> list[str]:
    """Read stderr until a line containing `fragment` (the process keeps running)."""
    seen, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line:
            pytest.fail(f"the pipeline ended before printing {fragment!r}: {''.join(seen)[-2000:]}")
        seen.append(line)
        if fragment in line:
            return seen
    process.kill()
    pytest.fail(f"no {fragment!r} within {timeout}s")


def test_ctrl_c_in_training_stops_the_pipeline_and_the_rerun_finishes_every_stage(prices, tmp_path):
    out = tmp_path / "run"
    args = pipeline_args(prices, out, max_steps=100_000)  # far more than it can do before the signal
    process = start(args)
    wait_for_line(process, "val loss")  # the first evaluation of the train stage
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, (stdout, stderr[-2000:])
    assert "Traceback" not in stderr
    assert not (out / "calibration.json").exists() and not (out / "eval").exists()
    assert not (out / "backtest").exists() and "report:" not in stdout
    assert json.loads((out / "model" / "meta.json").read_text()).get("finished") is False


def test_sigkill_before_the_first_checkpoint_then_the_same_command_finishes(prices, tmp_path):
    out = tmp_path / "run"
    args = pipeline_args(prices, out, max_steps=60)
    process = start(args)
    wait_for_line(process, "[train] ...")
    process.kill()
    process.communicate(timeout=60)
    rerun = run(args)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "report:" in rerun.stdout
    meta = json.loads((out / "model" / "meta.json").read_text())
    assert meta.get("finished", True) is True
    evaluation = json.loads((out / "eval" / "metrics.json").read_text())
    assert evaluation["forecast"]["n_origins"] > 0

    # a stage whose inputs changed is redone, the rest is skipped: a new temperature means a new evaluation
    calibration = json.loads((out / "calibration.json").read_text())
    calibration["temperature"] = calibration["temperature"] * 1.5
    (out / "calibration.json").write_text(json.dumps(calibration))
    again = run(args)
    assert again.returncode == 0, again.stderr[-3000:]
    for skipped in ("tokenizer", "tokenize", "train", "calibrate"):
        assert f"[{skipped}] already complete" in again.stderr, again.stderr
    for redone in ("evaluate", "backtest"):
        assert f"[{redone}] its inputs changed" in again.stderr, again.stderr
    assert json.loads((out / "eval" / "metrics.json").read_text())["forecast"] != evaluation["forecast"]


def test_ensemble_killed_in_a_members_training_finishes_and_forecasts_as_the_pool(prices, tmp_path):
    """--ensemble 2: member 2 trains on the run's tokens with the next seed; a kill in its training leaves no
    ensemble.json, calibration or evaluation; the same command finishes and every later stage uses the pool."""
    out = tmp_path / "run"
    args = [*pipeline_args(prices, out, max_steps=30), "--ensemble", "2"]
    process = start(args)
    wait_for_line(process, "[member 2 train] ...")
    process.kill()
    process.communicate(timeout=60)
    assert not (out / "ensemble.json").exists() and not (out / "calibration.json").exists()
    assert not (out / "eval").exists()
    rerun = run(args)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    for skipped in ("tokenizer", "tokenize", "train"):
        assert f"[{skipped}] already complete" in rerun.stderr, rerun.stderr
    assert "ensemble of 2 models" in rerun.stdout
    record = json.loads((out / "ensemble.json").read_text())
    assert record == {"members": ["members/member-2"], "train_seeds": [1337, 1338]}
    member = out / "members" / "member-2"
    assert json.loads((member / "model" / "meta.json").read_text()).get("finished", True) is True
    evaluation = json.loads((out / "eval" / "metrics.json").read_text())
    assert evaluation["ensemble"]["size"] == 2
    assert json.loads((out / "backtest" / "metrics.json").read_text())["settings"]["n_decisions"] > 0

    # the run forecasts as the pool afterwards too; its members differ (other training seeds)
    from pricegpt.forecast import EnsembleForecaster, Forecaster
    pool = Forecaster.from_run(out)
    assert isinstance(pool, EnsembleForecaster) and len(pool.members) == 2
    first, second = (dict(m.model.named_parameters()) for m in pool.members)
    assert any(not (first[k] == second[k]).all() for k in first)
    assert pool.temperature == json.loads((out / "calibration.json").read_text())["temperature"]

    # trained runs pooled on the command line: the pool's temperature is chosen on the validation split
    (out / "ensemble.json").unlink()
    pooled = run(["evaluate", "--runs", f"{out},{member}", "--out", str(tmp_path / "pool"), "--num-samples", "8",
                  "--horizons", "4"])
    assert pooled.returncode == 0, pooled.stderr[-3000:]
    assert "an ensemble of 2 models" in pooled.stdout
    metrics = json.loads((tmp_path / "pool" / "metrics.json").read_text())
    assert metrics["ensemble"]["members"] == [str(out), str(member)]
    lonely = run(["evaluate", "--runs", str(out), "--out", str(tmp_path / "lonely")])
    assert lonely.returncode == 2 and "pool at least two" in lonely.stderr and not (tmp_path / "lonely").exists()

    # a damaged ensemble.json is one clear error, not a silent single model
    (out / "ensemble.json").write_text("{")
    broken = run(["evaluate", "--run", str(out), "--out", str(tmp_path / "e"), "--num-samples", "8"])
    assert broken.returncode == 2 and "Traceback" not in broken.stderr
    assert "ensemble.json is damaged" in broken.stderr.strip().splitlines()[-1]


def test_a_validation_split_too_short_for_a_window_is_refused_before_the_run_directory_exists(prices, tmp_path):
    out = tmp_path / "run"
    result = run([*pipeline_args(prices, out, max_steps=20), "--train-end", "2002-06-03", "--val-end", "2002-06-07"])
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "the val split is too short" in result.stderr.strip().splitlines()[-1]
    assert not out.exists()
