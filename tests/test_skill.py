"""`pricegpt skill`: the pipeline on each dataset of a suite and one table of verdicts, resumable.

Two small real datasets (slices of the embedded daily stocks and hourly EUR/USD) and a one-layer model keep the
suite to well under a minute; the command line's flag errors are checked in subprocesses that stop before any work.
Zero-shot (`skill --model`): the shipped pretrained model on the embedded hourly EUR/USD (2017, after its data
cutoff) and daily stocks (2000-2013, before it: not run), through the real command line.
"""

from __future__ import annotations

import json
import time

import pytest

from conftest import assert_user_error, run_cli

SETTINGS = ["model.n_layer=1", "model.n_embd=32", "model.n_head=2", "model.n_kv_head=1", "model.sequence_len=32",
            "train.batch_size=8", "train.eval_every=10", "train.eval_batches=2", "train.save_every=1000",
            "train.warmup_steps=5", "train.num_threads=1", "train.early_stopping_patience=0"]
COLUMNS = ["dataset", "mode", "bars", "symbols", "horizon", "origins", "best baseline", "CRPS ratio [95% CI]",
           "verdict", "cov 50%", "cov 90%", "VaR 5% exceedances"]


@pytest.fixture(scope="module")
def datasets(tmp_path_factory, stocks_frame):
    from pricegpt.data import load_prices

    folder = tmp_path_factory.mktemp("skill_data")
    stocks = stocks_frame[stocks_frame["symbol"].isin(["AAPL", "IBM"])].groupby("symbol").head(600)
    stocks.to_csv(folder / "stocks.csv", index=False)
    load_prices("sample:eurusd-hourly").head(2400).to_csv(folder / "eurusd.csv", index=False)
    return [folder / "stocks.csv", folder / "eurusd.csv"]


@pytest.fixture(scope="module")
def suite(tmp_path_factory, datasets):
    import torch

    from pricegpt.pipeline import PipelineSettings
    from pricegpt.skill import run_skill

    out = tmp_path_factory.mktemp("skill") / "suite"
    settings = PipelineSettings(preset="tiny", overrides=SETTINGS, max_steps=10, num_samples=16,
                                tokenizer_kind="quantile", codebook_size=32)
    threads = torch.get_num_threads()
    try:
        start = time.perf_counter()
        result = run_skill(out, data=datasets, settings=settings)
        seconds = time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)
    return out, settings, result, seconds


def test_skill_runs_the_pipeline_per_dataset_and_writes_one_table(suite):
    out, _, result, _ = suite
    assert [row.dataset for row in result.rows] == ["stocks", "eurusd"]
    assert {row.mode for row in result.rows} == {"from scratch"} and result.settings["mode"] == "from scratch"
    for row in result.rows:
        assert (out / row.dataset / "eval" / "report.html").is_file()
        assert (out / row.dataset / "backtest" / "metrics.json").is_file()
        metrics = json.loads((out / row.dataset / "eval" / "metrics.json").read_text())
        fc = metrics["forecast"]
        assert row.horizon == fc["horizon_bars"] == 4 and row.n_origins == fc["n_origins"] > 0
        assert row.verdict == fc["verdict"]["verdict"] and row.best_baseline == fc["verdict"]["best_baseline"]
        assert row.verdict in ("better", "no significant difference", "worse")
        lo, hi = row.crps_ratio_ci
        assert lo <= row.crps_ratio <= hi
        assert row.coverage_90 == fc["model"]["coverage_90"] and 0 <= row.coverage_50 <= row.coverage_90 <= 1
        assert row.var_5_exceedance == fc["var_tests"]["model"]["5%"]["rate"]
    stocks, eurusd = result.rows
    assert (stocks.bars, stocks.symbols) == (1200, 2) and (eurusd.bars, eurusd.symbols) == (2400, 1)

    saved = json.loads((out / "skill.json").read_text())
    assert saved == json.loads(json.dumps(result.to_dict()))
    assert {"platform", "cpu", "cpu_count", "torch", "threads"} <= set(saved["machine"])
    assert saved["settings"]["num_samples"] == 16 and saved["date"][:2] == "20"
    markdown = (out / "skill.md").read_text()
    assert markdown == result.to_markdown()
    header = next(line for line in markdown.splitlines() if line.startswith("| dataset"))
    assert [c.strip() for c in header.strip("|").split("|")] == COLUMNS
    rows = [line for line in markdown.splitlines() if line.startswith("| stocks") or line.startswith("| eurusd")]
    assert len(rows) == 2 and all(len(r.strip("|").split(" | ")) == len(COLUMNS) for r in rows)
    assert f"{saved['machine']['cpu_count']} cores" in markdown


def test_a_rerun_resumes_and_skips_every_finished_dataset(suite, datasets):
    from pricegpt.skill import run_skill

    out, settings, first, seconds = suite
    stages = json.loads((out / "stocks" / "stages.json").read_text())
    start = time.perf_counter()
    again = run_skill(out, data=datasets, settings=settings)
    assert time.perf_counter() - start < max(10.0, seconds / 3)
    assert json.loads((out / "stocks" / "stages.json").read_text()) == stages  # no stage ran again
    assert [(r.crps_ratio, r.verdict) for r in again.rows] == [(r.crps_ratio, r.verdict) for r in first.rows]


def test_skill_refuses_a_folder_it_did_not_write(tmp_path, datasets):
    from pricegpt.errors import OutputExistsError
    from pricegpt.skill import run_skill

    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="not written by pricegpt"):
        run_skill(tmp_path, data=datasets[:1])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


@pytest.mark.parametrize("args, fragment", [
    (["--suite", "bogus"], "--suite"),
    (["--data", "no/such/prices.csv"], "no/such/prices.csv"),
    (["--preset", "huge"], "huge"),
    (["--max-steps", "0"], "--max-steps"),
    (["--num-samples", "x"], "--num-samples"),
    (["--model", "pricegpt-small", "--max-steps", "5"], "--max-steps"),  # zero-shot trains nothing
])
def test_bad_flags_fail_with_one_error_line_before_any_work(tmp_path, args, fragment):
    out = tmp_path / "suite"
    result = run_cli("skill", "--out", out, *args, timeout=120)
    assert_user_error(result, fragment)
    assert not (out / "skill.md").exists() and not any(out.glob("*/run.json"))


def test_skill_zero_shot_with_the_pretrained_model_writes_the_table_without_training(tmp_path):
    from pricegpt.pipeline import PipelineSettings
    from pricegpt.skill import run_skill

    out = tmp_path / "zero"
    result = run_cli("skill", "--model", "pricegpt-small", "--data", "sample:stocks-daily", "sample:eurusd-hourly",
                     "--num-samples", "8", "--no-calibrate", "--out", out, timeout=300)
    assert result.returncode == 0, result.stderr
    saved = json.loads((out / "skill.json").read_text())
    assert saved["settings"]["mode"] == "zero-shot" and saved["settings"]["data_cutoff"].startswith("2015-12-31")
    stocks, eurusd = saved["rows"]
    # before the model's data cutoff: no score, and nothing run
    assert stocks["mode"] == "zero-shot" and stocks["verdict"] is None and "data cutoff 2015-12-31" in stocks["note"]
    assert not (out / "stocks-daily").exists()
    assert eurusd["mode"] == "zero-shot" and eurusd["horizon"] == 4 and eurusd["n_origins"] > 0
    assert eurusd["verdict"] in ("better", "no significant difference", "worse") and eurusd["sharpe"] is not None
    evaluation = json.loads((out / "eurusd-hourly" / "eval" / "metrics.json").read_text())
    backtest = json.loads((out / "eurusd-hourly" / "backtest" / "metrics.json").read_text())
    assert eurusd["crps_ratio"] == evaluation["forecast"]["verdict"]["crps_ratio"]
    assert evaluation["zero_shot"]["model"] == "pricegpt-small" and evaluation["forecast"]["num_samples"] == 8
    assert backtest["zero_shot"]["temperature"] == evaluation["zero_shot"]["temperature"]
    assert not (out / "eurusd-hourly" / "model").exists() and not (out / "eurusd-hourly" / "tokens").exists()
    markdown = (out / "skill.md").read_text()
    assert markdown in result.stdout and "Zero-shot: pricegpt-small (data cutoff 2015-12-31), no training" in markdown
    header = next(line for line in markdown.splitlines() if line.startswith("| dataset"))
    assert [c.strip() for c in header.strip("|").split("|")] == COLUMNS
    assert "| eurusd-hourly | zero-shot | 6,225 | 1 | 4 |" in markdown

    # a rerun with the same settings runs nothing again; other settings are refused without --force
    from pricegpt.errors import OutputExistsError

    outputs = [out / "eurusd-hourly" / name for name in ("eval/metrics.json", "backtest/metrics.json")]
    written = [path.stat().st_mtime_ns for path in outputs]
    again = run_skill(out, data=["sample:stocks-daily", "sample:eurusd-hourly"],
                      settings=PipelineSettings(num_samples=8), model="pricegpt-small", calibrate=False)
    assert again.rows[1].crps_ratio == eurusd["crps_ratio"] and again.rows[1].note is None
    assert [path.stat().st_mtime_ns for path in outputs] == written
    with pytest.raises(OutputExistsError, match="other settings.*--force"):
        run_skill(out, data=["sample:eurusd-hourly"], settings=PipelineSettings(num_samples=16),
                  model="pricegpt-small", calibrate=False)
