"""Training: the loss falls, windows respect symbols and splits, configs and run directories are checked."""

from __future__ import annotations

import json
import math
import subprocess

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import assert_user_error, run_cli
from pricegpt.cli import main
from pricegpt.config import load_config
from pricegpt.errors import ConfigError, DataError
from pricegpt.model.gpt import GPT
from pricegpt.train import TokenData, WindowSet, train_run
from pricegpt.train.metrics import MetricsLog
from pricegpt.train.optim import lr_factor, zeropower_via_newtonschulz5
from train_helpers import TINY, entropy_rate, markov_tokens, torch_threads_kept, write_token_file

V = 16


@pytest.fixture(scope="module")
def markov_file(tmp_path_factory):
    return write_token_file(tmp_path_factory.mktemp("tokens") / "tokens.txt", markov_tokens(8000, V))


@pytest.mark.parametrize("optimizer,dtype", [("adamw", "fp32"), ("muon", "bf16")])
def test_loss_falls_on_a_markov_chain(markov_file, tmp_path, optimizer, dtype):
    run = tmp_path / "run"
    with torch_threads_kept():
        result = train_run(tokens=markov_file, out=run, preset="tiny", max_steps=120,
                           overrides=[*TINY, f"model.vocab_size={V}", "train.eval_every=40",
                                      f"train.optimizer={optimizer}", f"train.dtype={dtype}"])
    uniform, floor = math.log(V), entropy_rate(V, 0.9)
    # halfway from the uniform loss to the entropy rate of the chain at least
    assert result["best_val_loss"] < (uniform + floor) / 2, (result, uniform, floor)
    assert result["steps"] == 120 and result["best_step"] > 0 and result["out"] == str(run)

    metrics = np.genfromtxt(run / "metrics.csv", delimiter=",", names=True)
    assert metrics["step"][0] == 0 and abs(metrics["val_loss"][0] - uniform) < 1e-3  # zero-init head
    assert (np.diff(metrics["step"]) > 0).all() and metrics["step"][-1] == 120
    assert (run / "training_curve.png").stat().st_size > 0
    model = GPT.from_pretrained(run / "model")
    assert model.config.vocab_size == V and model.config.n_embd == 32
    assert load_config(run / "config.yaml").train.optimizer == optimizer


def _series(lengths: dict[str, int], train_frac=0.6, val_frac=0.2):
    """Symbols whose tokens say who and where they are: symbol k's token at position i is 1000 * k + i."""
    series = {}
    for k, (name, n) in enumerate(lengths.items()):
        a, b = int(n * train_frac), int(n * (train_frac + val_frac))
        series[name] = (1000 * k + np.arange(n), {"train": (0, a), "val": (a, b), "test": (b, n)})
    return series


def test_windows_never_cross_a_symbol_or_split_boundary():
    series = _series({"AAA": 60, "TINY": 10, "BBB": 101, "CCC": 37})
    data = TokenData.from_series(series, sequence_len=7, vocab_size=4000)
    for split, windows in (("train", data.train), ("val", data.val)):
        ids = np.concatenate([windows.sample_ids(seed=3, step=s, n=256) for s in range(8)])
        batch = windows.gather(ids).numpy()
        assert batch.shape == (len(ids), 8)
        assert (np.diff(batch, axis=1) == 1).all(), "a window mixes symbols or skips tokens"
        symbol, position = batch // 1000, batch % 1000
        assert (symbol[:, 0] == symbol[:, -1]).all()
        for k, (name, (_, bounds)) in enumerate(series.items()):
            lo, hi = bounds[split]
            rows = symbol[:, 0] == k
            assert (position[rows] >= lo).all() and (position[rows] < hi).all(), (name, split)
        # every window that fits is reachable, and nothing else
        expected = sum(max(0, b[split][1] - b[split][0] - 7) for _, b in series.values())
        assert windows.num_windows == expected
        assert len(np.unique(windows.window_starts(np.arange(windows.num_windows)))) == expected
    assert not (data.train.gather(np.arange(data.train.num_windows)) // 1000 == 1).any(), "TINY is too short"


def test_batches_are_a_pure_function_of_seed_and_step():
    windows = WindowSet([np.arange(500)], length=9)
    assert np.array_equal(windows.sample_ids(1, 7, 64), windows.sample_ids(1, 7, 64))
    assert not np.array_equal(windows.sample_ids(1, 7, 64), windows.sample_ids(1, 8, 64))
    assert not np.array_equal(windows.sample_ids(1, 7, 64), windows.sample_ids(2, 7, 64))


def test_token_ids_are_checked_against_the_model_vocabulary():
    series = {"all": (np.array([1, 2, 3, 40] * 20), {"train": (0, 60), "val": (60, 80)})}
    with pytest.raises(DataError, match=r"\[1, 40\].*vocabulary is \[0, 16\)"):
        TokenData.from_series(series, sequence_len=8, vocab_size=16)


def test_too_little_data_says_how_many_tokens_a_window_needs():
    series = {"all": (np.arange(30) % 4, {"train": (0, 12), "val": (12, 30)})}
    with pytest.raises(DataError, match="train split is too short.*needs 17 consecutive tokens.*longest train "
                                        "series has 12"):
        TokenData.from_series(series, sequence_len=64, vocab_size=16)


def test_schedule_warms_up_linearly_then_decays_to_min_lr():
    factors = [lr_factor(s, warmup_steps=10, max_steps=110, min_lr_frac=0.1) for s in range(111)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert factors[10] == pytest.approx(1.0) and factors[60] == pytest.approx(0.55)
    assert factors[110] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(factors[9:], factors[10:]))


def test_newton_schulz_orthogonalises():
    g = torch.randn(64, 16, generator=torch.Generator().manual_seed(0))
    singular_values = torch.linalg.svdvals(zeropower_via_newtonschulz5(g))
    assert singular_values.min() > 0.5 and singular_values.max() < 1.3, singular_values


def test_an_existing_run_directory_is_not_overwritten(markov_file, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    result = run_cli("train", "--tokens", markov_file, "--out", run, "--preset", "tiny", "--max-steps", "2")
    assert_user_error(result, "already exists", str(run))
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt"]
    assert (run / "notes.txt").read_text() == "mine"


def _main(capsys, *args) -> subprocess.CompletedProcess:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, captured.out, captured.err)


@pytest.mark.parametrize("flags,fragments", [
    (["--set", "train.learning_rate=1e-3"], ["unknown key 'train.learning_rate'", "lr"]),
    (["--set", "train.max_steps=many"], ["train.max_steps", "whole number", "many"]),
    (["--set", "train.optimizer=sgd"], ["train.optimizer", "adamw, muon"]),
    (["--set", "optim.lr=1"], ["unknown config section", "optim", "train"]),
    (["--preset", "huge"], ["unknown preset 'huge'", "tiny, small, seed, large"]),
])
def test_bad_configs_are_clear_user_errors(markov_file, tmp_path, capsys, flags, fragments):
    result = _main(capsys, "train", "--tokens", markov_file, "--out", tmp_path / "run", *flags)
    assert_user_error(result, *fragments)
    assert not (tmp_path / "run").exists()


def test_bad_config_file_is_a_clear_user_error(markov_file, tmp_path, capsys):
    config = tmp_path / "config.yaml"
    config.write_text("model:\n  n_layers: 3\n")
    result = _main(capsys, "train", "--tokens", markov_file, "--out", tmp_path / "run", "--config", config)
    assert_user_error(result, "unknown key 'model.n_layers'", "n_layer")


def test_early_stopping_keeps_the_best_model_when_validation_gets_worse(tmp_path):
    # train split: a fixed cycle; val split (last 20%): random tokens. Learning the cycle only hurts val.
    cycle = np.tile(np.arange(V), 200)
    noise = np.random.default_rng(0).integers(0, V, len(cycle) // 4)
    tokens = write_token_file(tmp_path / "tokens.txt", np.concatenate([cycle, noise]))
    with torch_threads_kept():
        result = train_run(tokens=tokens, out=tmp_path / "run", preset="tiny", max_steps=200,
                           overrides=[*TINY, f"model.vocab_size={V}", "train.eval_every=10",
                                      "train.early_stopping_patience=2"])
    assert result["stopped_early"] and result["steps"] == 20
    assert result["best_step"] == 0 and result["best_val_loss"] == pytest.approx(math.log(V))
    assert json.loads((tmp_path / "run" / "model" / "meta.json").read_text())["step"] == 0


def test_tensorboard_without_the_package_is_a_clear_error(tmp_path):
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match=r"pip install 'pricegpt\[tensorboard\]'"):
            MetricsLog(tmp_path, tensorboard=True)
    else:
        pytest.skip("tensorboard is installed")


def test_trains_on_a_token_store_and_keeps_its_tokenizer(stocks_frame, tmp_path):
    from pricegpt.data import time_splits
    from pricegpt.runs import load_run
    from pricegpt.tokenizer import TokenStore, fit_to_dir, load_tokenizer, write_token_store

    splits = time_splits(stocks_frame)
    fit_to_dir(stocks_frame, tmp_path / "tokenizer", kind="quantile", train_end=splits.train_end,
               val_end=splits.val_end)
    index = write_token_store(load_tokenizer(tmp_path / "tokenizer"), stocks_frame, tmp_path / "tokens", splits)
    run = tmp_path / "run"
    with torch_threads_kept():
        result = train_run(tokens=tmp_path / "tokens", out=run, preset="tiny", overrides=TINY, max_steps=5)
    assert result["steps"] == 5
    trained = load_run(run, need_tokenizer=True)  # what generate / evaluate / forecast open
    assert trained.model.config.vocab_size == index["vocab_size"]  # from the store, not the preset
    assert trained.tokenizer.hash == index["tokenizer_hash"]
    assert (run / "tokenizer" / "config.json").is_file() and (run / "model" / "tokenizer" / "config.json").is_file()
    meta = json.loads((run / "model" / "meta.json").read_text())
    store = TokenStore.open(tmp_path / "tokens")
    assert meta["tokenizer_hash"] == index["tokenizer_hash"] and meta["finished"] is True
    assert pd.Timestamp(meta["train_end"]) == store.train_end and pd.Timestamp(meta["val_end"]) == store.val_end
    assert meta["symbols"] == store.symbols and meta["tokens"] == str((tmp_path / "tokens").resolve())
