"""Asset identity (issue 17): a symbol embedding with an "unknown" row, through the model, the KV-cache engine,
the trainer (symbol dropout, exact resume), the run's files and the forecaster."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pricegpt.config import GPTConfig, TrainConfig
from pricegpt.errors import ConfigError
from pricegpt.forecast import Forecaster
from pricegpt.model import GPT, generate
from pricegpt.model.gpt import CalendarInputError
from pricegpt.tokenizer import TokenStore
from pricegpt.train import TokenData, Trainer, latest_checkpoint, train_run
from test_model import tiny_model
from train_helpers import (
    TINY,
    assert_close_weights,
    assert_same_weights,
    cli_main,
    read_weights,
    single_and_two_process_weights,
    torch_threads_kept,
)

VOCAB, L = 32, 16
SYMBOLS = ["AAA", "BBB", "CCC"]


def symbol_model(seed: int = 0) -> GPT:
    """A tiny symbol model whose table is random (a trained one's is not zero)."""
    model = tiny_model(seed, symbol_embedding=True, symbols=SYMBOLS)
    with torch.no_grad():
        model.symbol_table.weight.normal_(generator=torch.Generator().manual_seed(seed + 1))
    return model


def test_a_fresh_symbol_model_is_the_plain_model():
    plain, model = tiny_model(0), tiny_model(0, symbol_embedding=True, symbols=SYMBOLS)
    idx = torch.randint(0, VOCAB, (3, L))
    with torch.no_grad():
        assert torch.equal(model(idx), plain(idx))
        assert torch.equal(model(idx, symbol=torch.tensor([0, 2, -1])), plain(idx))
    assert model.num_params() == model.config.num_params()
    assert model.param_breakdown()["symbol"] == (len(SYMBOLS) + 1) * 32


def test_symbol_inputs_change_the_output_none_is_unknown_and_bad_ids_are_refused():
    model = symbol_model()
    idx = torch.randint(0, VOCAB, (3, L))
    with torch.no_grad():
        unknown = model(idx, symbol=torch.full((3,), -1))
        assert torch.equal(model(idx), unknown)
        ids = torch.tensor([0, 1, 2])
        assert torch.equal(model(idx, symbol=ids), model(idx, symbol=ids[:, None].expand(3, L)))
        assert not torch.allclose(model(idx, symbol=ids), unknown)
    assert model.symbol_ids(["CCC", "ZZZ", "AAA"]).tolist() == [2, -1, 0]
    with pytest.raises(CalendarInputError, match=r"lie in \[0, 3\)"):
        model(idx, symbol=torch.tensor([0, 1, 3]))
    with pytest.raises(CalendarInputError, match="shape"):
        model(idx, symbol=torch.zeros(2, dtype=torch.long))
    with pytest.raises(CalendarInputError, match="integer"):
        model(idx, symbol=torch.zeros(3))
    with pytest.raises(CalendarInputError, match="without a symbol embedding"):
        tiny_model()(idx, symbol=torch.zeros(3, dtype=torch.long))


@pytest.mark.parametrize("context_len, new_tokens", [(5, 8), (12, 30)])  # (12, 30) overflows: the window refills
def test_cached_uncached_and_per_context_generation_with_symbols_are_identical(context_len, new_tokens):
    model = symbol_model()
    contexts = torch.randint(0, VOCAB, (3, context_len))
    symbol = torch.tensor([2, -1, 0])
    kwargs = dict(num_samples=4, seed=[5, 6, 7], symbol=symbol)
    cached = generate(model, contexts, new_tokens, **kwargs)
    assert torch.equal(cached, generate(model, contexts, new_tokens, use_cache=False, **kwargs))
    alone = [generate(model, contexts[i:i + 1], new_tokens, num_samples=4, seed=[5 + i], symbol=symbol[i:i + 1])
             for i in range(3)]
    assert torch.equal(cached, torch.cat(alone))
    assert not torch.equal(cached, generate(model, contexts, new_tokens, num_samples=4, seed=[5, 6, 7]))
    with pytest.raises(CalendarInputError, match="one integer id per context"):
        generate(model, contexts, 2, symbol="AAA")


def test_symbol_settings_are_checked(capsys, tmp_path):
    with pytest.raises(ConfigError, match="distinct|twice"):
        GPTConfig(symbol_embedding=True, symbols=["A", "A"])
    with pytest.raises(ConfigError, match="list of symbol names"):
        GPTConfig(symbol_embedding=True, symbols=[1, 2])
    with pytest.raises(ConfigError, match="train.symbol_dropout"):
        TrainConfig(symbol_dropout=1.0)
    assert GPTConfig(symbols=["A"]).symbols is None  # a reused config.yaml of a symbol model, switched off
    result = cli_main(capsys, "train", "--tokens", tmp_path / "none", "--out", tmp_path / "run",
                      "--set", "model.symbols=AAA")
    assert result.returncode == 2 and result.stderr.startswith("error: ") and "not a setting" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "run").exists()


def test_a_symbol_model_learns_what_only_the_symbol_tells(tmp_path):
    """Two symbols with the same tokens but opposite dynamics: UP's next token is the last + 1 (mod 16), DOWN's the
    last - 1, each 90% of the time. From a one-token context only the symbol row can tell them apart."""
    rng = np.random.default_rng(0)

    def chain(step: int, n: int = 3000) -> np.ndarray:
        tokens = np.zeros(n, dtype=np.int64)
        for i in range(1, n):
            tokens[i] = (tokens[i - 1] + step) % 16 if rng.random() < 0.9 else rng.integers(0, 16)
        return tokens

    series = {"UP": (chain(+1), {"train": (0, 2500), "val": (2500, 3000)}),
              "DOWN": (chain(-1), {"train": (0, 2500), "val": (2500, 3000)})}
    from pricegpt.config import resolve_config

    config = resolve_config("tiny", overrides=[*TINY, "model.symbol_embedding=true", "model.vocab_size=16",
                                               "train.max_steps=200", "train.eval_every=200",
                                               "model.sequence_len=4"])
    data = TokenData.from_series(series, 4, 16, source={})
    with torch_threads_kept():
        trainer = Trainer(config, data, tmp_path / "run")
        assert trainer.model.config.symbols == ["UP", "DOWN"]
        trainer.train()
    model = trainer.model.eval()
    first = torch.arange(16)[:, None]
    with torch.no_grad():
        probs = {name: torch.softmax(model(first, symbol=model.symbol_ids([name] * 16))[:, -1], -1)
                 for name in ("UP", "DOWN", "unseen")}
    up, down = (first[:, 0] + 1) % 16, (first[:, 0] - 1) % 16
    rows = torch.arange(16)
    assert probs["UP"][rows, up].mean() > 0.6 and probs["DOWN"][rows, down].mean() > 0.6
    # the unknown row (10% of the training windows) learned the mixture: neither direction dominates
    assert 0.2 < probs["unseen"][rows, up].mean() < 0.7 and 0.2 < probs["unseen"][rows, down].mean() < 0.7


def test_a_symbol_run_resumes_exactly_keeps_its_symbols_and_forecasts_any_symbol(stocks_store, tmp_path):
    path, frame, _ = stocks_store
    settings = [*TINY, "model.symbol_embedding=true", "train.save_every=5", "train.eval_every=5",
                "train.batch_size=4", "train.warmup_steps=0", "train.min_lr_frac=1.0"]
    with torch_threads_kept():
        train_run(tokens=path, out=tmp_path / "whole", preset="tiny", max_steps=12, overrides=settings)
        train_run(tokens=path, out=tmp_path / "parts", preset="tiny", max_steps=6, overrides=settings)
        train_run(tokens=path, out=tmp_path / "parts", max_steps=12, resume=True)
    whole = read_weights(latest_checkpoint(tmp_path / "whole") / "model.safetensors")
    assert_same_weights(whole, read_weights(latest_checkpoint(tmp_path / "parts") / "model.safetensors"))
    assert whole["symbol_table.weight"].abs().max() > 0, "the symbol table did not train"
    model = GPT.from_pretrained(tmp_path / "whole" / "model")
    assert model.config.symbols == TokenStore.open(path).symbols
    forecaster = Forecaster.from_run(tmp_path / "whole")
    table = forecaster.model.symbol_table.weight
    with torch.no_grad():  # 12 steps barely move the table; make it matter so the test sees it read
        table.normal_(generator=torch.Generator().manual_seed(0))
    times, values = forecaster.features(frame)["IBM"]

    def sample(symbol: str) -> np.ndarray:
        return forecaster.sample_returns([values[:800]], [symbol], 4, 16, seed=1, context_times=[times[:800]])

    known, unseen = sample("IBM"), sample("NOT-TRAINED")
    assert known.shape == unseen.shape == (1, 16, 4)
    row = model.symbol_ids(["IBM"]).item()
    with torch.no_grad():
        table[row] = table[-1] + 1.0
    assert not np.array_equal(sample("IBM"), known) and np.array_equal(sample("NOT-TRAINED"), unseen)
    with torch.no_grad():
        table[-1] += 1.0  # the "unknown" row: what a symbol the model never saw reads
    assert not np.array_equal(sample("NOT-TRAINED"), unseen)


def test_two_processes_train_a_symbol_model_as_one(stocks_store, tmp_path):
    settings = [*TINY, "model.symbol_embedding=true", "train.symbol_dropout=0.3", "train.global_batch_size=8",
                "train.batch_size=4", "train.warmup_steps=0"]
    single, ddp = single_and_two_process_weights(stocks_store[0], tmp_path, settings, max_steps=6)
    assert single["symbol_table.weight"].abs().max() > 0
    assert_close_weights(single, ddp)
