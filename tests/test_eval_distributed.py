"""Evaluation across processes: `torchrun --nproc-per-node=2 -m pricegpt evaluate|calibrate|backtest` (gloo on CPU)
shards the forecast origins over the processes and writes, from rank 0 only, the very bytes one process writes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import run_cli
from test_evaluate import tiny_run  # noqa: F401  (a trained run on two symbols, one named like a <script> tag)

EVAL = ["--horizons", "4,1,8", "--num-samples", "16", "--max-origins", "5", "--seed", "3"]


def torchrun(*args, processes: int = 2) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc-per-node=N -m pricegpt -- ARGS` for real (a free port; one thread each).
    The `--` keeps torchrun's own parser off pricegpt's flags: it reads `--run` as its `--run-path`."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
               "-m", "pricegpt", "--", *map(str, args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def assert_same_files(one: Path, two: Path) -> None:
    """Every file of the 1-process output is in the 2-process one with the same bytes, and nothing else is."""
    first, second = files(one), files(two)
    assert sorted(first) == sorted(second)
    differing = [name for name in first if first[name] != second[name]]
    assert not differing, f"{differing} differ between 1 and 2 processes"


def test_two_processes_evaluate_byte_for_byte_like_one(tiny_run, tmp_path):  # noqa: F811
    run, csv, _ = tiny_run
    # one process with one thread, as torchrun starts each of its processes: the GARCH baseline's fit (arch,
    # through BLAS) moves in its last digits with the number of BLAS threads, sharded or not
    single = run_cli("evaluate", "--run", run, "--data", csv, *EVAL, "--out", tmp_path / "one",
                     env={"OMP_NUM_THREADS": "1"})
    assert single.returncode == 0, single.stderr[-3000:]
    result = torchrun("evaluate", "--run", run, "--data", csv, *EVAL, "--out", tmp_path / "two")
    assert result.returncode == 0, result.stderr[-3000:]
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    # the main horizon (4) and the longer one (8) are sampled, 1 reuses the 4-bar paths; 10 origins over 2 ranks
    assert one["forecast"]["n_origins"] == 10 and one["forecasts_by_horizon"]["8"]["n_origins"] > 0
    assert_same_files(tmp_path / "one", tmp_path / "two")  # metrics.json, origins.csv, report.md/.html, charts
    assert result.stdout == single.stdout.replace(str(tmp_path / "one"), str(tmp_path / "two"))
    # only rank 0 reports: one log line of the set-up, one headline, one report path
    assert result.stderr.count("evaluate: test split") == 1, result.stderr
    assert result.stdout.count("report: ") == 1 and str(tmp_path / "two" / "report.html") in result.stdout
    assert not (run / "eval").exists()  # --out leaves the run's own evaluation alone


def test_two_processes_calibrate_and_backtest_byte_for_byte_like_one(tiny_run, tmp_path):  # noqa: F811
    from pricegpt.backtest import run_backtest
    from pricegpt.forecast.calibrate import calibrate_run

    run, csv, _ = tiny_run
    for name in ("one", "two"):
        shutil.copytree(run, tmp_path / name, ignore=shutil.ignore_patterns("eval", "backtest", "checkpoints"))
    calibrate_run(tmp_path / "one", data=str(csv), horizon=4, num_samples=8, max_origins=3, seed=1)
    result = torchrun("calibrate", "--run", tmp_path / "two", "--data", csv, "--horizon", 4, "--num-samples", 8,
                      "--max-origins", 3, "--seed", 1)
    assert result.returncode == 0, result.stderr[-3000:]
    calibration = (tmp_path / "one" / "calibration.json").read_bytes()
    assert (tmp_path / "two" / "calibration.json").read_bytes() == calibration
    assert result.stdout.count("temperature ") == 1

    # a backtest of the calibrated run: its decisions sampled at the chosen temperature
    run_backtest(tmp_path / "one", data=str(csv), horizon=4, num_samples=8, seed=2, out=tmp_path / "bt1")
    result = torchrun("backtest", "--run", tmp_path / "one", "--data", csv, "--horizon", 4, "--num-samples", 8,
                      "--seed", 2, "--out", tmp_path / "bt2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_files(tmp_path / "bt1", tmp_path / "bt2")  # metrics.json, positions.csv, decisions.csv, equity.png
    assert result.stdout.count(f"wrote {tmp_path / 'bt2'}") == 1 and result.stderr.count("backtest: forecast") == 1


def test_a_mistake_fails_every_process_at_once(tiny_run, tmp_path):  # noqa: F811
    run, _, _ = tiny_run
    result = torchrun("evaluate", "--run", run, "--data", tmp_path / "missing.csv", *EVAL)
    assert result.returncode != 0
    # each process checks the same things before any process group exists, so none waits for the other. Both
    # usually say why; on a busy machine torchrun may stop the slower one (SIGTERM) before it prints, so at least one
    assert result.stderr.count("error: ") >= 1 and "missing.csv" in result.stderr, result.stderr[-3000:]
    assert not (run / "eval").exists()
