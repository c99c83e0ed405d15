"""Scaling and decoding options of the tokenizer (issue 16): static stays as it was, running scales (ewma, garch)
never look ahead, decoded paths roll their own volatility, within-code draws keep the spread and the tails, every
new field survives save/load, and running scales keep test shocks at unit size across a volatility regime change."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pytest
import safetensors.torch
import torch

from pricegpt.analysis import analyze
from pricegpt.data import time_splits
from pricegpt.errors import ConfigError, TokenizerError
from pricegpt.tokenizer import TokenStore, create_tokenizer, fit_to_dir, load_tokenizer, write_token_store
from pricegpt.tokenizer.decoding import fit_gpd, gpd_quantile
from pricegpt.tokenizer.scaling import ewma_lambda
from test_tokenizer import TINY_VQVAE, cutoff, random_walks, tiny  # the pinned outputs below are of these


def garch_frame(seed: int, n_train: int = 1500, n_test: int = 1000, n_symbols: int = 3, jump: float = 2.0):
    """GARCH(1,1) returns (alpha 0.08, beta 0.9) per symbol at its own level, times `jump` after n_train bars:
    (frame, train_end = the last train bar's time)."""
    rng = np.random.default_rng(seed)
    parts = []
    n = n_train + n_test
    times = pd.date_range("2000-01-01", periods=n + 1, freq="D", tz="UTC")
    for i in range(n_symbols):
        omega, alpha, beta = 0.02, 0.08, 0.9
        var, e = omega / (1 - alpha - beta), np.empty(n)
        for t in range(n):
            e[t] = np.sqrt(var) * rng.standard_normal()
            var = omega + alpha * e[t] ** 2 + beta * var
        returns = 0.01 * (1 + i) * e * np.where(np.arange(n) < n_train, 1.0, jump)
        parts.append(pd.DataFrame({"timestamp": times, "symbol": f"G{i}",
                                   "close": 100 * np.exp(np.concatenate([[0.0], np.cumsum(returns)]))}))
    return pd.concat(parts, ignore_index=True), times[n_train]


def digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()[:16]


@pytest.fixture(scope="module")
def walks():
    frame = random_walks(7)
    return frame, cutoff(frame, 0.6)


@pytest.fixture(scope="module")
def garch_data():
    return garch_frame(0)


@pytest.fixture(scope="module")
def garch_tokenizer(garch_data):
    frame, train_end = garch_data
    return create_tokenizer("quantile", codebook_size=32, patch_len=2, scaling="garch").fit(frame, train_end)


# ------------------------------------------------------------------------------------------- static = before
# sha256 (first 16 hex) of every encoded id (int64) and every decoded value (float64) of random_walks(7) with a
# default config, computed with the code before scaling options existed.
PINNED = {"quantile": ("baffca5d8cb2a8ce", "68de21c86d26b837", [2, 5, 1, 6, 1, 5, 6, 7, 5, 10, 0, 8]),
          "uniform": ("bd1358e91013339e", "2bfe6b553c0f4099", [5, 7, 4, 7, 5, 7, 7, 7, 7, 8, 4, 8])}


@pytest.mark.parametrize("kind", ["quantile", "uniform", "vqvae"])
def test_static_default_encodes_and_decodes_exactly_as_before(kind, walks, tmp_path):
    frame, train_end = walks
    tokenizer = tiny(kind).fit(frame, train_end, progress=False)
    assert tokenizer.config.scaling == "static" and tokenizer.config.decode == "centroid"
    encoded = tokenizer.encode(frame)
    ids = np.concatenate([encoded[s] for s in sorted(encoded)])
    decoded = np.concatenate([tokenizer.decode(encoded[s], s) for s in sorted(encoded)])
    if kind in PINNED:  # numpy only, so the same bits everywhere
        ids_hash, decoded_hash, head = PINNED[kind]
        assert ids[:12].tolist() == head and digest(ids) == ids_hash and digest(decoded) == decoded_hash
    for symbol, p in tokenizer.patchify(frame).items():
        # the former formulas: raw patch / the symbol's scale; centroid x the symbol's scale
        old_ids = tokenizer._encode_scaled(p.features / tokenizer.scale(symbol))
        np.testing.assert_array_equal(encoded[symbol], old_ids)
        np.testing.assert_array_equal(tokenizer.encode_patches(p.features, symbol), old_ids)
        old = (tokenizer.decode_table[old_ids] * tokenizer.scale(symbol)[0]).reshape(-1)
        np.testing.assert_array_equal(tokenizer.decode(old_ids, symbol), old)
        paths = np.stack([old_ids, old_ids[::-1]])
        np.testing.assert_array_equal(tokenizer.decode_paths(paths, symbol, decode="centroid")[0], old)
        np.testing.assert_array_equal(tokenizer.scales(p.features.reshape(-1), symbol), tokenizer.scale(symbol)[0])
    # a file written before the scaling options (format 1: no such fields, no decode.* tensors) loads as static
    directory = tokenizer.save_pretrained(tmp_path / "tok")
    config = json.loads((directory / "config.json").read_text())
    for key in ("scaling", "halflife", "scale_floor", "decode", "decode_quantiles", "tail_from", "tail_cap"):
        del config[key]
    config["format_version"] = 1
    (directory / "config.json").write_text(json.dumps(config))
    tensors = safetensors.torch.load_file(directory / "model.safetensors")
    safetensors.torch.save_file({k: v for k, v in tensors.items() if not k.startswith("decode.")},
                                directory / "model.safetensors")
    old_file = load_tokenizer(directory)
    assert old_file.config.scaling == "static" and old_file.within is None
    # saved again (a forecaster folder, a token store's copy), it keeps its bytes and so the hash runs recorded
    assert load_tokenizer(old_file.save_pretrained(tmp_path / "again")).hash == old_file.hash
    for symbol, ids in old_file.encode(frame).items():
        np.testing.assert_array_equal(ids, encoded[symbol])
        np.testing.assert_array_equal(old_file.decode(ids, symbol), tokenizer.decode(ids, symbol))
    with pytest.raises(TokenizerError, match="within-code"):
        old_file.decode_paths(encoded["S0"][None], "S0", decode="within")


# ------------------------------------------------------------------------------------------- no look-ahead
@pytest.mark.parametrize("scaling", ["ewma", "garch"])
def test_no_scale_uses_its_own_bar_or_a_later_one(scaling, garch_data, garch_tokenizer):
    frame, train_end = garch_data
    tokenizer = garch_tokenizer if scaling == "garch" else \
        create_tokenizer("quantile", codebook_size=32, patch_len=2, scaling="ewma").fit(frame, train_end)
    rng = np.random.default_rng(1)
    unseen = 0.004 * rng.standard_t(3, 300)  # a symbol the fit never saw, far calmer than the global scale
    seen = np.diff(np.log(frame.loc[frame["symbol"] == "G1", "close"].to_numpy()))
    for symbol, returns in (("G1", seen), ("NEW", unseen)):
        scales = tokenizer.scales(returns, symbol)
        assert scales.shape == returns.shape and np.all(scales > 0)
        for t in (0, 1, 5, 19, 20, 21, 150, len(returns) - 1):
            changed = returns.copy()
            changed[t:] = rng.standard_t(2, len(returns) - t) * 0.2  # wild values at and after bar t
            again = tokenizer.scales(changed, symbol)
            np.testing.assert_array_equal(again[:t + 1], scales[:t + 1])
            assert tokenizer.origin_state(returns[:t], symbol) == tokenizer.origin_state(changed[:t], symbol)
            floor = tokenizer._recursion(symbol).floor
            assert max(tokenizer.origin_state(returns[:t], symbol), floor) == pytest.approx(scales[t], rel=1e-12)
    # an unseen symbol learns its own level: after its first bars its scale is near its own volatility
    late = tokenizer.scales(unseen, "NEW")[100:]
    assert tokenizer.scale("NEW")[0] > 2 * unseen.std() and np.median(late) < 1.6 * unseen.std()
    # tokens: a patch's token never changes when later bars change (or are appended)
    symbol_frame = frame[frame["symbol"] == "G0"]
    full = tokenizer.encode(symbol_frame)["G0"]
    changed = symbol_frame.copy()
    changed.loc[changed.index[1000:], "close"] *= np.exp(rng.normal(0, 0.3, len(changed) - 1000))
    prefix = tokenizer.encode(symbol_frame.iloc[:1000])["G0"]
    np.testing.assert_array_equal(tokenizer.encode(changed)["G0"][:len(prefix)], prefix)
    np.testing.assert_array_equal(full[:len(prefix)], prefix)


def test_running_scales_need_the_history_of_a_patch():
    frame = random_walks(3)
    tokenizer = tiny("quantile", scaling="ewma").fit(frame, cutoff(frame, 0.6))
    patches = tokenizer.patchify(frame)["S0"]
    with pytest.raises(TokenizerError, match="scale"):
        tokenizer.encode_patches(patches.features, "S0")
    np.testing.assert_array_equal(tokenizer.encode_patches(patches.features, "S0", scales=patches.scales[:, 0]),
                                  tokenizer.encode(frame)["S0"])
    # encode_history: the last patches aligned to the end, each scaled from the whole history before it
    returns = patches.features.reshape(-1)[:-1]  # one bar short, so the end-aligned grid is shifted by one
    ids = tokenizer.encode_history(returns, "S0", n_patches=5)
    scales = tokenizer.scales(returns, "S0")
    starts = len(returns) - 15 + 3 * np.arange(5)
    expected = tokenizer.encode_patches(returns[len(returns) - 15:].reshape(5, 3), "S0", scales=scales[starts])
    np.testing.assert_array_equal(ids, expected)
    with pytest.raises(ConfigError, match="scaling"):
        create_tokenizer("quantile", scaling="zscore")
    with pytest.raises(ConfigError, match="halflife"):
        create_tokenizer("quantile", scaling="ewma", halflife=0)


# ------------------------------------------------------------------------------------------- decoding paths
def test_decoded_paths_roll_their_own_volatility(garch_data):
    frame, train_end = garch_data
    tokenizer = create_tokenizer("quantile", codebook_size=32, patch_len=1, scaling="ewma", halflife=10.0)
    tokenizer.fit(frame, train_end)
    lam = ewma_lambda(10.0)
    top, middle = int(np.argmax(tokenizer.decode_table[:, 0])), int(np.argmin(np.abs(tokenizer.decode_table[:, 0])))
    paths = np.array([[top] * 20, [middle] * 20])
    s0 = 0.01
    returns = tokenizer.decode_paths(paths, "G0", s0, decode="centroid")
    assert returns.shape == (2, 20)
    # a run of extreme shocks raises the volatility along the path; a run of quiet ones lowers it
    assert np.all(np.diff(np.abs(returns[0])) > 0) and abs(returns[0, -1]) > 3 * abs(returns[0, 0])
    implied = returns[1] / tokenizer.decode_table[middle, 0]
    assert np.all(np.diff(implied) < 0)
    # by exactly the recursion: s^2 <- lam s^2 + (1 - lam) r^2, from s0
    var, expected = s0 ** 2, []
    for shock in tokenizer.decode_table[paths[0], 0]:
        expected.append(shock * np.sqrt(var))
        var = lam * var + (1 - lam) * expected[-1] ** 2
    np.testing.assert_allclose(returns[0], expected, rtol=1e-12)
    # and the same recursion as the encoder's: the decoded returns appended to the history give the same scales
    history = np.diff(np.log(frame.loc[frame["symbol"] == "G0", "close"].to_numpy()))[:1700]
    codes = np.random.default_rng(0).integers(0, 32, (1, 30))
    sampled = tokenizer.decode_paths(codes, "G0", tokenizer.origin_state(history, "G0"), decode="within", rng=0)[0]
    rolled = tokenizer.scales(np.concatenate([history, sampled]), "G0")[len(history):]
    shocks = tokenizer._shocks(codes, "within", 0)[0, :, 0]  # the same draws: the same seed
    np.testing.assert_allclose(sampled, shocks * rolled, rtol=1e-12)
    # static scaling: every path is the code's patch times the symbol's scale, whatever s0
    static = create_tokenizer("quantile", codebook_size=32, patch_len=1).fit(frame, train_end)
    np.testing.assert_array_equal(static.decode_paths(paths, "G0", 123.0, decode="centroid"),
                                  static.decode_table[paths, 0] * static.scale("G0")[0])
    with pytest.raises(TokenizerError, match="s0"):
        tokenizer.decode_paths(paths, "G0", -1.0)


def test_within_code_draws_keep_the_spread_and_only_the_outer_codes_go_beyond(garch_data):
    frame, train_end = garch_data
    tokenizer = create_tokenizer("quantile", codebook_size=16, patch_len=1).fit(frame, train_end)
    boundary = np.datetime64(train_end.tz_localize(None))
    train = np.concatenate([p.features[p.ends <= boundary, 0, 0] / p.scales[p.ends <= boundary, 0]
                            for p in tokenizer.patchify(frame).values()])  # the train shocks, one per patch
    ids = tokenizer._encode_scaled(train[:, None, None])
    low, high = tokenizer.within.tail_codes
    assert low == 0 and high == 15  # quantile bins: the outer codes are the end bins
    codes = np.repeat(np.arange(16), 4000)
    draws = tokenizer.decode_paths(codes[None], None, decode="within", rng=np.random.default_rng(5))[0]
    shocks = draws / tokenizer.scale(None)[0]
    for k in range(16):
        members, drawn = train[ids == k], shocks[codes == k]
        slack = 1e-9 * np.abs(members).max()
        if k not in (low, high):
            assert members.min() - slack <= drawn.min() and drawn.max() <= members.max() + slack, k
            assert drawn.std() > 0.5 * members.std()  # the spread is kept, not collapsed to the centroid
        else:  # the fitted tail goes beyond the largest train move, rarely, and never past the cap
            beyond = drawn > members.max() if k == high else drawn < members.min()
            assert 0.001 < beyond.mean() < 0.1, (k, beyond.mean())
            inner = drawn < np.median(members) if k == high else drawn > np.median(members)
            assert np.all(members.min() - slack <= drawn[inner]) and np.all(drawn[inner] <= members.max() + slack)
    # seeded by the caller, and centroid is the code's patch
    again = tokenizer.decode_paths(codes[None], None, decode="within", rng=np.random.default_rng(5))
    np.testing.assert_array_equal(again[0], draws)
    assert not np.array_equal(tokenizer.decode_paths(codes[None], None, decode="within", rng=6)[0], draws)
    np.testing.assert_array_equal(tokenizer.decode(codes, decode="centroid"), tokenizer.decode(codes))
    with pytest.raises(ConfigError, match="decode"):
        tokenizer.decode_paths(codes[None], None, decode="mean")


def test_gpd_fit_by_probability_weighted_moments():
    rng = np.random.default_rng(0)
    for xi, beta in ((0.0, 1.0), (0.25, 0.5), (0.45, 2.0)):
        sample = gpd_quantile(rng.random(20000), xi, beta)
        fitted_xi, fitted_beta = fit_gpd(sample)
        assert abs(fitted_xi - xi) < 0.05 and fitted_beta == pytest.approx(beta, rel=0.1)
    assert fit_gpd(rng.random(1000))[0] == 0.0  # a bounded tail is bounded to the exponential
    assert fit_gpd(gpd_quantile(rng.random(20000), 0.9, 1.0))[0] == 0.5


# ------------------------------------------------------------------------------------------- files
@pytest.mark.parametrize("kind,scaling", [("vqvae", "ewma"), ("uniform", "ewma"), ("quantile", "garch"),
                                          ("vqvae", "garch")])
def test_every_new_field_and_tensor_survives_save_and_load(kind, scaling, garch_data, tmp_path):
    frame, train_end = garch_data
    frame = frame[frame["timestamp"] <= train_end + pd.Timedelta(days=300)]
    tokenizer = create_tokenizer(kind, codebook_size=16, patch_len=3 if kind == "vqvae" else 1, scaling=scaling,
                                 halflife=15.0, scale_floor=0.1, decode="within", decode_quantiles=8, tail_from=0.6,
                                 tail_cap=3.0, **(TINY_VQVAE if kind == "vqvae" else {}))
    tokenizer.fit(frame, train_end, progress=False)
    directory = tokenizer.save_pretrained(tmp_path / "tok")
    loaded = load_tokenizer(directory)
    assert loaded.config == tokenizer.config and loaded.hash == tokenizer.hash
    assert loaded.to_bytes() == tokenizer.to_bytes()
    assert loaded.garch == tokenizer.garch and loaded.garch_global == tokenizer.garch_global
    for name, tensor in tokenizer.within.tensors().items():
        assert loaded.within.tensors()[name].equal(tensor), name
    assert tokenizer.within.members.shape == (16, 8, tokenizer.patch_len)
    for symbol, ids in tokenizer.encode(frame).items():
        np.testing.assert_array_equal(loaded.encode(frame)[symbol], ids)
        np.testing.assert_array_equal(loaded.scales(frame, symbol), tokenizer.scales(frame, symbol))
        paths = np.stack([ids[-6:], ids[:6]])
        np.testing.assert_array_equal(loaded.decode_paths(paths, symbol, 0.02, rng=3),
                                      tokenizer.decode_paths(paths, symbol, 0.02, rng=3))
    if scaling == "garch":
        assert set(tokenizer.garch) == {"G0", "G1", "G2"}
        omega, alpha, beta = tokenizer.garch["G1"]
        assert 0.8 < alpha + beta < 1 and 0.02 < alpha < 0.2  # the generator's 0.08 / 0.9

    config_bytes = (directory / "config.json").read_bytes()
    weights = safetensors.torch.load_file(directory / "model.safetensors")

    def damaged_config(**changes):
        raw = json.loads(config_bytes)
        raw.update(changes)
        (directory / "config.json").write_text(json.dumps(raw))
        with pytest.raises(TokenizerError, match="config.json"):
            load_tokenizer(directory)
        (directory / "config.json").write_bytes(config_bytes)

    damaged_config(scaling="zscore")
    damaged_config(halflife=-3)
    damaged_config(decode="median")
    damaged_config(tail_from=1.5)
    damaged_config(decode_quantiles=9)  # the tables hold 8 rows per code: does not match the weights file
    if scaling == "garch":
        damaged_config(garch={"global": [0.1, 0.95], "symbols": {}})
        raw = json.loads(config_bytes)
        raw["garch"]["symbols"]["G0"] = [1e-5, 0.3, 0.8]  # not stationary
        damaged_config(garch=raw["garch"])
        raw = {k: v for k, v in json.loads(config_bytes).items() if k != "garch"}
        (directory / "config.json").write_text(json.dumps(raw))
        with pytest.raises(TokenizerError, match="config.json.*garch"):
            load_tokenizer(directory)
        (directory / "config.json").write_bytes(config_bytes)

    def damaged_weights(name, value):
        safetensors.torch.save_file({**weights, name: value}, directory / "model.safetensors")
        with pytest.raises(TokenizerError, match="model.safetensors"):
            load_tokenizer(directory)

    members = weights["decode.members"]
    damaged_weights("decode.members", members.clone().fill_(float("nan")))
    damaged_weights("decode.members", members[:, :4].contiguous())
    damaged_weights("decode.counts", torch.full_like(weights["decode.counts"], 99))
    tails = weights["decode.tail_params"].clone()
    tails[:, 1] = 0.9
    damaged_weights("decode.tail_params", tails)
    damaged_weights("decode.tail_codes", torch.tensor([-1, 16]))
    incomplete = {k: v for k, v in weights.items() if k != "decode.counts"}
    safetensors.torch.save_file(incomplete, directory / "model.safetensors")
    with pytest.raises(TokenizerError, match="model.safetensors"):
        load_tokenizer(directory)


def test_fit_report_store_and_analysis_work_with_running_scales(garch_data, tmp_path):
    frame, train_end = garch_data
    frame = frame[frame["timestamp"] <= train_end + pd.Timedelta(days=400)]
    splits = time_splits(frame, train_end, train_end + pd.Timedelta(days=200))
    report = fit_to_dir(frame, tmp_path / "tok", kind="quantile", train_end=splits.train_end,
                        val_end=splits.val_end, patch_len=2, codebook_size=32, scaling="ewma")
    assert report["scaling"] == "ewma" and report["halflife"] == 11.2 and report["tails"]["high"]["xi"] >= 0
    # reconstruction is measured with each patch's real scale: no worse than predicting zero returns
    assert report["recon_mse"] < report["val_mean_square_return"]
    tokenizer = load_tokenizer(tmp_path / "tok")
    write_token_store(tokenizer, frame, tmp_path / "tokens", splits)
    store = TokenStore.open(tmp_path / "tokens")
    for symbol, ids in tokenizer.encode(frame).items():
        np.testing.assert_array_equal(store.tokens(symbol), ids)
    result = analyze(tmp_path / "tokens")
    assert result["outliers"]["decoded_returns"]["returns"].shape == (32,)


# ------------------------------------------------------------------------------------------- regimes
def test_running_scales_keep_test_shocks_at_unit_size_when_volatility_doubles(garch_data, garch_tokenizer):
    frame, train_end = garch_data
    tokenizers = {"static": create_tokenizer("quantile", codebook_size=32, patch_len=2).fit(frame, train_end),
                  "ewma": create_tokenizer("quantile", codebook_size=32, patch_len=2, scaling="ewma")
                  .fit(frame, train_end),
                  "garch": garch_tokenizer}
    stds = {}
    for name, tokenizer in tokenizers.items():
        test_shocks = []
        for symbol in ("G0", "G1", "G2"):
            returns = np.diff(np.log(frame.loc[frame["symbol"] == symbol, "close"].to_numpy()))
            test_shocks.append((returns / tokenizer.scales(returns, symbol))[1500:])
        stds[name] = float(np.concatenate(test_shocks).std())
    assert 0.8 <= stds["ewma"] <= 1.25 and 0.8 <= stds["garch"] <= 1.25, stds
    assert 1.6 <= stds["static"] <= 2.5, stds
