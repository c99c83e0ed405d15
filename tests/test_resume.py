"""Checkpoints never lose work: a run killed at any point resumes to exactly the weights of an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from conftest import assert_user_error, run_cli
from pricegpt.cli import main
from pricegpt.train import latest_checkpoint, train_run
from train_helpers import (
    TINY,
    assert_same_weights,
    markov_tokens,
    read_weights,
    torch_threads_kept,
    write_token_file,
)

V = 16
MAX_STEPS = 120
# dropout on, so the resumed run must also reproduce the random numbers; batches big enough that a step takes a
# few milliseconds and the run is still going when the test kills it
SETTINGS = [*TINY, f"model.vocab_size={V}", "model.dropout=0.1", "train.batch_size=32", "train.save_every=10",
            "train.eval_every=40", "train.seed=7"]


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    return write_token_file(tmp_path_factory.mktemp("tokens") / "tokens.txt", markov_tokens(8000, V, seed=1))


@pytest.fixture(scope="module")
def reference(tokens, tmp_path_factory):
    """The uninterrupted run."""
    run = tmp_path_factory.mktemp("reference") / "run"
    with torch_threads_kept():
        result = train_run(tokens=tokens, out=run, preset="tiny", overrides=SETTINGS, max_steps=MAX_STEPS)
    assert result["steps"] == MAX_STEPS
    return run


def _start(tokens, run) -> subprocess.Popen:
    args = ["train", "--tokens", tokens, "--out", run, "--preset", "tiny", "--max-steps", MAX_STEPS]
    for setting in SETTINGS:
        args += ["--set", setting]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen([sys.executable, "-m", "pricegpt", *map(str, args)], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _checkpoint_step(run) -> int | None:
    """The step of the run's latest checkpoint (None: none yet). The training process may delete the folder
    between finding and reading it; the next poll finds the new one."""
    try:
        return json.loads((latest_checkpoint(run) / "meta.json").read_text())["step"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _wait_for_checkpoint(process, run, timeout=120) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        step = _checkpoint_step(run)
        if step is not None and step > 0:
            return step
        if process.poll() is not None:
            pytest.fail(f"training ended before the first checkpoint: {process.communicate()}")
        time.sleep(0.005)
    process.kill()
    pytest.fail("no checkpoint appeared")


def _assert_same_run(run, reference):
    assert_same_weights(read_weights(latest_checkpoint(run) / "model.safetensors"),
                        read_weights(latest_checkpoint(reference) / "model.safetensors"))
    assert_same_weights(read_weights(run / "model" / "model.safetensors"),
                        read_weights(reference / "model" / "model.safetensors"))
    steps = np.genfromtxt(run / "metrics.csv", delimiter=",", names=True)["step"]
    assert len(steps) == len(set(steps)), "metrics.csv repeats steps after the resume"
    assert (run / "metrics.csv").read_text().splitlines()[0] == (reference / "metrics.csv").read_text().splitlines()[0]


def test_sigkill_then_resume_gives_the_uninterrupted_weights(tokens, tmp_path, reference):
    run = tmp_path / "run"
    process = _start(tokens, run)
    _wait_for_checkpoint(process, run)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    killed_at = _checkpoint_step(run)
    assert 0 < killed_at < MAX_STEPS, "the run finished before it was killed; make steps slower"

    checkpoint = latest_checkpoint(run)
    state = torch.load(checkpoint / "trainer_state.pt", weights_only=True)
    assert state["step"] == killed_at and "rng" in state and len(state["optimizers"]) == 1
    meta = json.loads((checkpoint / "meta.json").read_text())
    assert {"step", "train_end", "val_end", "tokenizer_hash", "tokens"} <= meta.keys()

    result = run_cli("train", "--tokens", tokens, "--out", run, "--resume")
    assert result.returncode == 0, result.stderr
    assert "best model" in result.stdout
    assert _checkpoint_step(run) == MAX_STEPS
    _assert_same_run(run, reference)


def test_ctrl_c_saves_a_checkpoint_and_resume_finishes_the_same_run(tokens, tmp_path, reference):
    run = tmp_path / "run"
    process = _start(tokens, run)
    first = _wait_for_checkpoint(process, run)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    # the run is not reported as trained: exit 130, one error line, the model marked unfinished
    assert process.returncode == 130, stderr
    assert [line for line in stderr.splitlines() if line.startswith("error:")] == ["error: interrupted"], stderr
    assert "SIGINT" in stderr and "--resume" in stderr and "Traceback" not in stderr
    assert "best model" not in stdout
    stopped_at = _checkpoint_step(run)
    assert first <= stopped_at < MAX_STEPS
    assert json.loads((run / "model" / "meta.json").read_text())["finished"] is False

    with torch_threads_kept():
        result = train_run(tokens=tokens, out=run, resume=True)
    assert result["steps"] == MAX_STEPS
    _assert_same_run(run, reference)


def test_resume_without_a_checkpoint_is_a_clear_error(tokens, tmp_path, capsys):
    (tmp_path / "run").mkdir()
    code = main(["train", "--tokens", str(tokens), "--out", str(tmp_path / "run"), "--resume"])
    captured = capsys.readouterr()
    assert_user_error(subprocess.CompletedProcess([], code, captured.out, captured.err),
                      "cannot resume", "no checkpoint", "without --resume")
