"""Tokenizers: the one interface of vqvae / quantile / uniform, leakage-free fitting, exact save/load, fit_to_dir."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pricegpt.errors import ConfigError, DataError, OutputExistsError, TokenizerError
from pricegpt.tokenizer import (
    DEFAULT_PATCH_LEN,
    benchmark_encode,
    create_tokenizer,
    fit_to_dir,
    load_tokenizer,
)

KINDS = ("vqvae", "quantile", "uniform")
# A vqvae small enough to fit in a fraction of a second; the defaults are exercised on real data below.
TINY_VQVAE = dict(steps=40, batch_size=64, hidden_dim=16, latent_dim=4, kmeans_iters=3, restart_every=10)
PROPERTY = settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                        HealthCheck.function_scoped_fixture])


def random_walks(seed: int, n_symbols: int = 3, min_bars: int = 200, max_bars: int = 400) -> pd.DataFrame:
    """Fat-tailed random walks with per-symbol volatility and ragged start dates, in the canonical frame."""
    rng = np.random.default_rng(seed)
    parts = []
    for i in range(n_symbols):
        n = int(rng.integers(min_bars, max_bars + 1))
        start = pd.Timestamp("2020-01-01", tz="UTC") + pd.Timedelta(days=int(rng.integers(0, 40)))
        returns = rng.uniform(0.005, 0.03) * rng.standard_t(4, n - 1)
        parts.append(pd.DataFrame({"timestamp": pd.date_range(start, periods=n, freq="D"), "symbol": f"S{i}",
                                   "close": 50 * np.exp(np.concatenate([[0.0], np.cumsum(returns)]))}))
    return pd.concat(parts, ignore_index=True)


def tiny(kind: str, **options):
    extra = TINY_VQVAE if kind == "vqvae" else {}
    return create_tokenizer(kind, **{"codebook_size": 16, "patch_len": 3, **extra, **options})


def cutoff(frame: pd.DataFrame, frac: float) -> pd.Timestamp:
    start, end = frame["timestamp"].min(), frame["timestamp"].max()
    return (start + frac * (end - start)).floor("D")


# ------------------------------------------------------------------------------------------- properties
@PROPERTY
@given(seed=st.integers(0, 10_000), kind=st.sampled_from(KINDS))
def test_ids_in_range_deterministic_and_batch_equals_one_by_one(seed, kind):
    frame = random_walks(seed)
    tokenizer = tiny(kind).fit(frame, cutoff(frame, 0.6), progress=False)
    tokens = tokenizer.encode(frame)
    again = tokenizer.encode(frame)
    for symbol, ids in tokens.items():
        assert ids.dtype == np.int64 and ids.min() >= 0 and ids.max() < tokenizer.vocab_size
        np.testing.assert_array_equal(ids, again[symbol])
        alone = tokenizer.encode(frame[frame["symbol"] == symbol])
        np.testing.assert_array_equal(ids, alone[symbol])
        patches = tokenizer.patchify(frame)[symbol].features
        one_by_one = [tokenizer.encode_patches(patches[i:i + 1], symbol)[0] for i in range(0, len(patches), 7)]
        np.testing.assert_array_equal(ids[::7], one_by_one)


@PROPERTY
@given(seed=st.integers(0, 10_000), kind=st.sampled_from(KINDS), cut=st.floats(0.3, 0.95))
def test_appending_future_bars_never_changes_past_tokens(seed, kind, cut):
    frame = random_walks(seed)
    tokenizer = tiny(kind).fit(frame, cutoff(frame, 0.3), progress=False)
    full = tokenizer.encode(frame)
    prefix = tokenizer.encode(frame[frame["timestamp"] <= cutoff(frame, cut)])
    for symbol, ids in prefix.items():
        np.testing.assert_array_equal(full[symbol][:len(ids)], ids)


@PROPERTY
@given(seed=st.integers(0, 10_000), kind=st.sampled_from(KINDS), frac=st.floats(0.3, 0.8))
def test_fit_on_data_truncated_at_train_end_is_byte_identical(seed, kind, frac, tmp_path_factory):
    frame = random_walks(seed)
    train_end = cutoff(frame, frac)
    full = tiny(kind).fit(frame, train_end, progress=False)
    truncated = tiny(kind).fit(frame[frame["timestamp"] <= train_end], train_end, progress=False)
    a, b = tmp_path_factory.mktemp("full"), tmp_path_factory.mktemp("truncated")
    full.save_pretrained(a)
    truncated.save_pretrained(b)
    for name in ("config.json", "model.safetensors"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert full.hash == truncated.hash
    assert json.loads((a / "config.json").read_text())["train_end"] == train_end.strftime("%Y-%m-%dT%H:%M:%SZ")
    # so the train-period tokens are identical too
    boundary = np.datetime64(train_end.tz_localize(None).as_unit("ns"))
    for symbol, p in full.patchify(frame).items():
        train = p.ends <= boundary
        np.testing.assert_array_equal(full.encode_patches(p.features[train], symbol),
                                      truncated.encode_patches(p.features[train], symbol))


@PROPERTY
@given(seed=st.integers(0, 10_000), kind=st.sampled_from(KINDS))
def test_save_load_round_trip_is_exact(seed, kind, tmp_path_factory):
    frame = random_walks(seed)
    tokenizer = tiny(kind).fit(frame, cutoff(frame, 0.6), progress=False)
    directory = tokenizer.save_pretrained(tmp_path_factory.mktemp("tok"))
    loaded = load_tokenizer(directory)
    assert type(loaded) is type(tokenizer) and loaded.config == tokenizer.config
    assert loaded.to_bytes() == tokenizer.to_bytes() and loaded.hash == tokenizer.hash
    for name, tensor in tokenizer._tensors().items():
        assert loaded._tensors()[name].equal(tensor)
    original, again = tokenizer.encode(frame), loaded.encode(frame)
    for symbol in original:
        np.testing.assert_array_equal(original[symbol], again[symbol])
        np.testing.assert_array_equal(tokenizer.decode(original[symbol], symbol), loaded.decode(again[symbol], symbol))


@PROPERTY
@given(seed=st.integers(0, 10_000), kind=st.sampled_from(("quantile", "uniform")))
def test_bin_decode_error_is_bounded(seed, kind):
    frame = random_walks(seed)
    tokenizer = tiny(kind).fit(frame, frame["timestamp"].max(), progress=False)
    bounds = np.concatenate([[-np.inf], tokenizer.edges, [np.inf]])
    for symbol, p in tokenizer.patchify(frame).items():
        real = p.features[:, :, 0]
        ids = tokenizer.encode_patches(real, symbol)
        recon = tokenizer.decode(ids, symbol).reshape(real.shape)
        # a token decodes to the mean train patch of its bin, so the decoded patch's summed (scaled) return lies
        # inside the bin that the real patch's sum fell into
        decoded_sum = recon.sum(1) / tokenizer.scale(symbol)[0]
        slack = 1e-9 * (1 + np.abs(decoded_sum))
        assert np.all(decoded_sum >= bounds[ids] - slack) and np.all(decoded_sum <= bounds[ids + 1] + slack)
    everything = np.concatenate([p.features[:, :, 0] for p in tokenizer.patchify(frame).values()])
    recon = np.concatenate([tokenizer.decode(ids, s).reshape(-1, 3) for s, ids in tokenizer.encode(frame).items()])
    # and the bin means are the least-squares choice per bin: never worse than predicting zero returns
    assert ((recon - everything) ** 2).mean() <= (everything ** 2).mean()


# ------------------------------------------------------------------------------------------- behaviour
def test_defaults_on_real_stocks_use_the_codebook_and_beat_the_quantile_baseline(stocks_frame, tmp_path):
    report = fit_to_dir(stocks_frame, tmp_path / "tok", train_end="2008-12-31", val_end="2010-12-31", progress=False)
    assert report["kind"] == "vqvae" and report["patch_len"] == DEFAULT_PATCH_LEN and report["codebook_size"] == 128
    assert report["train_end"] == "2008-12-31T00:00:00Z"
    assert report["codes_used_frac"] >= 0.9, report
    assert report["recon_mse"] < 0.6 * report["baseline_quantile_recon_mse"], report
    assert report["recon_mse"] < 0.5 * report["val_mean_square_return"], report
    required = {"kind", "codebook_size", "patch_len", "features", "train_end", "codes_used", "codes_used_frac",
                "usage_perplexity", "recon_mse", "recon_rmse_bps", "baseline_quantile_recon_mse"}
    on_disk = json.loads((tmp_path / "tok" / "report.json").read_text())
    assert required <= set(on_disk) and on_disk["codes_used"] == report["codes_used"]
    for name in ("config.json", "model.safetensors", "usage.png", "recon.png"):
        assert (tmp_path / "tok" / name).stat().st_size > 0
    assert load_tokenizer(tmp_path / "tok").hash == report["tokenizer_hash"]
    with pytest.raises(OutputExistsError):
        fit_to_dir(stocks_frame, tmp_path / "tok", kind="quantile")
    report = fit_to_dir(stocks_frame, tmp_path / "tok", kind="quantile", overwrite=True)
    assert report["recon_mse"] == report["baseline_quantile_recon_mse"]


def test_short_vqvae_fits_still_use_the_codebook(stocks_frame):
    # dead codes are re-seeded from the first restart check on, so even a short fit keeps its codes alive
    frame = stocks_frame[stocks_frame["timestamp"] <= "2005-12-31"]
    tokenizer = create_tokenizer("vqvae", steps=300).fit(frame, "2005-12-31", progress=False)
    used = np.unique(np.concatenate(list(tokenizer.encode(frame).values())))
    assert len(used) >= 0.9 * 128
    assert tokenizer.history[-1]["step"] == 300 and tokenizer.history[-1]["codes_used"] >= 0.9 * 128


def test_ohlcv_features_need_the_columns_and_decode_close_returns(stocks_frame):
    frame = stocks_frame[stocks_frame["timestamp"] <= "2004-12-31"]
    tokenizer = tiny("vqvae", features="ohlcv", codebook_size=32).fit(frame, "2003-12-31", progress=False)
    ids = tokenizer.encode(frame)["IBM"]
    assert tokenizer.decode(ids, "IBM").shape == (len(ids) * 3,)
    with pytest.raises(DataError, match="ohlcv"):
        tiny("vqvae", features="ohlcv").fit(frame[["timestamp", "symbol", "close"]], "2003-12-31")
    with pytest.raises(ConfigError, match="features"):
        create_tokenizer("quantile", features="ohlcv")


def test_scales_come_from_train_data_and_keep_the_volatility_level():
    frame = random_walks(1)
    tokenizer = tiny("quantile").fit(frame, cutoff(frame, 0.5))
    calm = np.full((1, 3), 0.001)
    assert tokenizer.encode_patches(calm, "S0")[0] != tokenizer.encode_patches(calm * 20, "S0")[0]
    # an unknown symbol (no train data) and symbol=None use the global scale
    ids = tokenizer.encode_patches(calm, "S0")
    np.testing.assert_array_equal(tokenizer.decode(ids, "NEW"), tokenizer.decode(ids))
    assert not np.allclose(tokenizer.decode(ids, "S0"), tokenizer.decode(ids, "S1"))
    assert tokenizer.decode(np.zeros((2, 5), dtype=int)).shape == (2, 15)


def test_user_errors_are_typed(tmp_path):
    frame = random_walks(2)
    with pytest.raises(TokenizerError, match="not fitted"):
        tiny("quantile").encode(frame)
    with pytest.raises(DataError, match="train patches"):
        create_tokenizer("quantile", codebook_size=4096).fit(frame, cutoff(frame, 0.5))
    with pytest.raises(ConfigError, match="kind"):
        create_tokenizer("bpe")
    with pytest.raises(ConfigError, match="patch-len"):
        create_tokenizer("vqvae", patch_len=0)
    tokenizer = tiny("uniform").fit(frame, cutoff(frame, 0.5))
    with pytest.raises(TokenizerError, match=r"\[0, 16\)"):
        tokenizer.decode([3, 16])
    with pytest.raises(TokenizerError, match="no such"):
        load_tokenizer(tmp_path / "missing")
    directory = tokenizer.save_pretrained(tmp_path / "tok")
    weights = (directory / "model.safetensors").read_bytes()
    (directory / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    with pytest.raises(TokenizerError, match="corrupted"):
        load_tokenizer(directory)
    (directory / "model.safetensors").write_bytes(weights)
    (directory / "config.json").write_text("{not json")
    with pytest.raises(TokenizerError, match="JSON"):
        load_tokenizer(directory)
    (directory / "config.json").unlink()
    with pytest.raises(TokenizerError, match="config.json"):
        load_tokenizer(directory)


def test_encode_benchmark_runs():
    frame = random_walks(3)
    tokenizer = tiny("vqvae").fit(frame, cutoff(frame, 0.5), progress=False)
    assert benchmark_encode(n_bars=30_000, tokenizer=tokenizer) > 0
    assert benchmark_encode(n_bars=30_000, tokenizer=tokenizer, from_frame=True) > 0
