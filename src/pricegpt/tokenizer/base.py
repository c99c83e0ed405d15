"""What every tokenizer kind shares: the `Tokenizer` interface, scaling, decode, save/load, hash.
(Per-bar features and cutting them into patches are patches.py; the volatility recursions scaling.py; drawing
within a code decoding.py.)

A tokenizer turns each symbol's bars into a stream of token ids, one id per *patch* of `patch_len` consecutive
bars. Per symbol, the per-bar features (the first bar has none: it has no return) are cut into non-overlapping
patches anchored at the symbol's first return; a trailing incomplete patch is not encoded. Appending future bars
therefore never changes a past token. A patch belongs to the split of its last bar, so no train patch contains
a bar after `train_end`.

Features per bar (`features=`, computed by `patches.bar_features`):
  "close"  the close-to-close log return (default; all a close-only file has);
  "ohlcv"  the log return, log(high/close), log(low/close), log(open/close) and the change of log(1 + volume).

Scaling (no leakage, no per-window normalisation; `scaling=`, see scaling.py): the static scale of a symbol is
the standard deviation of each feature over its train bars (timestamp <= train_end); a symbol with fewer than
`min_scale_returns` train bars, or none at all, uses the global scale: the median of the per-symbol scales.
  "static" (default)  every bar is divided by the static scale: the volatility level of a symbol is part of what
                      its tokens mean, and `decode(tokens, symbol)` multiplies it back.
  "ewma" / "garch"    the close return of bar t is divided by a running volatility s_t computed from the returns
                      before t (`scales`), so a token is a standardised shock r_t / s_t; a patch is divided by the
                      s at its first bar. log(high/close), log(low/close), log(open/close) are divided by their
                      static scale times s_t / (static close scale); the volume change by its static scale.
                      Decoding rolls s forward along each path with the path's own returns (`decode_paths`),
                      from the state of the real history at the origin (`origin_state`).
Encoding needs each patch's scale: `encode(frame)`, `patchify(frame)` + `encode_patches(patches)` and
`encode_history(values, symbol)` compute it from each symbol's history; raw patch arrays need `scales=`, except
under static scaling.

Decoding (`decode=`, see decoding.py): "centroid" (the default of `decode`) gives each token its code's patch in
`decode_table`; "within" draws from the code's train members, with a fitted tail on the two outermost codes.

Kinds subclass `Tokenizer` and implement `_fit_scaled` (train patches in scaled units), `_encode_scaled`,
`_tensors` / `_load_tensors`; they fill `decode_table` (K, patch_len) with each token's patch of scaled close
returns. Files: `config.json` (the flat config, the scales, GARCH parameters, fit facts) + `model.safetensors`
(the kind's tensors and the within-code tables `decode.*`; no pickle). A file of format 1 (before scaling and
within-code decoding) loads as static scaling with centroid decoding only.
Fitting is deterministic given the seed and the train split alone, so fitting on data truncated at `train_end`
writes byte-identical files to fitting on all the data.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd
import safetensors.torch
import torch
from safetensors.torch import load as load_safetensors_bytes

from ..config import check_choice, check_int, check_number, check_seed, show
from ..data import iso, parse_time, time_splits
from ..errors import ConfigError, DataError, TokenizerError
from ..fileio import write_bytes
from .decoding import DECODES, WithinTables, fit_within, sample_within
from .patches import Patches, bar_features, cut_patches, cutoff_ns
from .scaling import SCALINGS, Recursion, check_garch, ewma_lambda, fit_garch
from .seasonal import SeasonalProfile, fit_profile

DEFAULT_PATCH_LEN = 4
FEATURES: dict[str, tuple[str, ...]] = {
    "close": ("log_return",),
    "ohlcv": ("log_return", "log_high_close", "log_low_close", "log_open_close", "log_volume_change"),
}
CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"
FORMAT_VERSION = 2  # 2: scaling, GARCH parameters and within-code tables; 1 loads as static + centroid
MAX_PATCH_LEN = 4096
MAX_CODEBOOK = 65536  # token stores hold uint16 ids


@dataclass
class TokenizerConfig:
    """Settings every kind has. `train_end` is filled in by `fit` (ISO UTC)."""

    kind: str = ""
    patch_len: int = DEFAULT_PATCH_LEN
    codebook_size: int = 128
    features: str = "close"
    seed: int = 0
    min_scale_returns: int = 20  # fewer train bars than this: the symbol uses the global scale
    train_end: str | None = None
    scaling: str = "static"  # "static" | "ewma" | "garch" (scaling.py)
    halflife: float = 11.2  # bars, of the ewma (and of garch for unseen symbols); 11.2 is RiskMetrics' lam = 0.94
    scale_floor: float = 0.05  # a running scale never drops below this fraction of the symbol's static scale
    decode: str = "centroid"  # decode_paths' default: "centroid" | "within" (decoding.py)
    decode_quantiles: int = 64  # member patches kept per code for within-code decoding
    tail_from: float = 0.5  # the outer codes' GPD tail covers their members beyond this quantile
    tail_cap: float = 2.0  # a tail draw's excess is at most this multiple of the code's largest train excess
    seasonal: bool = False  # intraday returns divided by their time-of-day x weekday volatility profile (seasonal.py)

    def validate(self) -> None:
        check_int(self.patch_len, "--patch-len (patch_len)", 1, MAX_PATCH_LEN)
        check_int(self.codebook_size, "--codebook-size (codebook_size)", 2, MAX_CODEBOOK)
        check_choice(self.features, "features", tuple(FEATURES))
        check_seed(self.seed, "--seed (tokenizer seed)")
        check_int(self.min_scale_returns, "min_scale_returns", 2, 10**9)
        check_choice(self.scaling, "scaling", SCALINGS)
        check_number(self.halflife, "halflife", 0, 1e6, lo_open=True, hint="the ewma half-life in bars, e.g. 11.2")
        check_number(self.scale_floor, "scale_floor", 0, 1, lo_open=True)
        check_choice(self.decode, "decode", DECODES)
        check_int(self.decode_quantiles, "decode_quantiles", 2, 4096)
        check_number(self.tail_from, "tail_from", 0.5, 0.99)
        check_number(self.tail_cap, "tail_cap", 1, 1000)
        if not isinstance(self.seasonal, bool):
            raise ConfigError(f"seasonal must be true or false, got {show(self.seasonal)}")
        if self.train_end is not None:
            try:
                ts = pd.Timestamp(self.train_end) if isinstance(self.train_end, str) else None
            except (ValueError, TypeError, OverflowError):
                ts = None
            if ts is None or ts is pd.NaT:
                raise ConfigError(f"train_end must be an ISO date such as 2020-01-31T00:00:00Z, got "
                                  f"{show(self.train_end)}")


# ---------------------------------------------------------------------------------------------- interface
_KINDS: dict[str, type[Tokenizer]] = {}


def register(cls: type[Tokenizer]) -> type[Tokenizer]:
    _KINDS[cls.kind] = cls
    return cls


class Tokenizer:
    """Base class; use `create_tokenizer(kind, ...)` or a subclass. Shapes: tokens (..., n_patches) int ids in
    [0, K); `decode` gives (..., n_patches * patch_len) log returns."""

    kind: ClassVar[str] = ""
    config_class: ClassVar[type[TokenizerConfig]] = TokenizerConfig

    def __init__(self, config: TokenizerConfig | None = None, **overrides):
        config = config or self.config_class(kind=self.kind)
        for key, value in overrides.items():
            if key not in {f.name for f in fields(config)}:
                raise ConfigError(f"unknown {self.kind} tokenizer option '{key}'; valid: "
                                  f"{', '.join(f.name for f in fields(config))}")
            setattr(config, key, value)
        config.kind = self.kind
        config.validate()
        self.config = config
        self.symbol_scales: dict[str, np.ndarray] = {}
        self.global_scale: np.ndarray | None = None
        self.garch: dict[str, tuple[float, float, float]] = {}  # (omega, alpha, beta) per seen symbol
        self.garch_global: tuple[float, float] | None = None  # median (alpha, beta) of the fitted symbols
        self.seasonal: dict[str, SeasonalProfile] = {}  # per intraday symbol seen in fit, when config.seasonal
        self.n_train_patches = 0
        self.decode_table: np.ndarray | None = None  # (K, patch_len) scaled close returns
        self.within: WithinTables | None = None  # None: loaded from a format-1 file, centroid decoding only
        self._hash: str | None = None
        self._older_file: tuple[bytes, bytes] | None = None  # the bytes of a file in an older format, kept as is

    # -- properties the rest of the package reads
    @property
    def vocab_size(self) -> int:
        return self.config.codebook_size

    @property
    def patch_len(self) -> int:
        return self.config.patch_len

    @property
    def n_features(self) -> int:
        return len(FEATURES[self.config.features])

    @property
    def fitted(self) -> bool:
        return self.decode_table is not None

    @property
    def train_end(self) -> pd.Timestamp | None:
        return None if self.config.train_end is None else pd.Timestamp(self.config.train_end)

    def scale(self, symbol: str | None = None) -> np.ndarray:
        """Per-feature scale (n_features,) of `symbol`; the global scale for None or an unknown symbol."""
        if self.global_scale is None:
            self._require_fitted()
        return self.symbol_scales.get(symbol, self.global_scale) if symbol is not None else self.global_scale

    def check_symbol(self, symbol: str, what: str = "symbol") -> None:
        """TokenizerError unless `symbol` has its own scale (scale() would silently use the global one)."""
        self._require_fitted()
        if symbol not in self.symbol_scales:
            known = sorted(self.symbol_scales)
            shown = ", ".join(show(s) for s in known[:10]) + (f" and {len(known) - 10} more" if len(known) > 10 else "")
            raise TokenizerError(f"{what} {show(symbol)} has no scale in this tokenizer (it was not in the train "
                                 f"data, or had fewer than {self.config.min_scale_returns} train bars); known "
                                 f"symbols: {shown or 'none'}. Leave it out to use the global scale")

    # -- fitting
    def fit(self, frame: pd.DataFrame, train_end=None, *, progress: bool | None = None) -> Tokenizer:
        """Fit on the train patches of `frame` (last bar <= train_end; default: the 70% cutoff of time_splits).

        Data after `train_end` is never read, so a truncated frame gives the same tokenizer."""
        t_end = parse_time(train_end, "--train-end") if train_end is not None else time_splits(frame).train_end
        cutoff = cutoff_ns(t_end)
        train_bars = {s: (times[times <= cutoff], values[times <= cutoff])
                      for s, (times, values) in bar_features(frame, self.config.features).items()}
        self.seasonal = {}
        if self.config.seasonal:
            fitted = {s: fit_profile(times, values[:, 0]) for s, (times, values) in train_bars.items()}
            self.seasonal = {s: p for s, p in fitted.items() if p is not None}
            train_bars = {s: (times, self._deseasonalised(values, times, s)) for s, (times, values) in
                          train_bars.items()}
        self._fit_scales({s: values for s, (_, values) in train_bars.items()}, t_end)
        train = []
        for symbol, (times, values) in train_bars.items():
            patches = cut_patches(symbol, times, values, self.patch_len, self.bar_scales(values, symbol))
            train.append(patches.features / patches.scales[:, None, :])
        x_train = np.concatenate(train) if train else np.zeros((0, self.patch_len, self.n_features))
        if len(x_train) < self.vocab_size:
            raise DataError(f"only {len(x_train)} complete train patches (of {self.patch_len} bars up to "
                            f"train_end {iso(t_end)}) for a codebook of {self.vocab_size} codes; use more data, "
                            "a later --train-end, a smaller --codebook-size or a smaller --patch-len")
        self.config.train_end = iso(t_end)
        self.n_train_patches = len(x_train)
        self._hash = self._older_file = None
        self._fit_scaled(x_train, progress=progress)
        self.within = fit_within(x_train[:, :, 0], self._encode_scaled(x_train), self.vocab_size,
                                 self.config.decode_quantiles, self.config.tail_from)
        return self

    def _fit_scales(self, train_values: dict[str, np.ndarray], t_end: pd.Timestamp) -> None:
        names = FEATURES[self.config.features]
        candidates = {s: v.std(axis=0) for s, v in train_values.items() if len(v) >= self.config.min_scale_returns}
        if not candidates:
            raise DataError(f"no symbol has {self.config.min_scale_returns} or more bars up to train_end "
                            f"{iso(t_end)}; use a later --train-end or more history")
        stacked = np.stack(list(candidates.values()))
        valid = np.isfinite(stacked) & (stacked > 0)
        if not valid[:, 0].any():
            raise DataError(f"every log return up to train_end {iso(t_end)} is zero (constant prices); "
                            "nothing to tokenize")
        global_scale = np.ones(len(names))
        for f in range(len(names)):
            if valid[:, f].any():
                global_scale[f] = float(np.median(stacked[valid[:, f], f]))
        self.global_scale = global_scale
        self.symbol_scales = {s: np.where(valid[i], stacked[i], global_scale)
                              for i, s in enumerate(candidates) if valid[i, 0]}
        self.garch, self.garch_global = {}, None
        if self.config.scaling == "garch":
            self._fit_garch({s: train_values[s][:, 0] for s in self.symbol_scales}, t_end)

    def _fit_garch(self, train_returns: dict[str, np.ndarray], t_end: pd.Timestamp) -> None:
        """Per seen symbol (omega, alpha, beta) on its train returns; a failed fit: the median (alpha, beta) of the
        others with omega targeting the symbol's train variance."""
        fitted = {s: fit_garch(r) for s, r in train_returns.items()}
        fitted = {s: p for s, p in fitted.items() if p is not None}
        if not fitted:
            raise DataError(f"no symbol has a GARCH(1,1) fit on its returns up to train_end {iso(t_end)} (each "
                            "needs 100 or more train returns and a converging fit); use scaling='ewma'")
        alpha = float(np.median([p[1] for p in fitted.values()]))
        beta = float(np.median([p[2] for p in fitted.values()]))
        self.garch_global = (alpha, beta)
        self.garch = {s: fitted.get(s, ((1 - alpha - beta) * float(self.symbol_scales[s][0]) ** 2, alpha, beta))
                      for s in train_returns}

    def _fit_scaled(self, x_train: np.ndarray, *, progress: bool | None) -> None:
        raise NotImplementedError

    # -- scaling
    def _recursion(self, symbol: str | None) -> Recursion:
        """The variance recursion of `symbol` (see scaling.py); only for running scalings."""
        c = self.config
        static = float(self.scale(symbol)[0])
        floor = c.scale_floor * static
        if c.scaling == "garch" and symbol in self.garch:
            omega, alpha, beta = self.garch[symbol]
            return Recursion(beta, alpha, omega, static * static, floor)
        lam = ewma_lambda(c.halflife)
        prior = 0 if symbol in self.symbol_scales else c.min_scale_returns
        return Recursion(lam, 1.0 - lam, 0.0, static * static, floor, prior)

    def scales(self, data, symbol: str | None = None) -> np.ndarray:
        """The close scale s_t of every bar, (n,): what bar t's close log return is divided by; s_t uses only
        the returns before t.

        `data`: a price frame (bars 1..n of `symbol`, the rows of `bar_features`; `symbol` may be left out when
        the frame holds one symbol) or the symbol's log returns (n,) / features (n, n_features), from its first
        return on (a running scale starts at the first one given)."""
        if isinstance(data, pd.DataFrame):
            symbol = self._only_symbol(data) if symbol is None else symbol
            returns = self._close_returns(data, symbol)
            if symbol in self.seasonal:  # a frame has its times: the whole divisor, seasonal factor included
                times = bar_features(data, "close")[symbol][0]
                return self.scales_with_times(returns, times, symbol)
        else:
            returns = _close(data)
        if self.config.scaling == "static":
            return np.full(len(returns), float(self.scale(symbol)[0]))
        recursion = self._recursion(symbol)
        return recursion.scale(recursion.variances(returns)[:-1])

    def scales_with_times(self, returns, times, symbol: str | None = None) -> np.ndarray:
        """Like `scales` for a symbol's close returns (n,) and their end times: s_t times the bar's seasonal factor
        (what bar t's return is divided by in all, when the symbol has a seasonal profile)."""
        returns = np.asarray(returns, dtype=np.float64)
        return self.scales(self._deseasonalised(returns, times, symbol), symbol) * \
            self.seasonal_factors(times, symbol)

    def origin_state(self, history, symbol: str | None = None, times=None, profile=None) -> float:
        """The volatility state s at the bar after `history` (the symbol's log returns (n,) or features
        (n, n_features) from its first return up to a forecast origin): the `s0` of `decode_paths`. Under static
        scaling, the symbol's scale. (Before the floor: the scale used is max(s0, floor).) `times`: the bars'
        end times, needed when the symbol has a seasonal profile (`needs_times`)."""
        if self.config.scaling == "static":
            return float(self.scale(symbol)[0])
        history = self._deseasonalised(np.asarray(history, dtype=np.float64), times, symbol, profile)
        return float(np.sqrt(self._recursion(symbol).variances(_close(history))[-1]))

    # -- seasonal scaling (seasonal.py)
    def needs_times(self, symbol: str | None) -> bool:
        """Whether `symbol`'s bars are deseasonalised, so encoding and decoding need their times."""
        return symbol in self.seasonal

    def profile_for(self, symbol: str | None, history, times) -> SeasonalProfile | None:
        """The seasonal profile a forecast from `history` (log returns (n,) or features (n, F), bar end times
        `times`) uses: the symbol's own from fit; for a symbol unseen in fit (a pretrained model forecasting a new
        series), one fit on this history alone (every bar before the origin, none after), if it is intraday and
        long enough; else None (no seasonal factor; also for a symbol seen in fit without a profile: a daily one,
        whose training tokens had none)."""
        if symbol in self.seasonal:
            return self.seasonal[symbol]
        if not self.config.seasonal or times is None or symbol in self.symbol_scales:
            return None
        return fit_profile(np.asarray(times), _close(np.asarray(history, dtype=np.float64)))

    def seasonal_factors(self, times, symbol: str | None) -> np.ndarray:
        """(n,) what the close returns of bars ending at `times` are divided by before scaling (1 without a
        profile)."""
        profile = self.seasonal.get(symbol) if symbol is not None else None
        n = len(np.asarray(times)) if times is not None else 0
        return np.ones(n) if profile is None else profile.factors(times)

    def _deseasonalised(self, values: np.ndarray, times, symbol: str | None, profile=None) -> np.ndarray:
        """`values` (n,) or (n, n_features) with the price features divided by the bars' seasonal factors (of
        `profile` when given, else of the symbol's fitted profile)."""
        profile = self.seasonal.get(symbol) if profile is None and symbol is not None else profile
        if profile is None:
            return values
        if times is None:
            raise TokenizerError(f"symbol {show(symbol)} is seasonally scaled: pass the bar times (times=) of its "
                                 "history so each bar's time-of-day profile can be divided out")
        values = np.asarray(values, dtype=np.float64)
        if len(np.asarray(times)) != len(values):
            raise TokenizerError(f"{len(np.asarray(times))} bar times for {len(values)} bars of {show(symbol)}")
        f = profile.factors(times)
        if values.ndim == 1:
            return values / f
        out = values / f[:, None]
        for column, name in enumerate(FEATURES[self.config.features]):
            if name == "log_volume_change":
                out[:, column] = values[:, column]
        return out

    def bar_scales(self, values: np.ndarray, symbol: str | None = None) -> np.ndarray:
        """Per-bar, per-feature scales (n, n_features) of one symbol's raw features (n, n_features)."""
        values = np.asarray(values, dtype=np.float64)
        static = self.scale(symbol)
        if self.config.scaling == "static":
            return np.broadcast_to(static, (len(values), len(static)))
        recursion = self._recursion(symbol)
        return self._feature_scales(recursion.scale(recursion.variances(values[:, 0])[:-1]), static)

    def _feature_scales(self, close: np.ndarray, static: np.ndarray) -> np.ndarray:
        """(n,) close scales -> (n, n_features): price features follow the close volatility, volume stays static."""
        out = np.empty((len(close), len(static)))
        out[:, 0] = close
        for f, name in enumerate(FEATURES[self.config.features][1:], start=1):
            out[:, f] = static[f] * (close / static[0]) if name != "log_volume_change" else static[f]
        return out

    @staticmethod
    def _close_returns(frame: pd.DataFrame, symbol: str) -> np.ndarray:
        per_symbol = bar_features(frame, "close")
        if symbol not in per_symbol:
            raise DataError(f"symbol {show(symbol)} is not in the price frame; it holds "
                            f"{', '.join(show(s) for s in list(per_symbol)[:10])}")
        return per_symbol[symbol][1][:, 0]

    @staticmethod
    def _only_symbol(frame: pd.DataFrame) -> str:
        symbols = frame["symbol"].astype(str).unique() if "symbol" in frame.columns else []
        if len(symbols) != 1:
            raise DataError(f"the price frame holds {len(symbols)} symbols; pass symbol= to say which one")
        return str(symbols[0])

    # -- encoding and decoding
    def patchify(self, frame: pd.DataFrame) -> dict[str, Patches]:
        """Every complete patch of every symbol (sorted by symbol): raw features and each patch's scale."""
        out = {}
        for s, (times, values) in bar_features(frame, self.config.features).items():
            values = self._deseasonalised(values, times, s)
            out[s] = cut_patches(s, times, values, self.patch_len, self.bar_scales(values, s))
        return out

    def encode(self, frame: pd.DataFrame) -> dict[str, np.ndarray]:
        """Token ids (n_patches,) int64 per symbol of `frame`, symbols sorted."""
        self._require_fitted()
        return {s: self.encode_patches(p, s) for s, p in self.patchify(frame).items()}

    def encode_patches(self, patches, symbol: str | None = None, scales=None) -> np.ndarray:
        """Patches of `symbol` -> ids (n,) int64. `patches`: a `Patches` (from `patchify`; its scales are used)
        or raw features (n, patch_len) / (n, patch_len, n_features) with `scales` (n,) close scales or
        (n, n_features), each patch's scale at its first bar. Without scales: the static scale (a
        TokenizerError under a running scaling, where a patch's scale depends on the bars before it)."""
        self._require_fitted()
        if isinstance(patches, Patches):
            symbol = patches.symbol if symbol is None else symbol
            scales = patches.scales if scales is None else scales
            patches = patches.features
        x = np.asarray(patches, dtype=np.float64)
        if x.ndim == 2:
            x = x[:, :, None]
        assert x.ndim == 3 and x.shape[1:] == (self.patch_len, self.n_features), \
            f"patches must be (n, {self.patch_len}, {self.n_features}), got {x.shape}"
        if len(x) == 0:
            return np.zeros(0, dtype=np.int64)
        if scales is None:
            if self.config.scaling != "static":
                raise TokenizerError(f"a {self.config.scaling}-scaled tokenizer needs each patch's scale: encode "
                                     "Patches from tokenizer.patchify(frame), a history with encode_history(), "
                                     "or pass scales=")
            divisor = self.scale(symbol)
        else:
            divisor = np.asarray(scales, dtype=np.float64)
            if divisor.ndim == 1:
                divisor = self._feature_scales(divisor, self.scale(symbol))
            assert divisor.shape == (len(x), self.n_features), \
                f"scales must be ({len(x)},) or ({len(x)}, {self.n_features}), got {divisor.shape}"
            divisor = divisor[:, None, :]
        ids = self._encode_scaled(x / divisor)
        assert ids.dtype == np.int64 and (len(ids) == 0 or 0 <= ids.min() <= ids.max() < self.vocab_size)
        return ids

    def encode_history(self, values, symbol: str | None = None, n_patches: int | None = None,
                       times=None, profile=None) -> np.ndarray:
        """The tokens of the last `n_patches` (default: all) complete patches of a history, aligned to its end:
        `values` (n,) log returns or (n, n_features) features of `symbol` from its first return up to a forecast
        origin (`times`: their end times, needed when `needs_times(symbol)`). Each patch is scaled by the scale at
        its first bar, computed from the whole history before it."""
        x = np.asarray(values, dtype=np.float64)
        x = x[:, None] if x.ndim == 1 else x
        x = self._deseasonalised(x, times, symbol, profile)
        k = len(x) // self.patch_len if n_patches is None else min(int(n_patches), len(x) // self.patch_len)
        start = len(x) - k * self.patch_len
        scales = self.bar_scales(x, symbol)[start::self.patch_len][:k]
        return self.encode_patches(x[start:].reshape(k, self.patch_len, x.shape[1]), symbol, scales=scales)

    def _encode_scaled(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def decode(self, tokens, symbol: str | None = None, *, scales=None, decode: str = "centroid",
               rng=None) -> np.ndarray:
        """Token ids (..., n) -> log returns (..., n * patch_len) in the units of `symbol` (global scale when None
        or unknown).

        `scales` (broadcastable to the ids' shape): each token's scale, e.g. a patch's real scale when
        reconstructing. Without: the static scale, or under a running scaling each row of tokens is a path whose
        volatility is rolled forward from the symbol's start (`decode_paths` with s0 = its static scale).
        `decode`: "centroid" (the code's patch) or "within" (a draw among its train members, from `rng`)."""
        ids = self._check_ids(tokens)
        if scales is None and self.config.scaling != "static":
            paths = ids.reshape(-1, ids.shape[-1]) if ids.ndim else ids.reshape(1, 1)
            returns = self.decode_paths(paths, symbol, decode=decode, rng=rng)
            return returns.reshape(*ids.shape[:-1], -1) if ids.ndim else returns.reshape(-1)
        scale = self.scale(symbol)[0] if scales is None else np.broadcast_to(np.asarray(scales, np.float64),
                                                                           ids.shape)[..., None]
        returns = self._shocks(ids, decode, rng) * scale
        return returns.reshape(*ids.shape[:-1], -1) if ids.ndim else returns

    def decode_paths(self, codes, symbol: str | None = None, s0: float | None = None, *, decode: str | None = None,
                     rng=None, times=None, profile=None) -> np.ndarray:
        """Sampled token paths (n_paths, n_tokens) -> log returns (n_paths, n_tokens * patch_len).

        Each token's shock patch (`decode`: "centroid" or "within", default the config's `decode`; within draws
        from `rng`: a numpy Generator or a seed, default the tokenizer's seed) is multiplied by the path's scale at
        the patch's first bar. Under a running scaling the scale starts at `s0` (the real history's state at the
        origin, `origin_state`; default: the symbol's static scale) and rolls forward with each path's own
        returns by the symbol's recursion; under static scaling it is the symbol's scale and s0 is ignored.
        `times`: the end times of the decoded bars (at least n_tokens * patch_len), needed when the symbol has a
        seasonal profile: each bar is multiplied by its slot's factor."""
        ids = self._check_ids(codes)
        assert ids.ndim == 2, f"codes must be (n_paths, n_tokens), got shape {ids.shape}"
        shocks = self._shocks(ids, self.config.decode if decode is None else decode, rng)
        n_paths, n_tokens = ids.shape
        factors = None
        profile = self.seasonal.get(symbol) if profile is None and symbol is not None else profile
        if profile is not None:
            n_bars = n_tokens * self.patch_len
            if times is None or len(np.asarray(times)) < n_bars:
                raise TokenizerError(f"symbol {show(symbol)} is seasonally scaled: pass the end times of the "
                                     f"{n_bars} decoded bars (times=)")
            factors = profile.factors(np.asarray(times)[:n_bars])
        if self.config.scaling == "static":
            out = (shocks * self.scale(symbol)[0]).reshape(n_paths, -1)
            return out if factors is None else out * factors
        recursion = self._recursion(symbol)
        if s0 is None:
            var = np.full(n_paths, recursion.var0)
        else:
            if isinstance(s0, bool) or not isinstance(s0, int | float | np.number) or not 0 < float(s0) < np.inf:
                raise TokenizerError(f"s0 (the volatility at the first decoded bar) must be a positive finite "
                                     f"number, got {show(s0)}; compute it with origin_state(history, symbol)")
            var = np.full(n_paths, float(s0) ** 2)
        out = np.empty_like(shocks)
        for j in range(n_tokens):
            out[:, j] = shocks[:, j] * recursion.scale(var)[:, None]
            for b in range(self.patch_len):
                var = recursion.step(var, out[:, j, b])
        out = out.reshape(n_paths, -1)  # deseasonalised returns: the recursion runs on these, as in encoding
        return out if factors is None else out * factors

    def _check_ids(self, tokens) -> np.ndarray:
        self._require_fitted()
        ids = np.asarray(tokens)
        if ids.size and (not np.issubdtype(ids.dtype, np.integer) or ids.min() < 0 or ids.max() >= self.vocab_size):
            raise TokenizerError(f"token ids must be integers in [0, {self.vocab_size}) for this tokenizer; got "
                                 f"{ids.dtype} values in [{ids.min()}, {ids.max()}]")
        return ids.astype(np.int64)

    def _shocks(self, ids: np.ndarray, decode: str, rng) -> np.ndarray:
        """Shock patches (..., patch_len) of ids (...)."""
        check_choice(decode, "decode", DECODES)
        if decode == "centroid":
            return self.decode_table[ids]
        if self.within is None:
            raise TokenizerError("this tokenizer was saved before within-code decoding existed (no member "
                                 "tables in model.safetensors): fit it again with `pricegpt tokenizer fit`, or "
                                 "use decode='centroid'")
        generator = rng if isinstance(rng, np.random.Generator) else \
            np.random.default_rng(self.config.seed if rng is None else rng)
        c = self.config
        with np.errstate(divide="ignore"):  # u = 0 is the lowest tail's infinite quantile, capped by tail_cap
            return sample_within(self.within, self.decode_table, ids, generator.random(ids.shape), c.tail_from,
                                 c.tail_cap)

    def reconstruct(self, frame: pd.DataFrame) -> dict[str, np.ndarray]:
        """decode(encode(frame)) per symbol with each patch's real scale: (n_patches, patch_len) log returns, for
        measuring the error."""
        out = {}
        for s, p in self.patchify(frame).items():
            ids = self.encode_patches(p, s)
            out[s] = self.decode(ids, s, scales=p.scales[:, 0]).reshape(len(ids), self.patch_len)
        return out

    # -- files
    def config_dict(self) -> dict:
        self._require_fitted()
        out = {**asdict(self.config), "format_version": FORMAT_VERSION,
               "feature_names": list(FEATURES[self.config.features]),
               "n_train_patches": self.n_train_patches,
               "scales": {"global": [float(v) for v in self.global_scale],
                          "symbols": {s: [float(v) for v in scale] for s, scale in self.symbol_scales.items()}}}
        if self.config.seasonal:
            out["seasonal_profiles"] = {s: p.to_dict() for s, p in self.seasonal.items()}
        else:
            del out["seasonal"]  # files written before seasonal scaling existed keep their exact bytes
        if self.config.scaling == "garch":
            out["garch"] = {"global": list(self.garch_global),
                            "symbols": {s: list(params) for s, params in self.garch.items()}}
        return out

    def _tensors(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def _load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        raise NotImplementedError

    def to_bytes(self) -> tuple[bytes, bytes]:
        """The exact bytes of config.json and model.safetensors. A tokenizer loaded from an older format keeps
        its files' bytes (and so its hash, which runs and token stores recorded)."""
        if self._older_file is not None:
            return self._older_file
        config = (json.dumps(self.config_dict(), indent=2, allow_nan=False) + "\n").encode("utf-8")
        tensors = {name: t.detach().contiguous() for name, t in self._tensors().items()}
        if self.within is not None:
            tensors.update(self.within.tensors())
        # one metadata key only: safetensors writes a multi-key metadata map in random order (not reproducible)
        return config, safetensors.torch.save(tensors, metadata={"format": "pt"})

    @property
    def hash(self) -> str:
        """sha256 over the bytes of config.json followed by model.safetensors."""
        if self._hash is None:
            config, weights = self.to_bytes()
            self._hash = hashlib.sha256(config + weights).hexdigest()
        return self._hash

    def save_pretrained(self, directory: str | Path) -> Path:
        directory = Path(directory)
        config, weights = self.to_bytes()
        write_bytes(directory / WEIGHTS_FILE, weights)
        write_bytes(directory / CONFIG_FILE, config)
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> Tokenizer:
        """Load a saved tokenizer; a missing, truncated or corrupted directory is a TokenizerError."""
        directory = Path(directory)
        config_bytes, weights_bytes = _read_files(directory)
        refit = "the tokenizer directory is damaged: restore it or fit it again with `pricegpt tokenizer fit`"
        try:
            raw = json.loads(config_bytes)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
            reason = "nested too deeply" if isinstance(err, RecursionError) else str(err)
            raise TokenizerError(f"{directory / CONFIG_FILE} is not valid JSON ({reason}); {refit}") from None
        kind = raw.get("kind") if isinstance(raw, dict) else None
        if not isinstance(kind, str) or kind not in _KINDS:
            raise TokenizerError(f"{directory / CONFIG_FILE}: unknown tokenizer kind {show(kind)}; "
                                 f"expected one of {', '.join(sorted(_KINDS))}")
        version = raw.get("format_version", FORMAT_VERSION)
        if isinstance(version, bool) or not isinstance(version, int | float) or not version == version:
            raise TokenizerError(f"{directory / CONFIG_FILE}: format_version {show(version)} is not a number; {refit}")
        if version > FORMAT_VERSION:
            raise TokenizerError(f"{directory / CONFIG_FILE} was written by a newer pricegpt (format {version}); "
                                 "upgrade pricegpt")
        target = _KINDS[kind]
        if cls is not Tokenizer and not issubclass(target, cls):
            raise TokenizerError(f"{directory} holds a {kind} tokenizer, not a {cls.kind} one; use load_tokenizer")
        try:
            tokenizer = target._from_config(raw)
        except (KeyError, TypeError, ValueError, AttributeError, ConfigError) as err:
            reason = f"missing {err}" if isinstance(err, KeyError) else str(err)
            raise TokenizerError(f"{directory / CONFIG_FILE} is damaged ({reason}); {refit}") from None
        try:
            tokenizer._load_weights(weights_bytes)
        except (KeyError, TypeError, ValueError, AttributeError, AssertionError, RuntimeError) as err:
            raise TokenizerError(f"{directory / WEIGHTS_FILE} is truncated, corrupted or does not match "
                                 f"{CONFIG_FILE} ({err}); {refit}") from None
        tokenizer._hash = hashlib.sha256(config_bytes + weights_bytes).hexdigest()
        if version < FORMAT_VERSION:
            tokenizer._older_file = (config_bytes, weights_bytes)
        return tokenizer

    @classmethod
    def _from_config(cls, raw: dict) -> Tokenizer:
        """An unfitted tokenizer with the saved settings and scales (config.json's content)."""
        names = {f.name for f in fields(cls.config_class)}
        config = cls.config_class(**{k: v for k, v in raw.items() if k in names})
        config.validate()
        tokenizer = cls(config)
        n_features = tokenizer.n_features
        scales = raw["scales"]
        tokenizer.global_scale = _scale_vector(scales["global"], n_features)
        tokenizer.symbol_scales = {str(s): _scale_vector(v, n_features) for s, v in scales["symbols"].items()}
        tokenizer.n_train_patches = check_int(raw["n_train_patches"], "n_train_patches", 0, 2**62)
        if config.seasonal:
            tokenizer.seasonal = {str(s): SeasonalProfile.from_dict(v, f"symbol {show(s)}")
                                  for s, v in raw["seasonal_profiles"].items()}
        if config.scaling == "garch":
            garch = raw["garch"]
            tokenizer.garch_global = check_garch(garch["global"], "the global fit")
            tokenizer.garch = {str(s): check_garch(v, f"symbol {show(s)}") for s, v in garch["symbols"].items()}
            if len(tokenizer.garch_global) != 2 or any(len(v) != 3 for v in tokenizer.garch.values()) \
                    or set(tokenizer.garch) != set(tokenizer.symbol_scales):
                raise ValueError("the GARCH parameters do not match the symbols with a scale")
        return tokenizer

    def _load_weights(self, weights_bytes: bytes) -> None:
        """The fitted state from model.safetensors' bytes: every tensor finite, shapes as the config says."""
        try:
            tensors = load_safetensors_bytes(weights_bytes)
        except Exception as err:  # safetensors raises its own error types for truncated or garbled files
            raise ValueError(f"cannot be read: {err}") from err
        for name, tensor in tensors.items():
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise ValueError(f"tensor {name} holds NaN or infinite values")
        self.within = WithinTables.from_tensors(tensors, self.vocab_size, self.config.decode_quantiles,
                                                self.patch_len)
        self._load_tensors(tensors)
        assert self.decode_table is not None and self.decode_table.shape == (self.vocab_size, self.patch_len), \
            "decode table does not match the config"
        if not np.all(np.isfinite(self.decode_table)):
            raise ValueError("the decode table computed from the weights holds NaN or infinite values")

    def _require_fitted(self) -> None:
        if self.decode_table is None:
            raise TokenizerError(f"the {self.kind} tokenizer is not fitted; call fit() or load one with "
                                 "load_tokenizer(DIR)")

    def __repr__(self) -> str:
        state = f"train_end={self.config.train_end}" if self.fitted else "unfitted"
        return (f"{type(self).__name__}(K={self.vocab_size}, patch_len={self.patch_len}, "
                f"features={self.config.features!r}, scaling={self.config.scaling!r}, {state})")


def _close(values) -> np.ndarray:
    """Log returns (n,) or features (n, n_features) -> the close log returns (n,) float64."""
    x = np.asarray(values, dtype=np.float64)
    assert x.ndim in (1, 2), f"returns must be (n,) or (n, n_features), got shape {x.shape}"
    return x if x.ndim == 1 else x[:, 0]


def _scale_vector(values, n_features: int) -> np.ndarray:
    scale = np.asarray(values, dtype=np.float64)
    if scale.shape != (n_features,) or not np.all(np.isfinite(scale) & (scale > 0)):
        raise ValueError(f"a scale must be {n_features} finite positive numbers, got {show(values)}")
    return scale


def _read_files(directory: Path) -> tuple[bytes, bytes]:
    if not directory.is_dir():
        raise TokenizerError(f"{directory}: no such tokenizer directory; fit one with `pricegpt tokenizer fit`")
    out = []
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        try:
            out.append((directory / name).read_bytes())
        except OSError as err:
            raise TokenizerError(f"{directory / name} cannot be read ({err.strerror or err}); the tokenizer "
                                 "directory is incomplete: fit it again with `pricegpt tokenizer fit`") from err
    return out[0], out[1]


def create_tokenizer(kind: str = "vqvae", **options) -> Tokenizer:
    """An unfitted tokenizer of `kind` ("vqvae", "quantile", "uniform"); options are config fields."""
    if kind not in _KINDS:
        raise ConfigError(f"unknown tokenizer kind '{kind}'; use one of {', '.join(sorted(_KINDS))}")
    return _KINDS[kind](**options)


def load_tokenizer(directory: str | Path) -> Tokenizer:
    """Load any kind from DIR/config.json + DIR/model.safetensors (dispatches on the saved kind)."""
    return Tokenizer.from_pretrained(directory)
