"""Helpers for the training tests: learnable token streams, tiny configs, reading weights."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import torch

# A model that trains a few hundred steps a second on one CPU thread.
TINY = [
    "model.sequence_len=16", "model.n_layer=1", "model.n_embd=32", "model.n_head=2", "model.n_kv_head=2",
    "train.batch_size=8", "train.eval_batches=2", "train.log_every=5", "train.warmup_steps=10",
    "train.num_threads=1", "train.lr=3e-3", "model.dropout=0.0", "train.weight_decay=0.1",
    "train.early_stopping_patience=0",
]


def quantile_store(root: Path, sample: str, **options):
    """`sample` (a sample:NAME) tokenized one bar per token by a 32-code quantile tokenizer fit on its train split
    (`options`: more tokenizer settings) into root/tokenizer and root/tokens: (the store, the frame, the tokenizer)."""
    from pricegpt.data import load_prices, time_splits
    from pricegpt.tokenizer import fit_to_dir, load_tokenizer, write_token_store

    frame = load_prices(sample)
    splits = time_splits(frame)
    fit_to_dir(frame, root / "tokenizer", kind="quantile", patch_len=1, codebook_size=32,
               train_end=splits.train_end, val_end=splits.val_end, **options)
    tokenizer = load_tokenizer(root / "tokenizer")
    write_token_store(tokenizer, frame, root / "tokens", splits)
    return root / "tokens", frame, tokenizer


def markov_tokens(n: int, vocab: int = 16, p_follow: float = 0.9, seed: int = 0) -> np.ndarray:
    """A Markov chain: the next token is (3 * current + 1) % vocab with probability p_follow, else uniform.

    Its entropy rate is far below ln(vocab), so a model that learns anything beats the uniform loss clearly.
    """
    rng = np.random.default_rng(seed)
    tokens = np.zeros(n, dtype=np.int64)
    follow = rng.random(n) < p_follow
    noise = rng.integers(0, vocab, n)
    for i in range(1, n):
        tokens[i] = (3 * tokens[i - 1] + 1) % vocab if follow[i] else noise[i]
    return tokens


def entropy_rate(vocab: int, p_follow: float) -> float:
    """Nats per token of markov_tokens: the best loss any model can reach."""
    p_top = p_follow + (1 - p_follow) / vocab
    p_other = (1 - p_follow) / vocab
    return float(-(p_top * np.log(p_top) + (vocab - 1) * p_other * np.log(p_other)))


def write_token_file(path: Path, tokens: np.ndarray) -> Path:
    path = Path(path)
    path.write_text(" ".join(map(str, tokens.tolist())) + "\n")
    return path


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs: max |diff| {(a[name] - b[name]).abs().max()}"


def assert_close_weights(single: dict[str, torch.Tensor], other: dict[str, torch.Tensor]) -> None:
    """Every weight of `single` matches `other`'s to the tolerance of a 2-process run against one process."""
    for name, weight in single.items():
        torch.testing.assert_close(other[name], weight, rtol=1e-4, atol=1e-5, msg=lambda m, name=name: f"{name}: {m}")


@contextlib.contextmanager
def torch_threads_kept():
    """Training sets torch's thread count from its config; give the rest of the test session its own back."""
    threads = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def cli_main(capsys, *args):
    """`pricegpt ARGS` in this process (no torch import per case): a CompletedProcess as a subprocess gives.

    A SystemExit (argparse, or SIGTERM during training) becomes its exit code."""
    import logging
    import subprocess

    from pricegpt.cli import main

    logger = logging.getLogger("pricegpt")
    saved = logger.handlers[:], logger.level, logger.propagate
    try:
        with torch_threads_kept():
            code = main([str(a) for a in args])
    except SystemExit as exit_:
        code = exit_.code
    finally:
        logger.handlers[:], logger.level, logger.propagate = saved
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, captured.out, captured.err)


def tree(root: Path) -> dict[str, bytes | None]:
    """Every path under root (files with their bytes, folders as None): to show that nothing changed."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def single_and_two_process_weights(tokens: Path, out: Path, settings: list[str], max_steps: int):
    """The final weights of one tiny-preset training run in this process and of the same run under torchrun
    with 2 CPU processes (real subprocesses), for the tests that the two train as one."""
    import os
    import subprocess
    import sys

    from pricegpt.train import latest_checkpoint, train_run

    with torch_threads_kept():
        train_run(tokens=tokens, out=out / "single", preset="tiny", max_steps=max_steps, overrides=settings)
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "pricegpt",
            "train", "--tokens", str(tokens), "--out", str(out / "ddp"), "--preset", "tiny",
            "--max-steps", str(max_steps)]
    for setting in settings:
        args += ["--set", setting]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return (read_weights(latest_checkpoint(out / "single") / "model.safetensors"),
            read_weights(latest_checkpoint(out / "ddp") / "model.safetensors"))
