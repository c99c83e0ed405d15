"""Forecasts: context alignment and scaling, batching, decoding, quantile tables and risk numbers."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pricegpt.errors import ConfigError, DataError, PriceGPTError
from pricegpt.forecast import Forecaster, origin_seed, quantile_table, risk, symbol_file_name
from pricegpt.model.gpt import GPTConfig
from pricegpt.runs import Run
from pricegpt.tokenizer import create_tokenizer

PATCH = 4
K = 16


class RecordingModel:
    """Stands in for the GPT: records every generate call and 'samples' the context's last token repeated, so
    each decoded path is known exactly."""

    def __init__(self, sequence_len: int = 8):
        self.config = GPTConfig(sequence_len=sequence_len, vocab_size=K, n_layer=1, n_head=2, n_kv_head=1,
                                n_embd=16)
        self.calls = []

    def generate(self, idx, max_new_tokens, *, num_samples=1, temperature=1.0, top_k=None, top_p=None, seed=None,
                 autocast=None):
        self.calls.append({"idx": idx.clone(), "n": max_new_tokens, "samples": num_samples,
                           "temperature": temperature, "seed": seed})
        return idx[:, -1][:, None, None].expand(idx.shape[0], num_samples, max_new_tokens).clone()


@pytest.fixture(autouse=True)
def recording_engine(monkeypatch):
    """The Forecaster samples through model.generate(model, ...); a RecordingModel answers those calls itself."""
    monkeypatch.setattr("pricegpt.forecast.forecaster.generate",
                        lambda model, idx, max_new_tokens, **sampling: model.generate(idx, max_new_tokens, **sampling))


@pytest.fixture(scope="module")
def tokenizer(stocks_frame):
    return create_tokenizer("quantile", patch_len=PATCH, codebook_size=K).fit(stocks_frame)


def _forecaster(tokenizer, calibration=None, sequence_len=8):
    run = Run(dir=Path("unused"), model=RecordingModel(sequence_len), tokenizer=tokenizer, meta={},
              calibration=calibration or {})
    return Forecaster(run)


def test_context_patches_end_at_the_origin_and_use_the_symbols_scale(tokenizer):
    fc = _forecaster(tokenizer, {"temperature": 0.9})
    rng = np.random.default_rng(0)
    contexts = [rng.normal(0, 0.02, size=103), rng.normal(0, 0.01, size=42)]
    symbols = ["AAPL", "IBM"]
    paths = fc.sample_returns(contexts, symbols, horizon=6, num_samples=3, seed=1)
    assert paths.shape == (2, 3, 6)
    # sequence_len 8, ceil(6 / 4) = 2 new tokens -> 6 context patches = the last 24 bars of each context
    (call,) = fc.model.calls  # both origins in one engine call, each with its own seed
    assert call["seed"] == [origin_seed(1, symbol, len(c)) for symbol, c in zip(symbols, contexts)]
    seen = call["idx"].numpy()
    assert seen.shape == (2, 6)
    for row, context, symbol in zip(seen, contexts, symbols):
        expected = tokenizer.encode_patches(context[-24:].reshape(6, PATCH), symbol)
        np.testing.assert_array_equal(row, expected)
        # the same bars cut from the series' start would generally give other tokens: alignment matters
    for i, symbol in enumerate(symbols):
        decoded = tokenizer.decode(np.array([seen[i, -1]] * 2), symbol)[:6]
        np.testing.assert_allclose(paths[i], np.broadcast_to(decoded, (3, 6)))
    assert not np.allclose(tokenizer.decode(np.array([3]), "AAPL"), tokenizer.decode(np.array([3]), "IBM"))
    assert {c["temperature"] for c in fc.model.calls} == {0.9}  # the calibrated temperature by default
    fc.sample_returns(contexts, symbols, horizon=6, num_samples=3, temperature=1.3)
    assert fc.model.calls[-1]["temperature"] == 1.3


def test_short_history_uses_what_there_is_and_too_short_is_an_error(tokenizer):
    fc = _forecaster(tokenizer)
    context = np.linspace(-0.01, 0.01, 11)  # two whole patches, ending at the origin
    fc.sample_returns([context], ["MSFT"], horizon=4, num_samples=2)
    np.testing.assert_array_equal(fc.model.calls[-1]["idx"][0].numpy(),
                                  tokenizer.encode_patches(context[-8:].reshape(2, PATCH), "MSFT"))
    with pytest.raises(DataError, match="at least 4 bars"):
        fc.sample_returns([np.zeros(3)], ["MSFT"], horizon=4, num_samples=2)


def test_every_origin_has_its_own_seed_whatever_the_batch_or_the_memory_budget(tokenizer, monkeypatch):
    rng = np.random.default_rng(1)
    contexts = rng.normal(0, 0.01, size=(7, 40))
    symbols = ["AAPL", "GOOG", "IBM", "MSFT", "AAPL", "GOOG", "IBM"]
    ends = pd.date_range("2012-01-02", periods=7, freq="D", tz="UTC")
    one_call = _forecaster(tokenizer)
    full = one_call.sample_cumulative(contexts, symbols, horizon=5, num_samples=10, seed=3, context_ends=ends)
    assert len(one_call.model.calls) == 1
    seeds = one_call.model.calls[0]["seed"]
    assert len(seeds) == 7 and len(set(seeds)) == 7
    assert seeds[2] == origin_seed(3, "IBM", ends[2].value)
    # alone, in another order, or with a budget of 4 rows per call: the same seeds for the same origins
    alone = _forecaster(tokenizer)
    alone.sample_cumulative(contexts[2:3], symbols[2:3], horizon=5, num_samples=10, seed=3, context_ends=ends[2:3])
    assert [c["seed"] for c in alone.model.calls] == [[seeds[2]]]
    chunked = _forecaster(tokenizer)
    c = chunked.model.config
    row_bytes = c.n_layer * 2 * c.sequence_len * c.n_kv_head * c.head_dim * 4
    monkeypatch.setattr("pricegpt.forecast.forecaster.KV_CACHE_BUDGET_BYTES", 4 * row_bytes)  # 4 rows per engine call
    np.testing.assert_array_equal(chunked.sample_cumulative(contexts, symbols, horizon=5, num_samples=10, seed=3,
                                                            context_ends=ends), full)
    assert all(call["idx"].shape[0] * call["samples"] <= 4 for call in chunked.model.calls)
    blocks = [seed for call in chunked.model.calls for seed in call["seed"]]  # blocks of 4, 4 and 2 samples
    assert len(blocks) == 21 and origin_seed(3, "IBM", ends[2].value, 2) in blocks
    assert full.shape == (7, 10, 5)
    np.testing.assert_allclose(np.diff(full, axis=-1, prepend=0), one_call.sample_returns(contexts, symbols, 5, 10))


def test_a_real_models_paths_of_an_origin_are_the_same_alone_or_batched(tokenizer, monkeypatch):
    # The real engine (not the recording stand-in): many origins share an engine call, each sampled from its own
    # generator, so an origin's paths are bit-identical alone, among others in any order, or in smaller calls.
    from pricegpt.model import GPT, generate
    from test_model import tiny_config

    monkeypatch.setattr("pricegpt.forecast.forecaster.generate", generate)
    torch.manual_seed(0)
    model = GPT(tiny_config(vocab_size=K, sequence_len=12)).eval()
    fc = Forecaster(Run(dir=Path("unused"), model=model, tokenizer=tokenizer))
    rng = np.random.default_rng(4)
    contexts = [rng.normal(0, 0.01, size=n) for n in (60, 60, 23, 60, 9, 60)]  # 3 context lengths in tokens
    symbols = ["AAPL", "GOOG", "IBM", "MSFT", "AAPL", "IBM"]
    ends = pd.date_range("2012-01-02", periods=6, freq="D", tz="UTC")

    def paths(chosen, **kwargs):
        return fc.sample_returns([contexts[i] for i in chosen], [symbols[i] for i in chosen], 6, 32, seed=9,
                                 context_ends=ends[chosen], temperature=1.0, **kwargs)

    together = paths([0, 1, 2, 3, 4, 5])
    for i in range(6):
        np.testing.assert_array_equal(paths([i])[0], together[i])
    np.testing.assert_array_equal(paths([5, 4, 3, 2, 1, 0])[::-1], together)
    assert not np.array_equal(together[0], together[1])  # different origins, different streams
    assert len({tuple(row) for row in together[0]}) > 1  # and different paths within an origin
    c = model.config
    monkeypatch.setattr("pricegpt.forecast.forecaster.KV_CACHE_BUDGET_BYTES",  # 64 rows: 2 origins per call
                        64 * c.n_layer * 2 * c.sequence_len * c.n_kv_head * c.head_dim * 4)
    np.testing.assert_array_equal(paths([0, 1, 2, 3, 4, 5], progress=False), together)


def test_a_progress_bar_only_when_asked_or_on_a_terminal(tokenizer, capsys):
    fc = _forecaster(tokenizer)
    contexts, symbols = np.zeros((3, 20)), ["AAPL", "IBM", "MSFT"]
    fc.sample_returns(contexts, symbols, horizon=4, num_samples=2)  # pytest's stderr is not a terminal
    assert capsys.readouterr().err == ""
    fc.sample_returns(contexts, symbols, horizon=4, num_samples=2, progress=True, label="calibrate T=0.9")
    err = capsys.readouterr().err
    assert "calibrate T=0.9" in err and "0/3" in err  # a bar of 3 origins
    fc.sample_returns(contexts, symbols, horizon=4, num_samples=2, progress=False)
    assert capsys.readouterr().err == ""


def test_sample_paths_and_quantile_table(tokenizer, stocks_frame):
    fc = _forecaster(tokenizer)
    frame = stocks_frame[stocks_frame["symbol"].isin(["IBM", "MSFT"])]
    paths = fc.sample_paths(frame, horizon_bars=6, num_samples=4)
    assert paths.symbols == ["IBM", "MSFT"] and paths.paths.shape == (2, 4, 6)
    assert paths.origins[0] == frame[frame["symbol"] == "IBM"]["timestamp"].iloc[-1]
    assert paths.last_close[1] == frame[frame["symbol"] == "MSFT"]["close"].iloc[-1]
    with pytest.raises(DataError, match="available: 'IBM', 'MSFT'"):
        fc.sample_paths(frame, 6, 4, symbols=["<script>"])
    rng = np.random.default_rng(2)
    paths.paths = rng.normal(0, 0.01, size=(2, 500, 6))
    table = quantile_table(paths, levels=(0.05, 0.5, 0.95))
    assert len(table) == 12 and list(table["step"][:6]) == [1, 2, 3, 4, 5, 6]
    assert (table["return_q0.05"] < table["return_q0.5"]).all() and (table["return_q0.5"] < table["return_q0.95"]).all()
    np.testing.assert_allclose(table["price_q0.95"], np.repeat(paths.last_close, 6) * np.exp(table["return_q0.95"]))
    # the spread of the cumulative return grows with the horizon
    ibm = table[table["symbol"] == "IBM"]
    spread = (ibm["return_q0.95"] - ibm["return_q0.05"]).to_numpy()
    assert spread[-1] > 1.8 * spread[0]


def test_risk_numbers_on_known_paths():
    # 100 one-bar paths with final log returns -0.099, -0.098, ..., 0.0
    finals = -np.arange(1, 101)[::-1] / 1000.0 + 0.001
    out = risk(finals[:, None], var_levels=(0.95,), barriers=(0.05,))
    losses = np.sort(1 - np.exp(finals))
    assert out["p_up"] == 0.0
    assert out["var_95"] == pytest.approx(np.quantile(losses, 0.95))
    assert out["es_95"] == pytest.approx(losses[-5:].mean())  # the 5 worst of 100
    assert out["es_95"] >= out["var_95"] > 0  # losses are positive numbers
    assert out["p_touch_down"]["0.05"] == pytest.approx(np.mean(finals <= math.log(0.95)))
    assert out["p_touch_up"]["0.05"] == 0.0


def test_barrier_touch_counts_the_path_not_just_its_end():
    up_then_back = np.array([[0.03, 0.03, -0.06]])  # cumulative 3%, 6.1%, ~0%
    out = risk(np.repeat(up_then_back, 4, axis=0), barriers=(0.05, 0.10))
    assert out["p_touch_up"] == {"0.05": 1.0, "0.1": 0.0}
    assert out["p_touch_down"]["0.05"] == 0.0
    assert out["p_up"] == 0.0 and out["var_99"] == pytest.approx(0.0, abs=1e-12)
    batch = risk(np.stack([np.repeat(up_then_back, 4, axis=0), -np.repeat(up_then_back, 4, axis=0)]))
    assert batch["p_touch_up"]["0.05"].tolist() == [1.0, 0.0] and batch["p_touch_down"]["0.05"].tolist() == [0.0, 1.0]


def test_symbol_file_names_stay_inside_the_folder_and_short():
    assert symbol_file_name("BTC-USD") == "BTC-USD"
    for evil in ("../../etc/passwd", "a/b", "<script>", "..", "", "x" * 300, "a\\b", "con"):
        name = symbol_file_name(evil)
        assert "/" not in name and "\\" not in name and not name.startswith(".") and 0 < len(name) <= 64, name
    assert symbol_file_name("x" * 300) != symbol_file_name("x" * 299)  # the hash keeps long names apart


def test_forecaster_needs_a_tokenizer():
    run = Run(dir=Path("r"), model=RecordingModel(), tokenizer=None)
    with pytest.raises(Exception, match="no tokenizer"):
        Forecaster(run)


def test_origin_timestamp_is_tz_aware(tokenizer, stocks_frame):
    fc = _forecaster(tokenizer)
    paths = fc.sample_paths(stocks_frame[stocks_frame["symbol"] == "IBM"], 4, 2)
    assert isinstance(paths.origins[0], pd.Timestamp) and str(paths.origins[0].tz) == "UTC"


@pytest.mark.parametrize("kwargs, fragment", [
    ({"horizon_bars": 0}, "horizon_bars"), ({"horizon_bars": 2.5}, "horizon_bars"), ({"horizon_bars": True}, "horizon"),
    ({"num_samples": -1}, "num-samples"), ({"num_samples": "8"}, "num-samples"), ({"num_samples": 10**9}, "1000000"),
    ({"seed": -1}, "seed"), ({"seed": 2**64}, "seed"), ({"temperature": float("nan")}, "temperature"),
    ({"horizon_bars": 100_000, "num_samples": 1_000_000}, "memory"), ({"symbols": ["NOPE"]}, "NOPE.*not in the data"),
])
def test_forecaster_api_refuses_bad_values_with_a_user_error_before_sampling(tokenizer, stocks_frame, kwargs,
                                                                            fragment):
    fc = _forecaster(tokenizer)
    frame = stocks_frame[stocks_frame["symbol"] == "IBM"]
    args = {"horizon_bars": 4, "num_samples": 8, **kwargs}
    with pytest.raises(PriceGPTError, match=fragment):
        fc.predict_quantiles(frame, **args)
    with pytest.raises(PriceGPTError, match=fragment):
        fc.sample_paths(frame, **args)
    assert fc.model.calls == []


def test_too_little_history_is_a_data_error_naming_the_symbol(tokenizer, stocks_frame):
    fc = _forecaster(tokenizer)
    short = stocks_frame[stocks_frame["symbol"] == "IBM"].head(3)  # 2 returns, a patch needs 4
    with pytest.raises(DataError, match="IBM: a forecast needs at least 4 bars of history"):
        fc.predict_quantiles(short, horizon_bars=4, num_samples=8)
    with pytest.raises(ConfigError, match="num_samples"):
        fc.sample_returns([np.zeros(8)], ["IBM"], 4, 0)
