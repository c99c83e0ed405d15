"""What every tokenizer kind shares: the `Tokenizer` interface, per-symbol scaling, decode, save/load, hash.
(Per-bar features and cutting them into patches are patches.py.)

A tokenizer turns each symbol's bars into a stream of token ids, one id per *patch* of `patch_len` consecutive
bars. Per symbol, the per-bar features (the first bar has none: it has no return) are cut into non-overlapping
patches anchored at the symbol's first return; a trailing incomplete patch is not encoded. Appending future bars
therefore never changes a past token. A patch belongs to the split of its last bar, so no train patch contains
a bar after `train_end`.

Features per bar (`features=`, computed by `patches.bar_features`):
  "close"  the close-to-close log return (default; all a close-only file has);
  "ohlcv"  the log return, log(high/close), log(low/close), log(open/close) and the change of log(1 + volume).

Scaling (no leakage, no per-window normalisation): each feature of each symbol is divided by that symbol's
standard deviation of the feature over its train bars (timestamp <= train_end). A symbol with fewer than
`min_scale_returns` train bars, or none at all, uses the global scale: the median of the per-symbol scales.
The scales live in config.json; `decode(tokens, symbol)` multiplies back by the symbol's close scale, so the
volatility level of a symbol is part of what its tokens mean.

Kinds subclass `Tokenizer` and implement `_fit_scaled` (train patches in scaled units), `_encode_scaled`,
`_tensors` / `_load_tensors`; they fill `decode_table` (K, patch_len) with each token's patch of scaled close
returns. Files: `config.json` (the flat config, the scales, fit facts) + `model.safetensors` (no pickle).
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

from ..config import check_choice, check_int, check_seed, show
from ..data import iso, parse_time, time_splits
from ..errors import ConfigError, DataError, TokenizerError
from ..fileio import write_bytes
from .patches import Patches, bar_features, cut_patches, cutoff_ns

DEFAULT_PATCH_LEN = 4
FEATURES: dict[str, tuple[str, ...]] = {
    "close": ("log_return",),
    "ohlcv": ("log_return", "log_high_close", "log_low_close", "log_open_close", "log_volume_change"),
}
CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"
FORMAT_VERSION = 1
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

    def validate(self) -> None:
        check_int(self.patch_len, "--patch-len (patch_len)", 1, MAX_PATCH_LEN)
        check_int(self.codebook_size, "--codebook-size (codebook_size)", 2, MAX_CODEBOOK)
        check_choice(self.features, "features", tuple(FEATURES))
        check_seed(self.seed, "--seed (tokenizer seed)")
        check_int(self.min_scale_returns, "min_scale_returns", 2, 10**9)
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
        self.n_train_patches = 0
        self.decode_table: np.ndarray | None = None  # (K, patch_len) scaled close returns
        self._hash: str | None = None

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
        per_symbol = bar_features(frame, self.config.features)
        self._fit_scales({s: values[times <= cutoff] for s, (times, values) in per_symbol.items()}, t_end)
        train = []
        for symbol, (times, values) in per_symbol.items():
            patches = cut_patches(symbol, times, values, self.patch_len)
            train.append(patches.features[patches.ends <= cutoff] / self.scale(symbol))
        x_train = np.concatenate(train) if train else np.zeros((0, self.patch_len, self.n_features))
        if len(x_train) < self.vocab_size:
            raise DataError(f"only {len(x_train)} complete train patches (of {self.patch_len} bars up to "
                            f"train_end {iso(t_end)}) for a codebook of {self.vocab_size} codes; use more data, "
                            "a later --train-end, a smaller --codebook-size or a smaller --patch-len")
        self.config.train_end = iso(t_end)
        self.n_train_patches = len(x_train)
        self._hash = None
        self._fit_scaled(x_train, progress=progress)
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

    def _fit_scaled(self, x_train: np.ndarray, *, progress: bool | None) -> None:
        raise NotImplementedError

    # -- encoding and decoding
    def patchify(self, frame: pd.DataFrame) -> dict[str, Patches]:
        """Every complete patch of every symbol (sorted by symbol), raw features."""
        return {s: cut_patches(s, times, values, self.patch_len)
                for s, (times, values) in bar_features(frame, self.config.features).items()}

    def encode(self, frame: pd.DataFrame) -> dict[str, np.ndarray]:
        """Token ids (n_patches,) int64 per symbol of `frame`, symbols sorted."""
        self._require_fitted()
        return {s: self.encode_patches(p.features, s) for s, p in self.patchify(frame).items()}

    def encode_patches(self, patches: np.ndarray, symbol: str | None = None) -> np.ndarray:
        """Raw patches (n, patch_len) or (n, patch_len, n_features) of `symbol` -> ids (n,) int64."""
        self._require_fitted()
        x = np.asarray(patches, dtype=np.float64)
        if x.ndim == 2:
            x = x[:, :, None]
        assert x.ndim == 3 and x.shape[1:] == (self.patch_len, self.n_features), \
            f"patches must be (n, {self.patch_len}, {self.n_features}), got {x.shape}"
        if len(x) == 0:
            return np.zeros(0, dtype=np.int64)
        ids = self._encode_scaled(x / self.scale(symbol))
        assert ids.dtype == np.int64 and (len(ids) == 0 or 0 <= ids.min() <= ids.max() < self.vocab_size)
        return ids

    def _encode_scaled(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def decode(self, tokens, symbol: str | None = None) -> np.ndarray:
        """Token ids (..., n) -> log returns (..., n * patch_len) in the units of `symbol` (global scale when None
        or unknown)."""
        self._require_fitted()
        ids = np.asarray(tokens)
        if ids.size and (not np.issubdtype(ids.dtype, np.integer) or ids.min() < 0 or ids.max() >= self.vocab_size):
            raise TokenizerError(f"token ids must be integers in [0, {self.vocab_size}) for this tokenizer; got "
                                 f"{ids.dtype} values in [{ids.min()}, {ids.max()}]")
        returns = self.decode_table[ids.astype(np.int64)] * self.scale(symbol)[0]
        return returns.reshape(*ids.shape[:-1], -1) if ids.ndim else returns

    def reconstruct(self, frame: pd.DataFrame) -> dict[str, np.ndarray]:
        """decode(encode(frame)) per symbol: (n_patches, patch_len) log returns, for measuring the error."""
        return {s: self.decode(ids, s).reshape(len(ids), self.patch_len) for s, ids in self.encode(frame).items()}

    # -- files
    def config_dict(self) -> dict:
        self._require_fitted()
        return {**asdict(self.config), "format_version": FORMAT_VERSION,
                "feature_names": list(FEATURES[self.config.features]),
                "n_train_patches": self.n_train_patches,
                "scales": {"global": [float(v) for v in self.global_scale],
                           "symbols": {s: [float(v) for v in scale] for s, scale in self.symbol_scales.items()}}}

    def _tensors(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def _load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        raise NotImplementedError

    def to_bytes(self) -> tuple[bytes, bytes]:
        """The exact bytes of config.json and model.safetensors."""
        config = (json.dumps(self.config_dict(), indent=2, allow_nan=False) + "\n").encode("utf-8")
        tensors = {name: t.detach().contiguous() for name, t in self._tensors().items()}
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
                f"features={self.config.features!r}, {state})")


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
