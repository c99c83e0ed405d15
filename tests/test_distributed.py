"""Distributed data parallel on CPU: `torchrun --nproc-per-node=2` (gloo) matches one process with the same
global batch, and its MFU counts both devices."""

from __future__ import annotations

import os
import subprocess
import sys

import pandas as pd
import torch

from pricegpt.model.gpt import GPT
from pricegpt.train import latest_checkpoint, train_run
from train_helpers import TINY, markov_tokens, read_weights, torch_threads_kept, write_token_file

V = 16
STEPS = 30
PEAK = 1e9  # train.peak_flops: one device's
SETTINGS = [*TINY, f"model.vocab_size={V}", "train.global_batch_size=8", "train.eval_every=10",
            "train.save_every=10", f"train.peak_flops={PEAK:g}"]


def test_two_processes_match_one_with_the_same_global_batch(tmp_path):
    tokens = write_token_file(tmp_path / "tokens.txt", markov_tokens(6000, V, seed=2))
    # one process: micro-batches of 4, accumulated twice to the global batch of 8
    with torch_threads_kept():
        single = train_run(tokens=tokens, out=tmp_path / "single", preset="tiny", max_steps=STEPS,
                           overrides=[*SETTINGS, "train.batch_size=4"])
    # two processes: one micro-batch of 4 each, gradients averaged by DDP
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "pricegpt",
            "train", "--tokens", str(tokens), "--out", str(tmp_path / "ddp"), "--preset", "tiny",
            "--max-steps", str(STEPS)]
    for setting in [*SETTINGS, "train.batch_size=4"]:
        args += ["--set", setting]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("step 0: val loss") == 1, "only rank 0 should log"
    assert "best model" in result.stdout

    ddp_weights = read_weights(latest_checkpoint(tmp_path / "ddp") / "model.safetensors")
    single_weights = read_weights(latest_checkpoint(tmp_path / "single") / "model.safetensors")
    for name, weight in single_weights.items():
        torch.testing.assert_close(ddp_weights[name], weight, rtol=1e-4, atol=1e-5,
                                   msg=lambda m, name=name: f"{name}: {m}")
    moved = read_weights(tmp_path / "single" / "model" / "model.safetensors")
    assert single["steps"] == STEPS and any(w.abs().sum() > 0 for w in moved.values())

    # MFU: the tokens/s of both processes against the peak of both devices
    flops_per_token = GPT.from_pretrained(tmp_path / "ddp" / "model").flops_per_token(16)
    for run, world in (("single", 1), ("ddp", 2)):
        rows = pd.read_csv(tmp_path / run / "metrics.csv").dropna(subset=["mfu"])
        assert len(rows) > 0
        expected = flops_per_token * rows["tok_per_s"] / (world * PEAK)
        assert ((rows["mfu"] - expected).abs() <= 1e-4 * expected).all(), (run, rows, expected)
