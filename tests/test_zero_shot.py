"""The shipped pretrained model (issue 18): it loads by name, forecasts a price file it never saw from the command
line with no run and no network, and evaluates zero-shot with the data's own cutoffs, a temperature chosen on the
data's validation split and the leakage floor of its data cutoff."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pricegpt.errors import LeakageError
from pricegpt.evaluate import evaluate_model
from pricegpt.forecast import Forecaster
from pricegpt.train.checkpoint import BUILTIN_MODELS
from pricegpt.train.checkpoint import resolve_init as resolve_model

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run([sys.executable, "-m", "pricegpt", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=300)


def test_the_builtin_model_is_shipped_small_and_loads_by_name():
    for name in BUILTIN_MODELS:
        folder = resolve_model(name)
        assert (folder / "config.json").is_file(), f"{name} is not shipped in {folder}"
        size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        assert size <= 25 * 2**20, f"{name} weighs {size / 2**20:.1f} MB"
        fc = Forecaster.from_pretrained(name)
        assert fc.run.pretrained and fc.run.meta["val_end"].startswith("2015-12-31")
        manifest = json.loads((folder / "pretrain.json").read_text())
        assert manifest["data_cutoff"].startswith("2015-12-31") and manifest["n_symbols"] > 100


def test_forecast_any_csv_with_no_run(tmp_path):
    frame = pd.read_csv(ROOT / "src/pricegpt/data/samples/stocks-daily.csv.gz")
    one = frame[frame["symbol"] == frame["symbol"].iloc[0]].rename(columns={"timestamp": "Date", "close": "Close"})
    one[["Date", "Close"]].to_csv(tmp_path / "any.csv", index=False)
    done = cli("forecast", "--data", "any.csv", "--symbol", "any", "--horizon", "5", "--num-samples", "200",
               cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "q05" in done.stdout or "5%" in done.stdout, done.stdout
    assert list(tmp_path.iterdir()) == [tmp_path / "any.csv"]  # nothing written without --out


def test_zero_shot_evaluation_uses_the_datas_cutoffs_and_its_validation_temperature(tmp_path):
    metrics = evaluate_model("pricegpt-small", "sample:eurusd-hourly", tmp_path / "eval", num_samples=64,
                             max_origins=40)
    zero = metrics["zero_shot"]
    assert zero["temperature_from"] == "this data's validation split" and zero["data_cutoff"].startswith("2015")
    assert metrics["train_end"] > "2017" and metrics["run_val_end"].startswith("2015-12-31")
    fc = metrics["forecast"]
    assert fc["verdict"]["verdict"] in ("better", "no significant difference", "worse")
    assert {"comparison", "by_regime", "reliability", "var_tests", "p_up"} <= set(fc)
    # the shipped folder was not written
    assert not (resolve_model("pricegpt-small") / "calibration.json").exists()


def test_zero_shot_refuses_test_origins_the_model_has_seen(tmp_path):
    frame = pd.read_csv(ROOT / "src/pricegpt/data/samples/stocks-daily.csv.gz")  # 2000-2013: before the cutoff
    with pytest.raises(LeakageError):
        evaluate_model("pricegpt-small", frame, tmp_path / "eval", num_samples=16, max_origins=5)


def test_zero_shot_needs_an_output_folder_and_data_on_the_command_line(tmp_path):
    done = cli("evaluate", "--model", "pricegpt-small", "--data", "sample:eurusd-hourly", cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.startswith("error:") and "--out" in done.stderr
    done = cli("evaluate", "--run", "x", "--train-end", "2017-06-01", cwd=tmp_path)
    assert done.returncode == 2 and "--model" in done.stderr
    assert np.all([p.name for p in tmp_path.iterdir()] == [])


def test_a_hub_model_loads_offline_from_the_local_cache(tmp_path, monkeypatch):
    """hf://OWNER/NAME through huggingface_hub, offline: the shipped folder laid out as the Hub's cache does it."""
    pytest.importorskip("huggingface_hub", reason="the optional hub extra (huggingface_hub) is not installed")
    import shutil

    from pricegpt.errors import CheckpointError

    cache = tmp_path / "hub"
    repo = cache / "models--pricegpt--tiny-forecaster"
    commit = "0" * 40
    shutil.copytree(resolve_model("pricegpt-small"), repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    fc = Forecaster.from_pretrained("hf://pricegpt/tiny-forecaster")
    shipped = Forecaster.from_pretrained("pricegpt-small")
    assert fc.tokenizer.hash == shipped.tokenizer.hash and fc.temperature == shipped.temperature
    with pytest.raises(CheckpointError, match="not in the local Hugging Face cache"):
        Forecaster.from_pretrained("hf://pricegpt/missing")


def test_a_fine_tuned_runs_test_window_starts_after_its_inits_cutoff():
    """A run fine-tuned from a pretrained model: test origins must also come after the init's data cutoff."""
    from types import SimpleNamespace

    from pricegpt.data import load_prices
    from pricegpt.data.windows import resolve_cutoffs

    frame = load_prices("sample:stocks-daily")  # 2000-2013
    run = SimpleNamespace(meta={"train_end": "2005-12-31", "val_end": "2007-12-31",
                                "init": {"data_cutoff": "2010-12-31T00:00:00Z"}})
    cutoffs = resolve_cutoffs(frame, "test", run)
    assert cutoffs.window[0] == pd.Timestamp("2010-12-31", tz="UTC")
    assert cutoffs.window_names[0] == "init data_cutoff"
    plain = resolve_cutoffs(frame, "test", SimpleNamespace(meta={"train_end": "2005-12-31", "val_end": "2007-12-31"}))
    assert plain.window[0] == pd.Timestamp("2007-12-31", tz="UTC")
