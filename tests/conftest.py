"""Shared test helpers: running the real CLI in a subprocess, and small real price files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args, cwd=None, env=None, timeout=600) -> subprocess.CompletedProcess:
    """Run `python -m pricegpt ARGS` for real and capture its output."""
    full_env = {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}
    full_env.setdefault("OMP_NUM_THREADS", "2")
    return subprocess.run([sys.executable, "-m", "pricegpt", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=full_env, timeout=timeout)


def assert_user_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    """A user mistake: exit 2, exactly one `error:` line naming the problem, no traceback."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(error_lines) == 1, result.stderr
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout, result.stderr
    for fragment in fragments:
        assert fragment.lower() in error_lines[0].lower(), (fragment, error_lines[0])


@pytest.fixture(scope="session")
def stocks_frame():
    from pricegpt.data import load_prices

    return load_prices("sample:stocks-daily")


@pytest.fixture(scope="session")
def stocks_store(tmp_path_factory):
    """sample:stocks-daily (open/high/low/volume) tokenized one bar per token, EWMA-scaled, by a 32-code quantile
    tokenizer: (the store, the frame, the tokenizer). Tests read it and write elsewhere."""
    from train_helpers import quantile_store

    return quantile_store(tmp_path_factory.mktemp("stocks-ewma"), "sample:stocks-daily", scaling="ewma")
