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
from pricegpt.train import train_run
from pricegpt.train.checkpoint import find_checkpoint
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
    try:
        return json.loads((run / "checkpoints" / "last" / "meta.json").read_text())["step"]
    except (OSError, ValueError, KeyError):
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
    assert_same_weights(read_weights(run / "checkpoints" / "last" / "model.safetensors"),
                        read_weights(reference / "checkpoints" / "last" / "model.safetensors"))
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

    checkpoint = run / "checkpoints" / "last"
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
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    assert "SIGINT" in stderr and "--resume" in stderr and "Traceback" not in stderr
    stopped_at = _checkpoint_step(run)
    assert first <= stopped_at < MAX_STEPS

    with torch_threads_kept():
        result = train_run(tokens=tokens, out=run, resume=True)
    assert result["steps"] == MAX_STEPS
    _assert_same_run(run, reference)


def test_a_kill_between_the_renames_keeps_the_previous_checkpoint(tmp_path):
    # atomic_dir renames last -> .last.old, then the new one -> last: a kill in between leaves only .last.old
    old = tmp_path / "checkpoints" / ".last.old"
    old.mkdir(parents=True)
    (old / "meta.json").write_text('{"step": 5}')
    assert find_checkpoint(tmp_path) == tmp_path / "checkpoints" / "last"
    assert json.loads((tmp_path / "checkpoints" / "last" / "meta.json").read_text())["step"] == 5


def test_resume_without_a_checkpoint_is_a_clear_error(tokens, tmp_path, capsys):
    (tmp_path / "run").mkdir()
    code = main(["train", "--tokens", str(tokens), "--out", str(tmp_path / "run"), "--resume"])
    captured = capsys.readouterr()
    assert_user_error(subprocess.CompletedProcess([], code, captured.out, captured.err),
                      "cannot resume", "no checkpoint", "without --resume")
