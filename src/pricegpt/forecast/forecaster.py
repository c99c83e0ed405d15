"""The Forecaster: context bars -> tokens -> sampled token paths -> decoded log-return paths; and a forecaster as
one folder (`save_pretrained` / `from_pretrained`).

    fc = Forecaster.from_run("runs/x")                                    # or Forecaster.from_pretrained(DIR)
    paths = fc.sample_paths(frame, horizon_bars=20, num_samples=512)      # ForecastPaths, (symbols, samples, H)
    table = fc.predict_quantiles(frame, horizon_bars=20)                  # cumulative-return and price quantiles

How a context becomes a forecast (the same for one symbol or thousands of evaluation origins):
1. Take the last k * patch_len bars of features (log returns) up to and including the origin bar. k is the
   model's context length minus the tokens to generate (so the whole sequence stays within the positions the
   model was trained on), or fewer if the history is shorter; at least one patch.
2. Cut them into patches that END AT THE ORIGIN and encode them with the run's tokenizer, using the symbol's
   train-split scale (exactly the scaling of training; an unknown symbol gets the global scale).
3. Generate ceil(H / patch_len) tokens per sample, decode them with `decode_paths` (the symbol's scale, or a
   running scale rolled forward along each path from the origin's real state), keep the first H bars.
Every sampled path is kept; nothing is averaged.

Seeds. Every origin is sampled with a seed derived from (seed, symbol, the timestamp of the context's last bar),
by its own generator inside engine calls that many origins share (`Engine.generate` with one seed per context):
an origin's paths are the same whether it is forecast alone or among thousands, whatever --max-origins, the symbol
set, their order or how many share a call. Its samples are drawn from one seed unless they exceed what the KV-cache
budget allows in one call; then each block of them has its own seed. Origins are packed into calls of about
ROWS_PER_CALL sample rows: in benchmarks/README.md (2 CPU cores, tiny model, 256 samples, 4 tokens after 60) 8
origins per call decoded fastest, both 1 (per-call overhead) and 32 (activations and keys that no longer fit in
the CPU caches) slower.

Values (horizon, num_samples, seed, temperature) are checked before any work: ConfigErrors naming the bound
(config.py's checks), and the paths' memory against half of the free memory (`check_paths_memory`).

Temperature: the run's calibrated temperature (RUN/calibration.json, chosen on the validation split by
`calibrate_temperature`) unless one is given; 1.0 for an uncalibrated run.

A forecaster folder (`save_pretrained(DIR)`), self-contained, loadable without the run around it:
    DIR/config.json                          kind "pricegpt.forecaster", format_version, temperature (and the
                                             calibration it came from), train_end, val_end, horizon, tokenizer_hash
    DIR/model/{config.json, model.safetensors}       the GPT
    DIR/tokenizer/{config.json, model.safetensors}   its tokenizer
The cutoffs travel with it, so the leakage rule (data.windows) still refuses test origins on bars it has seen.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..config import check_int, check_memory, check_num_samples, check_seed, check_temperature, derive_seed, show
from ..data import iso, load_prices, parse_time
from ..data.windows import run_cutoffs, timestamps_ns
from ..errors import CheckpointError, ConfigError, DataError, PriceGPTError
from ..fileio import atomic_dir, json_ready, write_json
from ..model import GPT, generate
from ..runs import Run, load_run
from ..tokenizer import bar_features, load_tokenizer
from .risk import QUANTILE_LEVELS, quantile_table

KV_CACHE_BUDGET_BYTES = 512 * 2**20  # bounds the KV cache (and so memory) of one engine call
ROWS_PER_CALL = 2048  # sample rows (origins x samples) one engine call aims at; see the module docstring
MAX_HORIZON_BARS = 100_000  # a horizon is generated token by token; the engine's bound on new tokens
PATH_COPIES = 3  # float64 copies of all paths alive at once (paths, cumulative, sorted for the scores)
KIND = "pricegpt.forecaster"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
MODEL_DIR, TOKENIZER_DIR = "model", "tokenizer"


@dataclass
class ForecastPaths:
    """Sampled futures of several symbols from one origin each.

    symbols (n,), origins (n,) the last context bar's timestamp, last_close (n,) the close at the origin (NaN
    when unknown), paths (n, samples, horizon) float64 decoded per-bar log returns."""

    symbols: list[str]
    origins: list[pd.Timestamp]
    last_close: np.ndarray
    paths: np.ndarray

    @property
    def cumulative(self) -> np.ndarray:
        """(n, samples, horizon) cumulative log return from the origin after each bar."""
        return np.cumsum(self.paths, axis=-1)

    def for_symbol(self, symbol: str) -> np.ndarray:
        """(samples, horizon) per-bar log returns of one symbol."""
        return self.paths[self.symbols.index(symbol)]


class Forecaster:
    """A trained model and its tokenizer ready to forecast: `Forecaster.from_run(dir)`, `Forecaster(load_run(dir))`
    or `Forecaster.from_pretrained(dir)`."""

    def __init__(self, run: Run, autocast: torch.dtype | None = None):
        """autocast: sample under torch.autocast in this dtype (e.g. torch.bfloat16: faster on CPUs with bf16
        matrix instructions, other paths for the same seed, and an origin's paths then also depend on which
        origins share its engine call, bf16 matrix products not being row-by-row reproducible across batch sizes;
        benchmarks/README.md compares its CRPS). None (fp32): an origin's paths never depend on the batching."""
        if run.tokenizer is None:
            raise PriceGPTError(f"{run.dir} has no tokenizer (it was trained on a bare token file); its tokens "
                                "cannot be decoded to returns, so it cannot forecast prices")
        self.run = run
        self.model = run.model
        self.tokenizer = run.tokenizer
        self.autocast = autocast

    @classmethod
    def from_run(cls, run_dir: str | os.PathLike, device: str = "cpu", autocast: torch.dtype | None = None
                 ) -> Forecaster:
        return cls(load_run(run_dir, device=device, need_tokenizer=True), autocast=autocast)

    @property
    def patch_len(self) -> int:
        return self.tokenizer.patch_len

    @property
    def temperature(self) -> float:
        return float(self.run.calibration.get("temperature", 1.0))

    def features(self, frame: pd.DataFrame) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per symbol: (timestamps (n,) datetime64[ns], features (n, n_features)); column 0 is the log return."""
        return bar_features(frame, self.tokenizer.config.features)

    def context_patches(self, horizon: int) -> int:
        """How many patches of context a forecast of `horizon` bars uses when the history allows."""
        n_new = math.ceil(horizon / self.patch_len)
        return max(1, self.model.config.sequence_len - n_new)

    # ------------------------------------------------------------------------------------------- sampling
    def sample_returns(self, contexts, symbols, horizon: int, num_samples: int, *, seed: int = 0,
                       temperature: float | None = None, context_ends=None, progress: bool | None = None,
                       label: str = "sampling") -> np.ndarray:
        """Per-bar log-return paths of many origins: (origins, num_samples, horizon) float64.

        contexts: a list of arrays (bars,) or (bars, n_features) of raw features up to each origin, or one
        array (origins, bars[, n_features]); symbols: one symbol per origin (for the scale); context_ends: the
        timestamp of each context's last bar. Each origin is sampled with a seed derived from (seed, symbol,
        context end) (without context_ends: the number of context bars), so its paths do not depend on which
        other origins are asked for, their order or how many share an engine call (see `origin_seed`).
        progress: a tqdm bar on stderr named `label` (None: only when stderr is a terminal).
        """
        horizon, num_samples, seed = check_sampling(horizon, num_samples, seed)
        temperature = self.temperature if temperature is None else check_temperature(temperature)
        symbols = [str(s) for s in symbols]
        contexts = list(contexts)
        assert len(contexts) == len(symbols), f"{len(contexts)} contexts but {len(symbols)} symbols"
        if context_ends is not None:
            keys = timestamps_ns(context_ends)
            assert len(keys) == len(contexts), f"{len(keys)} context ends but {len(contexts)} contexts"
        else:
            keys = np.array([len(c) for c in contexts], dtype=np.int64)
        check_paths_memory(len(contexts), num_samples, horizon)
        tokens = self._context_tokens(contexts, symbols, horizon)
        states = [self.tokenizer.origin_state(np.asarray(c, dtype=np.float64), s) for c, s in zip(contexts, symbols)]
        n_new = math.ceil(horizon / self.patch_len)
        out = np.empty((len(contexts), num_samples, horizon))
        with progress_bar(len(contexts), progress, label) as bar:
            for jobs in self._engine_calls(tokens, symbols, keys, num_samples, seed):
                idx = torch.as_tensor(np.stack([tokens[i] for i, _, _ in jobs]), dtype=torch.long)
                rows = jobs[0][2].stop - jobs[0][2].start
                generated = generate(self.model, idx, n_new, num_samples=rows, temperature=temperature,
                                     seed=[job_seed for _, job_seed, _ in jobs], autocast=self.autocast)
                generated = generated.cpu().numpy()
                for (i, job_seed, samples), paths in zip(jobs, generated):
                    # a running scale rolls forward on each path's own returns from the origin's real state;
                    # within-code draws come from the job's own seed, so batching never changes them
                    out[i, samples] = self.tokenizer.decode_paths(
                        paths, symbols[i], states[i], rng=np.random.default_rng(job_seed))[:, :horizon]
                bar.update(sum(samples.stop == num_samples for _, _, samples in jobs))
        return out

    def sample_cumulative(self, contexts, symbols, horizon: int, num_samples: int, *, seed: int = 0,
                          temperature: float | None = None, context_ends=None, progress: bool | None = None,
                          label: str = "sampling") -> np.ndarray:
        """Like `sample_returns`, as cumulative log returns from the origin: (origins, num_samples, horizon)."""
        return np.cumsum(self.sample_returns(contexts, symbols, horizon, num_samples, seed=seed,
                                             temperature=temperature, context_ends=context_ends, progress=progress,
                                             label=label), axis=-1)

    def _context_tokens(self, contexts, symbols, horizon: int) -> list[np.ndarray]:
        """Each context's last whole patches, ending at the origin, as token ids (module docstring, steps 1-2)."""
        P, max_patches = self.patch_len, self.context_patches(horizon)
        tokens = []
        for context, symbol in zip(contexts, symbols):
            x = np.asarray(context, dtype=np.float64)
            x = x[:, None] if x.ndim == 1 else x
            k = min(max_patches, len(x) // P)
            if k < 1:
                raise DataError(f"{symbol}: a forecast needs at least {P} bars of history before the origin "
                                f"(one patch), got {len(x)}")
            # each patch scaled by the (causal) scale at its first bar, from the whole history before it
            tokens.append(np.asarray(self.tokenizer.encode_history(x, symbol, n_patches=k)))
        return tokens

    def _engine_calls(self, tokens, symbols, keys, num_samples: int, seed: int):
        """The engine calls of a batch of origins: lists of jobs (origin, seed, samples slice), each job one seeded
        block of an origin's samples. An origin's samples are split into blocks of `_samples_per_seed` rows, block
        b seeded by origin_seed(seed, symbol, key, b); jobs with the same context length and block size share a
        call of about ROWS_PER_CALL rows, at most `_rows_per_call` (an engine call needs rectangular contexts and
        one num_samples)."""
        block = self._samples_per_seed(num_samples)
        groups: dict[tuple[int, int], list] = {}
        for i, (ids, symbol, key) in enumerate(zip(tokens, symbols, keys)):
            for b, s0 in enumerate(range(0, num_samples, block)):
                samples = slice(s0, min(s0 + block, num_samples))
                job = (i, origin_seed(seed, symbol, int(key), b), samples)
                groups.setdefault((len(ids), samples.stop - s0), []).append(job)
        for (_, rows), jobs in groups.items():
            per_call = max(1, min(ROWS_PER_CALL, self._rows_per_call()) // rows)
            for start in range(0, len(jobs), per_call):
                yield jobs[start:start + per_call]

    def _samples_per_seed(self, num_samples: int) -> int:
        """Samples drawn from one seed: all of an origin's, unless they exceed one engine call's KV budget."""
        return min(num_samples, self._rows_per_call())

    def _rows_per_call(self) -> int:
        """Sample rows per engine call: the engine's KV cache holds sequence_len positions per row (fp32)."""
        c = self.model.config
        bytes_per_row = c.n_layer * 2 * c.sequence_len * c.n_kv_head * c.head_dim * 4
        return max(1, KV_CACHE_BUDGET_BYTES // bytes_per_row)

    def sample_paths(self, context_frame, horizon_bars: int, num_samples: int, *, seed: int = 0,
                     temperature: float | None = None, symbols: list[str] | None = None) -> ForecastPaths:
        """Paths for the `horizon_bars` bars after the last bar of each symbol in `context_frame` (a price frame,
        file, folder or sample:NAME: whatever `load_prices` reads)."""
        check_sampling(horizon_bars, num_samples, seed, horizon_flag="horizon_bars (--horizon)")
        context_frame = load_prices(context_frame)
        per_symbol = self.features(context_frame)
        symbols = sorted(per_symbol) if symbols is None else [str(s) for s in symbols]
        check_symbols(symbols, list(per_symbol))
        last_close = context_frame.groupby("symbol")["close"].last()
        ends = [per_symbol[s][0][-1] if len(per_symbol[s][0]) else np.datetime64("NaT") for s in symbols]
        paths = self.sample_returns([per_symbol[s][1] for s in symbols], symbols, horizon_bars, num_samples,
                                    seed=seed, temperature=temperature, context_ends=ends)
        origins = [pd.Timestamp(end).tz_localize("UTC") for end in ends]
        return ForecastPaths(symbols, origins, np.array([float(last_close[s]) for s in symbols]), paths)

    def predict_quantiles(self, context_frame, horizon_bars: int, levels=QUANTILE_LEVELS,
                          num_samples: int = 512, *, seed: int = 0, temperature: float | None = None,
                          symbols: list[str] | None = None) -> pd.DataFrame:
        """One row per symbol and horizon step (1..H): quantiles of the cumulative log return (`return_qL`)
        and of the price (`price_qL` = last close * exp(return quantile))."""
        fc = self.sample_paths(context_frame, horizon_bars, num_samples, seed=seed, temperature=temperature,
                               symbols=symbols)
        return quantile_table(fc, levels)

    # ------------------------------------------------------------------------------------ one folder
    def save_pretrained(self, directory: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write the forecaster folder (module docstring), built in a temporary folder and renamed into place.

        An existing non-empty `directory` is an OutputExistsError unless `overwrite` and pricegpt wrote it."""
        directory = Path(directory)
        if directory.is_dir() and not directory.is_symlink() and not any(directory.iterdir()):
            directory.rmdir()  # an empty folder holds nothing to protect
        train_end, val_end = run_cutoffs(self.run)
        config = {"kind": KIND, "format_version": FORMAT_VERSION, "temperature": self.temperature,
                  "calibration": json_ready(self.run.calibration),
                  "train_end": None if train_end is None else iso(train_end),
                  "val_end": None if val_end is None else iso(val_end),
                  "horizon": self.run.meta.get("horizon"), "tokenizer_hash": self.tokenizer.hash}
        with atomic_dir(directory, overwrite=overwrite) as tmp:
            self.model.save_pretrained(tmp / MODEL_DIR)
            self.tokenizer.save_pretrained(tmp / TOKENIZER_DIR)
            write_json(tmp / CONFIG_FILE, config)
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, device: str = "cpu") -> Forecaster:
        """Load a folder written by `save_pretrained`; a missing or damaged file is a PriceGPTError naming it."""
        directory = Path(directory)
        if not directory.is_dir():
            raise CheckpointError(f"forecaster folder {directory} not found; write one with "
                                  "Forecaster.save_pretrained(DIR)")
        config = _read_config(directory / CONFIG_FILE)
        model = GPT.from_pretrained(directory / MODEL_DIR, map_location=device)
        model.eval()
        tokenizer = load_tokenizer(directory / TOKENIZER_DIR)
        if tokenizer.vocab_size != model.config.vocab_size:
            raise CheckpointError(f"{directory / TOKENIZER_DIR} has {tokenizer.vocab_size} codes but the model in "
                                  f"{directory / MODEL_DIR} has a vocabulary of {model.config.vocab_size}; the "
                                  "folder mixes two forecasters: save it again")
        if tokenizer.hash != config["tokenizer_hash"]:
            raise CheckpointError(f"{directory / TOKENIZER_DIR} is not the tokenizer {directory / CONFIG_FILE} was "
                                  "saved with (hash differs); the folder is damaged: save it again")
        meta = {key: config[key] for key in ("train_end", "val_end", "horizon", "tokenizer_hash")
                if config.get(key) is not None}
        calibration = {**config.get("calibration", {}), "temperature": config["temperature"]}
        return cls(Run(dir=directory, model=model, tokenizer=tokenizer, meta=meta, calibration=calibration))


def _read_config(path: Path) -> dict:
    """The forecaster's config.json, every field checked; CheckpointError naming the file otherwise."""
    damaged = "the forecaster folder is damaged: save it again with Forecaster.save_pretrained"
    try:
        config = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise CheckpointError(f"{path} not found; {path.parent} is not a forecaster folder (write one with "
                              "Forecaster.save_pretrained; a run directory loads with Forecaster.from_run)") from None
    except (json.JSONDecodeError, UnicodeDecodeError, OSError, RecursionError) as err:
        reason = "nested too deeply" if isinstance(err, RecursionError) else str(err)
        raise CheckpointError(f"{path} is not valid JSON ({reason}); {damaged}") from None
    if not isinstance(config, dict) or config.get("kind") != KIND:
        raise CheckpointError(f"{path} is not a forecaster config (kind {KIND!r}); {damaged}")
    version = config.get("format_version")
    if isinstance(version, bool) or not isinstance(version, (int, float)) or version != version:
        raise CheckpointError(f"{path}: format_version {show(version)} is not a number; {damaged}")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{path} was written by a newer pricegpt (format {version}); upgrade pricegpt")
    temperature = config.get("temperature")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 < temperature < math.inf:
        raise CheckpointError(f"{path}: temperature {show(temperature)} is not a number > 0; {damaged}")
    for key in ("train_end", "val_end"):
        if config.get(key) is not None:
            try:
                parse_time(config[key], f"{path}: {key}")
            except ConfigError as err:
                raise CheckpointError(f"{err}; {damaged}") from None
    horizon = config.get("horizon")
    if horizon is not None and (isinstance(horizon, bool) or not isinstance(horizon, int) or horizon < 1):
        raise CheckpointError(f"{path}: horizon {show(horizon)} is not a whole number >= 1; {damaged}")
    if not isinstance(config.get("tokenizer_hash"), str):
        raise CheckpointError(f"{path}: tokenizer_hash is missing; {damaged}")
    if not isinstance(config.get("calibration", {}), dict):
        raise CheckpointError(f"{path}: calibration is not an object; {damaged}")
    return config


def check_symbols(wanted: list[str], available: list[str]) -> None:
    """DataError naming the symbols the data lacks and (some of) those it has."""
    missing = [s for s in wanted if s not in available]
    if missing:
        known = sorted(available)
        shown = ", ".join(show(s) for s in known[:20]) + (f" and {len(known) - 20} more" if len(known) > 20 else "")
        raise DataError(f"symbol(s) {', '.join(show(s) for s in missing[:5])} not in the data; available: "
                        f"{shown or 'none'}")


# ------------------------------------------------------------------------------------------ values and seeds
def check_sampling(horizon, num_samples, seed, *, horizon_flag: str = "--horizon") -> tuple[int, int, int]:
    """(horizon, num_samples, seed) as ints inside their bounds, else a ConfigError naming the flag and the bound:
    horizon in [1, MAX_HORIZON_BARS], num_samples in [1, 1,000,000], seed in [0, 2**63 - 1]."""
    return (check_int(horizon, horizon_flag, 1, MAX_HORIZON_BARS),
            check_num_samples(num_samples, "num_samples (--num-samples)"), check_seed(seed, "seed (--seed)"))


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass


@contextlib.contextmanager
def progress_bar(total: int, progress: bool | None, label: str, unit: str = "origin"):
    """A tqdm bar on stderr while the block runs (progress None: only when stderr is a terminal), else an object
    whose `update` does nothing. The bar disappears when done: the command line prints what was computed."""
    if progress is False or (progress is None and not sys.stderr.isatty()):
        yield _NoBar()
        return
    from tqdm.auto import tqdm  # imported only when a bar is shown

    with tqdm(total=total, desc=label, unit=unit, leave=False, dynamic_ncols=True, file=sys.stderr) as bar:
        yield bar


def paths_bytes(n_origins: int, num_samples: int, horizon: int) -> int:
    """Host memory of the sampled paths of `n_origins` origins: the float64 paths and the copies scoring them
    makes (cumulative returns, sorted samples)."""
    return PATH_COPIES * 8 * int(n_origins) * int(num_samples) * int(horizon)


def check_paths_memory(n_origins: int, num_samples: int, horizon: int) -> None:
    """ConfigError, before anything is sampled, when the paths would need more than half the free memory."""
    check_memory(paths_bytes(n_origins, num_samples, horizon),
                 f"{n_origins:,} origin(s) x {num_samples:,} sample paths x {horizon:,} bars",
                 "use a smaller --num-samples (or fewer origins: --max-origins, a shorter split)")


def origin_seed(seed: int, symbol: str, key: int, block: int = 0) -> int:
    """The sampling seed of one origin: derived from (seed, symbol, key) only, key = the timestamp (ns) of the
    context's last bar; `block` numbers the engine calls of an origin whose samples exceed one call."""
    symbol_key = int.from_bytes(hashlib.sha256(str(symbol).encode("utf-8")).digest()[:8], "little")
    return derive_seed(seed, symbol_key, int(key), int(block))
