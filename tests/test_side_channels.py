"""Side channels (range, open gap, volume change as model inputs) and the volatility head: known answers for the
values and the binning, the store, a fresh side model equal to the plain one, the KV cache, exact resume and two
processes, the forecaster with and without side columns, and the volatility evaluation."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from pricegpt.config import GPTConfig, resolve_config
from pricegpt.config.schema import SIDE_BINS, SIDE_CHANNELS
from pricegpt.data import load_prices, time_splits
from pricegpt.errors import ConfigError, DataError
from pricegpt.evaluate.volatility import mse_log, qlike, volatility_block
from pricegpt.forecast import Forecaster
from pricegpt.model import GPT, generate
from pricegpt.model.gpt import CalendarInputError
from pricegpt.tokenizer import TokenStore, write_token_store
from pricegpt.tokenizer.side import SIDE_HALFLIFE, SIDE_WARMUP, fit_side_edges, patch_side, side_ids, side_values
from pricegpt.train import TokenData, Trainer, latest_checkpoint, read_token_source, train_run
from pricegpt.train.vol_targets import VolTargets
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


def ohlcv_frame(n: int = 200, seed: int = 0, symbol: str = "X") -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    open_ = close * np.exp(rng.normal(0, 0.002, n))
    high = np.maximum(open_, close) * np.exp(np.abs(rng.normal(0, 0.005, n)))
    low = np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0, 0.005, n)))
    return pd.DataFrame({"timestamp": pd.date_range("2020-01-01", periods=n, freq="D", tz="UTC"), "symbol": symbol,
                         "open": open_, "high": high, "low": low, "close": close,
                         "volume": rng.integers(1000, 5000, n).astype(float)})


# ------------------------------------------------------------------------------------------------- values
def test_side_values_known_answers():
    frame = ohlcv_frame()
    values = side_values(frame)["X"]
    assert values.shape == (len(frame) - 1, SIDE_CHANNELS) and values.dtype == np.float32
    assert np.isnan(values[:SIDE_WARMUP]).all() and np.isfinite(values[SIDE_WARMUP:]).all()
    c, o, h, lo, v = (frame[k].to_numpy() for k in ("close", "open", "high", "low", "volume"))
    t = 50  # the value of bar t sits in row t - 1 (rows are bars 1..n-1, as bar_features')
    ranges = np.log(h[1:] / lo[1:])
    weights = 0.5 ** (np.arange(t - 2, -1, -1) / SIDE_HALFLIFE)  # the bars 1..t-1 before bar t
    expected_range = ranges[t - 1] / (np.sum(weights * ranges[:t - 1]) / weights.sum())
    assert values[t - 1, 0] == pytest.approx(expected_range, rel=1e-5)
    returns = np.diff(np.log(c))
    scale = np.sum(weights * np.abs(returns[:t - 1])) / weights.sum()
    assert values[t - 1, 1] == pytest.approx(np.log(o[t] / c[t - 1]) / scale, rel=1e-5)
    log_volume = np.log1p(v[1:])
    assert values[t - 1, 2] == pytest.approx(log_volume[t - 1] - np.sum(weights * log_volume[:t - 1]) / weights.sum(),
                                             rel=1e-4, abs=1e-5)
    # causal: changing a later bar changes nothing before it
    later = frame.copy()
    later.loc[150, ["high", "volume"]] = [later.loc[150, "high"] * 1.5, 1e9]
    assert np.array_equal(side_values(later)["X"][:149], values[:149], equal_nan=True)
    # close-only data has none; a frame without volume has an unknown volume channel
    assert side_values(frame[["timestamp", "symbol", "close"]]) is None
    no_volume = side_values(frame.drop(columns="volume"))["X"]
    assert np.isnan(no_volume[:, 2]).all() and np.allclose(no_volume[:, :2], values[:, :2], equal_nan=True)


def test_binning_and_patches():
    rng = np.random.default_rng(0)
    train = rng.normal(size=(16000, SIDE_CHANNELS))
    train[:, 2] = np.nan  # a channel with no known train value has no edges: always unknown
    edges = fit_side_edges(train)
    assert [len(e) for e in edges] == [SIDE_BINS - 1, SIDE_BINS - 1, 0]
    ids = side_ids(train, edges)
    counts = np.bincount(ids[:, 0], minlength=SIDE_BINS)
    assert counts.min() > 0.9 * len(train) / SIDE_BINS  # quantile bins: about equally full on the train values
    assert (ids[:, 2] == -1).all() and ids.dtype == np.int8
    assert side_ids(np.array([[np.nan, -100.0, 100.0]]), edges).tolist() == [[-1, 0, -1]]
    assert side_ids(np.array([[0.0, 100.0, 0.0]]), edges)[0, 1] == SIDE_BINS - 1
    # a gap channel that is mostly 0 (FX) merges repeated edges instead of failing
    assert fit_side_edges(np.zeros((100, 3)))[0] == [0.0]
    per_bar = np.arange(12, dtype=np.float32).reshape(4, 3)
    per_bar[1, 0] = np.nan
    assert np.allclose(patch_side(per_bar, 2), [[0.0, 2.5, 3.5], [7.5, 8.5, 9.5]])  # known bars only
    assert np.array_equal(patch_side(per_bar, 1), per_bar, equal_nan=True)


# ------------------------------------------------------------------------------------------------- store
def test_the_store_holds_each_tokens_side_ids(stocks_store, tmp_path):
    path, frame, tokenizer = stocks_store
    store = TokenStore.open(path)
    assert store.has_side
    edges = store.side_edges
    assert len(edges) == SIDE_CHANNELS and all(len(e) == SIDE_BINS - 1 for e in edges)
    values = side_values(frame)
    for symbol in store.symbols:
        ids = store.side_ids(symbol)
        assert ids.shape == (len(store.tokens(symbol)), SIDE_CHANNELS)
        assert np.array_equal(ids, side_ids(values[symbol], edges))
    # the edges come from the train split alone: the train tokens fill the bins about equally
    train = np.concatenate([store.side_ids(s)[slice(*store.split_bounds(s)["train"])] for s in store.symbols])
    counts = np.bincount(train[:, 0][train[:, 0] >= 0], minlength=SIDE_BINS)
    assert counts.min() > 0.8 * counts.mean()
    # close-only data writes a store without side channels, and a side model refuses it before any file
    close_only = frame[["timestamp", "symbol", "close"]]
    write_token_store(tokenizer, close_only, tmp_path / "close", time_splits(close_only))
    assert not TokenStore.open(tmp_path / "close").has_side
    with pytest.raises(DataError, match="model.side needs a token store with side channels"):
        train_run(tokens=tmp_path / "close", out=tmp_path / "run", preset="tiny",
                  overrides=[*TINY, "model.side=true"])
    assert not (tmp_path / "run").exists()


def test_side_settings_are_checked():
    with pytest.raises(ConfigError, match="model.side_edges is not a setting"):
        resolve_config("tiny", overrides=["model.side_edges=1,2"])
    assert GPTConfig(side_edges=[[0.0], [0.0], []]).side_edges is None  # meaningless without side channels
    with pytest.raises(ConfigError, match="increasing finite"):
        GPTConfig(side=True, side_edges=[[1.0, 0.0], [], []])
    with pytest.raises(ConfigError, match="train.side_dropout"):
        resolve_config("tiny", overrides=["train.side_dropout=1"])
    with pytest.raises(ConfigError, match="model.vol_bars"):
        resolve_config("tiny", overrides=["model.vol_bars=-1"])


def test_bad_side_flags_on_the_command_line_are_one_error_line(capsys, tmp_path):
    result = cli_main(capsys, "train", "--tokens", tmp_path / "none", "--out", tmp_path / "run",
                      "--set", "model.side_edges=[1]")
    assert result.returncode == 2 and result.stderr.startswith("error: ") and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------------------- model
def random_side(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    side = torch.randint(0, SIDE_BINS, (batch, length, SIDE_CHANNELS), generator=g)
    side[torch.rand(batch, length, SIDE_CHANNELS, generator=g) < 0.2] = -1
    return side


def trained_side_model(seed: int = 0, **overrides) -> GPT:
    model = tiny_model(seed, side=True, side_edges=[[0.0], [0.0], [0.0]], **overrides)
    with torch.no_grad():
        for table in model.side_embedding_tables():
            table.weight.normal_(generator=torch.Generator().manual_seed(seed + 1))
    return model


def test_a_fresh_side_model_is_the_plain_model():
    plain, side = tiny_model(0), tiny_model(0, side=True, vol_bars=4)
    idx = torch.randint(0, VOCAB, (3, L))
    with torch.no_grad():
        assert torch.equal(side(idx), plain(idx))
        assert torch.equal(side(idx, side=random_side(3, L)), plain(idx))
    assert side.num_params() == side.config.num_params()
    assert side.param_breakdown()["side"] == SIDE_CHANNELS * (SIDE_BINS + 1) * 32


def test_side_inputs_change_the_output_and_none_is_all_unknown():
    model = trained_side_model()
    idx = torch.randint(0, VOCAB, (2, L))
    with torch.no_grad():
        unknown = model(idx, side=torch.full((2, L, SIDE_CHANNELS), -1))
        assert torch.equal(model(idx), unknown)
        assert not torch.allclose(model(idx, side=random_side(2, L)), unknown)
    with pytest.raises(CalendarInputError, match="shape"):
        model(idx, side=torch.zeros(2, L, 2, dtype=torch.long))
    with pytest.raises(CalendarInputError, match="lie in"):
        model(idx, side=torch.full((2, L, SIDE_CHANNELS), SIDE_BINS))
    with pytest.raises(CalendarInputError, match="without side channels"):
        tiny_model()(idx, side=random_side(2, L))


@pytest.mark.parametrize("context_len, new_tokens", [(5, 8), (12, 30)])  # (12, 30) overflows: the window refills
def test_cached_and_uncached_generation_with_side_and_calendar_are_identical(context_len, new_tokens):
    model = trained_side_model(calendar=True)
    with torch.no_grad():
        for table in model.calendar_tables():
            table.weight.normal_(generator=torch.Generator().manual_seed(5))
    contexts = torch.randint(0, VOCAB, (2, context_len))
    side = random_side(2, context_len + new_tokens)
    from test_calendar_model import random_calendar

    kwargs = dict(num_samples=3, temperature=1.0, seed=11, side=side,
                  calendar=random_calendar(2, context_len + new_tokens))
    cached = generate(model, contexts, new_tokens, **kwargs)
    assert torch.equal(cached, generate(model, contexts, new_tokens, use_cache=False, **kwargs))
    assert not torch.equal(cached, generate(model, contexts, new_tokens, num_samples=3, seed=11,
                                            calendar=kwargs["calendar"]))


# ------------------------------------------------------------------------------------------------- training
SIDE = [*TINY, "model.side=true", "model.vol_bars=3", "train.side_dropout=0.5", "model.dropout=0.1",
        "train.warmup_steps=0", "train.min_lr_frac=1.0", "train.save_every=5", "train.eval_every=5",
        "train.batch_size=4"]


def test_a_side_model_with_a_volatility_head_trains_resumes_exactly_and_forecasts(stocks_store, tmp_path):
    path, frame, _ = stocks_store
    with torch_threads_kept():
        train_run(tokens=path, out=tmp_path / "whole", preset="tiny", max_steps=20, overrides=SIDE)
        train_run(tokens=path, out=tmp_path / "parts", preset="tiny", max_steps=10, overrides=SIDE)
        train_run(tokens=path, out=tmp_path / "parts", max_steps=20, resume=True)
    whole = read_weights(latest_checkpoint(tmp_path / "whole") / "model.safetensors")
    assert_same_weights(whole, read_weights(latest_checkpoint(tmp_path / "parts") / "model.safetensors"))
    for name in ("side_tables.0.weight", "side_tables.2.weight", "vol_head.weight"):
        assert whole[name].abs().max() > 0, f"{name} did not train"
    model = GPT.from_pretrained(tmp_path / "whole" / "model")
    assert model.config.side and model.config.side_edges == TokenStore.open(path).side_edges
    # the forecaster reads the side columns of its contexts; without them (returns only) it still forecasts
    forecaster = Forecaster.from_run(tmp_path / "whole")
    features = forecaster.features(frame)
    times, values = features["IBM"]
    assert values.shape[1] == 1 + SIDE_CHANNELS
    with torch.no_grad():  # 20 steps barely move the tables; make them matter so the test sees them read
        for table in forecaster.model.side_embedding_tables():
            table.weight.normal_(generator=torch.Generator().manual_seed(0))
    with_side = forecaster.sample_returns([values[:800]], ["IBM"], 4, 16, seed=1, context_times=[times[:800]])
    without = forecaster.sample_returns([values[:800, :1]], ["IBM"], 4, 16, seed=1, context_times=[times[:800]])
    assert with_side.shape == without.shape == (1, 16, 4) and not np.array_equal(with_side, without)
    variance = forecaster.variance_of_contexts([values[:800], values[:900]], ["IBM", "IBM"], 5,
                                           context_times=[times[:800], times[:900]])
    assert variance.shape == (2,) and np.all(variance > 0) and np.all(variance < 0.05)


def test_two_processes_train_a_side_model_with_a_volatility_head_as_one(stocks_store, tmp_path):
    path = stocks_store[0]
    settings = [*SIDE, "model.dropout=0.0", "train.global_batch_size=8"]
    single, ddp = single_and_two_process_weights(path, tmp_path, settings, max_steps=6)
    assert single["side_tables.0.weight"].abs().max() > 0 and single["vol_head.weight"].abs().max() > 0
    assert_close_weights(single, ddp)


def test_a_reused_config_yaml_takes_the_new_stores_edges_and_a_too_long_head_is_refused(stocks_store, tmp_path):
    path = stocks_store[0]
    config = tmp_path / "config.yaml"
    config.write_text("model:\n  side: true\n  side_edges: [[0.5], [0.0], [0.0]]\n")
    with torch_threads_kept():
        train_run(tokens=path, out=tmp_path / "run", preset="tiny", max_steps=2, config_file=config, overrides=TINY)
    assert GPT.from_pretrained(tmp_path / "run" / "model").config.side_edges == TokenStore.open(path).side_edges
    with pytest.raises(ConfigError, match="model.vol_bars=1000 needs 1000 tokens"):
        train_run(tokens=path, out=tmp_path / "long", preset="tiny", overrides=[*TINY, "model.vol_bars=1000"])
    assert not (tmp_path / "long").exists()


def test_library_trainer_takes_the_stores_edges(stocks_store, tmp_path):
    path = stocks_store[0]
    series, source, tokenizer_dir = read_token_source(path, side=True)
    config = resolve_config("tiny", overrides=[*TINY, "model.side=true", "model.vocab_size=32"])
    data = TokenData.from_series(series, 16, 32, source=source, tokenizer_dir=tokenizer_dir, side=True)
    with torch_threads_kept():
        trainer = Trainer(config, data, tmp_path / "run")
    assert trainer.model.config.side_edges == source["side_edges"]


# ------------------------------------------------------------------------------------------------- volatility
class _Table:
    def __init__(self, rows):
        self.decode_table = np.asarray(rows, dtype=np.float64)
        self.config = type("C", (), {"scaling": "static", "halflife": 11.2})()


def test_volatility_targets_known_answers():
    tokenizer = _Table([[1.0], [2.0], [0.5]])
    targets = torch.tensor([[0, 1, 2, 1]])
    static = VolTargets(tokenizer, 2)(targets)
    assert torch.allclose(static[0, :3], torch.tensor([2.5, 2.125, 2.125])) and torch.isnan(static[0, 3])
    tokenizer.config.scaling = "ewma"
    lam = 0.5 ** (1 / 11.2)
    ewma = VolTargets(tokenizer, 2)(targets)
    # the second bar's scale grew with the first bar's shock: s^2 -> s^2 (lam + (1 - lam) z^2)
    assert ewma[0, 0].item() == pytest.approx((1.0 + 4.0 * (lam + (1 - lam) * 1.0)) / 2, rel=1e-6)
    assert ewma[0, 1].item() == pytest.approx((4.0 + 0.25 * (lam + (1 - lam) * 4.0)) / 2, rel=1e-6)


def test_qlike_and_the_volatility_block():
    assert qlike(np.array([2.0]), np.array([2.0]))[0] == 0.0 and qlike(np.array([1.0]), np.array([2.0]))[0] > 0
    assert np.isnan(qlike(np.array([1.0]), np.array([0.0]))[0]) and mse_log(np.array([np.e]), np.array([1.0]))[0] == 1
    rng = np.random.default_rng(0)
    n = 600
    true_var = np.exp(rng.normal(-8, 1, n))
    realised = true_var * rng.chisquare(5, n) / 5
    table = pd.DataFrame({"symbol": "X", "origin": pd.date_range("2020", periods=n, freq="D", tz="UTC")})
    forecasts = {"vol_head": true_var, "model": true_var * 1.3, "garch": np.full(n, true_var.mean()), "ewma": None}
    block = volatility_block(table, forecasts, realised, 5)
    assert block["headline"] == "vol_head" and block["comparison"]["ewma"] is None
    garch = block["comparison"]["garch"]
    assert garch["verdict"] == "better" and garch["qlike_diff_ci"][1] < 0
    assert block["forecasters"]["vol_head"]["qlike"] < block["forecasters"]["model"]["qlike"]
    json.dumps(block)


def test_the_pipeline_refuses_side_channels_for_close_only_data_before_any_work(tmp_path):
    from pricegpt.pipeline import run_pipeline

    frame = load_prices("sample:stocks-daily")[["timestamp", "symbol", "close"]]
    with pytest.raises(ConfigError, match="model.side=true needs open, high and low"):
        run_pipeline(frame, tmp_path / "run", overrides=["model.side=true"])
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------- shock head
def test_shock_classes_known_answers_and_settings():
    from pricegpt.train.shock_targets import ShockTargets, shock_classes

    tokenizer = _Table([[0.1], [-2.0], [0.5], [-0.2]])  # sizes 0.1, 2.0, 0.5, 0.2: two codes per class
    assert shock_classes(tokenizer, 2).tolist() == [0, 1, 1, 0]
    assert shock_classes(tokenizer, 4).tolist() == [0, 3, 2, 1]
    targets = ShockTargets(tokenizer, 2)(torch.tensor([[1, 0, -1, 2]]))
    assert targets.tolist() == [[1, 0, -1, 1]]
    with pytest.raises(ConfigError, match="more classes than the tokenizer's 4 codes"):
        shock_classes(tokenizer, 5)
    for bad in ("model.shock_bins=1", "model.shock_bins=65", "model.shock_bins=-2", "train.shock_loss_weight=-1"):
        with pytest.raises(ConfigError, match=bad.split("=")[0]):
            resolve_config("tiny", overrides=[bad])


def test_a_shock_head_trains_with_the_volatility_head_and_forecasts_class_probabilities(stocks_store, tmp_path):
    path, frame, _ = stocks_store
    overrides = [*TINY, "model.vol_bars=3", "model.shock_bins=4", "train.warmup_steps=0", "train.eval_every=5"]
    with torch_threads_kept():
        train_run(tokens=path, out=tmp_path / "run", preset="tiny", max_steps=10, overrides=overrides)
    weights = read_weights(latest_checkpoint(tmp_path / "run") / "model.safetensors")
    assert weights["shock_head.weight"].shape[0] == 4 and weights["shock_head.weight"].abs().max() > 0
    assert weights["vol_head.weight"].abs().max() > 0
    forecaster = Forecaster.from_run(tmp_path / "run")
    table = forecaster.predict_shock(frame)
    probabilities = table[[f"p_class_{k}" for k in range(4)]].to_numpy()
    assert list(table["symbol"]) == sorted(frame["symbol"].unique())
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    model = GPT.from_pretrained(tmp_path / "run" / "model")
    assert model.config.shock_bins == 4 and model.param_breakdown()["head"] == model.config.n_embd * (
        model.config.vocab_size + 1 + 4)
    plain = Forecaster.from_run(tmp_path / "run")
    plain.model.config.shock_bins = 0
    with pytest.raises(ConfigError, match="no shock head"):
        plain.predict_shock(frame)
