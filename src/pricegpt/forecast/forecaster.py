"""The Forecaster: context bars -> tokens -> sampled token paths -> decoded log-return paths; and a forecaster as
one folder (`save_pretrained` / `from_pretrained`).

    fc = Forecaster.from_run("runs/x")                                    # or Forecaster.from_pretrained(DIR)
    paths = fc.sample_paths(frame, horizon_bars=20, num_samples=512)      # ForecastPaths, (symbols, samples, H)
    table = fc.predict_quantiles(frame, horizon_bars=20)                  # cumulative-return and price quantiles
    table = fc.predict_df(frame, horizon=20)      # long frame with the future bars' timestamps (frames.py)

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
ROWS_PER_CALL sample rows: on 2 CPU cores (tiny model, 256 samples, 4 tokens after 60; 2026-12-02) 16 origins per
call decoded fastest (4096 rows: 1.06x 8 origins, 1.03x 32, 1.2x 64), one origin per call (per-call overhead) and
64 (activations and keys that no longer fit in the CPU caches) slowest.

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

Devices. `from_run` / `from_pretrained` load the model onto `device` (auto: CUDA, then MPS, then the CPU; cpu,
cuda, cuda:N, mps; train.device.resolve_device) and `autocast` picks the dtype it samples in (None: fp32). The
engine moves contexts and calendar ids to the model's device; sampled ids come back to the CPU. A Forecaster built
without a device or autocast of its own (inside evaluate, calibrate, backtest, the pipeline) takes those of the
enclosing `sampling_on(device, autocast)` block: how a command's --device and --dtype reach them.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..config import check_bool, check_int, check_path, check_temperature, show
from ..config.schema import SIDE_CHANNELS
from ..data import iso, load_prices, parse_time
from ..data.calendar import calendar_ids, future_times
from ..data.windows import run_cutoffs, timestamps_ns
from ..errors import CheckpointError, ConfigError, DataError, OutputExistsError, PriceGPTError
from ..fileio import OUTPUT_MARKER, atomic_dir, json_ready, write_json
from ..model import GPT, generate
from ..rundir import RunDir
from ..runs import Run, load_run
from ..tokenizer import bar_features, load_tokenizer
from ..tokenizer.side import patch_side, side_values
from ..train.checkpoint import BUILTIN_MODELS
from ..train.checkpoint import resolve_init as resolve_model
from ..train.device import resolve_device
from .frames import DF_QUANTILE_LEVELS, check_levels, paths_frame, paths_html, quantile_frame, target_times, utc_index
from .risk import QUANTILE_LEVELS, quantile_table
from .sampling import (
    check_paths_memory,
    check_sampling,
    check_symbols,
    origin_seed,
    progress_bar,
    symbol_list,
)

KV_CACHE_BUDGET_BYTES = 512 * 2**20  # bounds the KV cache (and so memory) of one engine call
ROWS_PER_CALL = 4096  # sample rows (origins x samples) one engine call aims at; see the module docstring
HIDDEN_WINDOWS_PER_CALL = 2048  # whole context windows per forward pass of the heads (`_last_hidden`)
KIND = "pricegpt.forecaster"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
MODEL_DIR, TOKENIZER_DIR = "model", "tokenizer"
DEFAULT_MODEL = "pricegpt-small"  # the pretrained forecaster of `forecast` without --run
# (device, autocast) of Forecasters built without their own: set by `sampling_on`
_PLACEMENT: contextvars.ContextVar[tuple[torch.device | None, torch.dtype | None]] = contextvars.ContextVar(
    "pricegpt_sampling_placement", default=(None, None))


@contextlib.contextmanager
def sampling_on(device: str | torch.device | None = None, autocast: torch.dtype | None = None):
    """Within the block, a Forecaster built without a device (or autocast) of its own moves its model to `device`
    (a torch.device or a name `resolve_device` reads, resolved here, so an unavailable one fails before any work)
    and samples under `autocast`: the --device / --dtype of a command whose library call builds its forecasters."""
    token = _PLACEMENT.set((_device(device), autocast))
    try:
        yield
    finally:
        _PLACEMENT.reset(token)


def _device(device: str | torch.device | None) -> torch.device | None:
    return device if device is None or isinstance(device, torch.device) else resolve_device(device, "device")


@dataclass
class ForecastPaths:
    """Sampled futures of several symbols from one origin each.

    symbols (n,), origins (n,) the last context bar's timestamp, last_close (n,) the close at the origin (NaN
    when unknown), paths (n, samples, horizon) float64 decoded per-bar log returns, future_timestamps (n,) the
    end times (UTC DatetimeIndex, `horizon` each) of the future bars the paths were decoded for (None: unknown).
    In a notebook it shows as a compact table (`_repr_html_`)."""

    symbols: list[str]
    origins: list[pd.Timestamp]
    last_close: np.ndarray
    paths: np.ndarray
    future_timestamps: list[pd.DatetimeIndex] | None = field(default=None)

    @property
    def cumulative(self) -> np.ndarray:
        """(n, samples, horizon) cumulative log return from the origin after each bar."""
        return np.cumsum(self.paths, axis=-1)

    def for_symbol(self, symbol: str) -> np.ndarray:
        """(samples, horizon) per-bar log returns of one symbol."""
        return self.paths[self.symbols.index(symbol)]

    def to_frame(self) -> pd.DataFrame:
        """One row per (symbol, sample, step): symbol, sample, step, timestamp, log_return, cumulative, price."""
        return paths_frame(self)

    def _repr_html_(self) -> str:
        return paths_html(self)


class Forecaster:
    """A trained model and its tokenizer ready to forecast: `Forecaster.from_run(dir)`, `Forecaster(load_run(dir))`
    or `Forecaster.from_pretrained(dir)`."""

    def __init__(self, run: Run, autocast: torch.dtype | None = None, device: str | torch.device | None = None):
        """autocast: sample under torch.autocast in this dtype (e.g. torch.bfloat16: faster on CPUs with bf16
        matrix instructions, other paths for the same seed, and an origin's paths then also depend on which
        origins share its engine call, bf16 matrix products not being row-by-row reproducible across batch sizes;
        benchmarks/README.md compares its CRPS). None (fp32): an origin's paths never depend on the batching.
        device: move the run's model there (None: where it is). Either None: the enclosing `sampling_on`'s."""
        if run.tokenizer is None:
            raise PriceGPTError(f"{run.dir} has no tokenizer (it was trained on a bare token file); its tokens "
                                "cannot be decoded to returns, so it cannot forecast prices")
        if autocast not in (None, torch.bfloat16, torch.float16):
            raise ConfigError(f"autocast must be None (fp32), torch.bfloat16 or torch.float16, got {show(autocast)}")
        default_device, default_autocast = _PLACEMENT.get()
        device = _device(device) or default_device
        if device is not None and isinstance(run.model, torch.nn.Module):
            run.model.to(device)  # in place: the Run (its token metrics too) then computes there
        self.run = run
        self.model = run.model
        self.tokenizer = run.tokenizer
        self.autocast = autocast if autocast is not None else default_autocast

    @classmethod
    def from_run(cls, run_dir: str | os.PathLike, device: str | torch.device | None = None,
                 autocast: torch.dtype | None = None) -> Forecaster:
        """The run's best model on `device` (None: the enclosing `sampling_on`'s, else the CPU); a run directory
        with ensemble.json (`pipeline --ensemble K`) forecasts as the EnsembleForecaster of its members."""
        run = load_run(check_path(run_dir, "run_dir"), device=_load_device(device), need_tokenizer=True)
        return forecaster_of(run, autocast=autocast) if cls is Forecaster else cls(run, autocast=autocast)

    @property
    def device(self) -> torch.device:
        """Where the model samples (the CPU for a model without parameters)."""
        parameter = next(self.model.parameters(), None) if isinstance(self.model, torch.nn.Module) else None
        return torch.device("cpu") if parameter is None else parameter.device

    @property
    def patch_len(self) -> int:
        return self.tokenizer.patch_len

    @property
    def temperature(self) -> float:
        return float(self.run.calibration.get("temperature", 1.0))

    def features(self, frame: pd.DataFrame) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per symbol: (timestamps (n,) datetime64[ns], features (n, n_features)); column 0 is the log return.
        For a side model, the tokenizer's features are followed by the bars' side values (range, gap, volume;
        tokenizer/side.py; NaN where unknown or where the frame lacks open, high and low)."""
        features = bar_features(frame, self.tokenizer.config.features)
        if not self.uses_side:
            return features
        values = side_values(frame)
        return {s: (times, np.concatenate([x, np.full((len(x), SIDE_CHANNELS), np.nan) if values is None
                                           else values[s].astype(np.float64)], axis=1))
                for s, (times, x) in features.items()}

    @property
    def uses_side(self) -> bool:
        """Whether the model reads side channels: its contexts then carry side values after the tokenizer's
        features (`features`); a context without them forecasts with unknown side inputs."""
        return bool(getattr(self.model.config, "side", False))

    def context_patches(self, horizon: int) -> int:
        """How many patches of context a forecast of `horizon` bars uses when the history allows."""
        n_new = math.ceil(horizon / self.patch_len)
        return max(1, self.model.config.sequence_len - n_new)

    # ------------------------------------------------------------------------------------------- sampling
    def sample_returns(self, contexts, symbols, horizon: int, num_samples: int, *, seed: int = 0,
                       temperature: float | None = None, context_ends=None, progress: bool | None = None,
                       label: str = "sampling", context_times=None, target_times=None) -> np.ndarray:
        """Per-bar log-return paths of many origins: (origins, num_samples, horizon) float64.

        contexts: a list of arrays (bars,) or (bars, n_features) of raw features up to each origin, or one
        array (origins, bars[, n_features]); symbols: one symbol per origin (for the scale); context_ends: the
        timestamp of each context's last bar. Each origin is sampled with a seed derived from (seed, symbol,
        context end) (without context_ends: the number of context bars), so its paths do not depend on which
        other origins are asked for, their order or how many share an engine call (see `origin_seed`).
        progress: a progress bar named `label` (None: in a terminal or a notebook; see `show_progress`).
        context_times: per origin, the end times (datetime64[ns] UTC) of its context bars: needed by a seasonally
        scaled symbol and read by a calendar model (without them a calendar model runs without calendar input).
        target_times: per origin, the end times of the bars to forecast (at least `horizon`); default: inferred
        from the context's own calendar (data.calendar.future_times: its bar interval and trading slots).
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
        n_new = math.ceil(horizon / self.patch_len)
        n_bars = n_new * self.patch_len
        contexts, sides, ctx_times, tgt_times, profiles, tokens = self._prepare(
            contexts, symbols, horizon, context_times, target_times, n_bars)
        # future bar times, inferred from each context's calendar, only where something reads them
        tgt_times = [future_times(c, n_bars) if g is None and c is not None and len(c) and (p is not None
                     or self.uses_calendar) else g for c, g, p in zip(ctx_times, tgt_times, profiles)]
        states = [self.tokenizer.origin_state(np.asarray(c, dtype=np.float64), s, times=t, profile=p)
                  for c, s, t, p in zip(contexts, symbols, ctx_times, profiles)]
        out = np.empty((len(contexts), num_samples, horizon))
        with progress_bar(len(contexts), progress, label) as bar:
            for jobs in self._engine_calls(tokens, symbols, keys, num_samples, seed):
                idx = torch.as_tensor(np.stack([tokens[i] for i, _, _ in jobs]), dtype=torch.long)
                rows = jobs[0][2].stop - jobs[0][2].start
                extra = self._model_inputs([i for i, _, _ in jobs], tokens, ctx_times, tgt_times, sides, n_new,
                                           symbols)
                generated = generate(self.model, idx, n_new, num_samples=rows, temperature=temperature,
                                     seed=[job_seed for _, job_seed, _ in jobs], autocast=self.autocast, **extra)
                generated = generated.cpu().numpy()
                for (i, job_seed, samples), paths in zip(jobs, generated):
                    # a running scale rolls forward on each path's own returns from the origin's real state;
                    # within-code draws come from the job's own seed, so batching never changes them
                    out[i, samples] = self.tokenizer.decode_paths(
                        paths, symbols[i], states[i], rng=np.random.default_rng(job_seed),
                        times=tgt_times[i], profile=profiles[i])[:, :horizon]
                bar.update(sum(samples.stop == num_samples for _, _, samples in jobs))
        return out

    @property
    def has_vol_head(self) -> bool:
        """Whether the model has a volatility head (model.vol_bars): `predict_variance` then forecasts."""
        return bool(getattr(self.model.config, "vol_bars", 0))

    def predict_variance(self, context_frame, horizon_bars: int) -> pd.DataFrame:
        """The volatility head's forecast of the variance of the `horizon_bars`-bar log return after the last bar
        of each symbol in `context_frame` (a price frame, file, folder or sample:NAME): one row per symbol with
        `origin` (the last bar's time), `variance` and `volatility` (its square root). One forward pass per
        symbol, no sampling; a model without a head is a ConfigError."""
        horizon_bars = check_int(horizon_bars, "horizon_bars", 1, 10**6)
        symbols, contexts, times, frame = self._last_origins(context_frame)
        variance = self.variance_of_contexts(contexts, symbols, horizon_bars, context_times=times)
        return frame.assign(variance=variance, volatility=np.sqrt(variance))

    @torch.no_grad()
    def variance_of_contexts(self, contexts, symbols, horizon: int, *, context_times=None) -> np.ndarray:
        """The volatility head's forecast of the variance of each origin's `horizon`-bar cumulative log return:
        (origins,) float64. Arguments as `sample_returns`'s; one forward pass over each context, no sampling.

        The head predicts the mean squared return of the next model.vol_bars bars in units of the volatility scale
        at the origin (the s0 of `decode_paths`), so the forecast is horizon x s0^2 x exp(head) (x the mean squared
        seasonal factor of the target bars for a seasonally scaled symbol); for a horizon other than vol_bars the
        per-bar level is carried over unchanged, an approximation."""
        if not self.has_vol_head:
            raise ConfigError("this model has no volatility head; train one with --set model.vol_bars=N")
        horizon = check_int(horizon, "horizon", 1, 10**6)
        symbols = [str(s) for s in symbols]
        contexts, sides, ctx_times, _, profiles, tokens = self._prepare(list(contexts), symbols, horizon,
                                                                        context_times, None, horizon)
        hidden = self._last_hidden(tokens, ctx_times, sides, symbols)
        out = self.model.log_variance(hidden).double().cpu().numpy()
        for i, (c, s, t, p) in enumerate(zip(contexts, symbols, ctx_times, profiles)):
            s0 = self.tokenizer.origin_state(np.asarray(c, dtype=np.float64), s, times=t, profile=p)
            seasonal = 1.0
            if p is not None and t is not None and len(t):
                seasonal = float(np.mean(p.factors(future_times(t, horizon)) ** 2))
            out[i] = horizon * s0 ** 2 * math.exp(out[i]) * seasonal
        return out

    @property
    def has_shock_head(self) -> bool:
        """Whether the model has a shock head (model.shock_bins): `predict_shock` then forecasts."""
        return bool(getattr(self.model.config, "shock_bins", 0))

    def predict_shock(self, context_frame) -> pd.DataFrame:
        """The shock head's forecast of the size class of the next bar's absolute shock after the last bar of each
        symbol in `context_frame` (a price frame, file, folder or sample:NAME): one row per symbol with `origin`
        and `p_class_0` .. `p_class_{K-1}` (classes of increasing |return| / volatility scale, each holding an
        equal share of the tokenizer's codes; train/shock_targets.py). One forward pass per symbol; a model without
        a head is a ConfigError."""
        if not self.has_shock_head:
            raise ConfigError("this model has no shock head; train one with --set model.shock_bins=K")
        symbols, contexts, times, frame = self._last_origins(context_frame)
        _, sides, ctx_times, _, _, tokens = self._prepare(contexts, symbols, 1, times, None, 1)
        with torch.no_grad():
            probs = torch.softmax(self.model.shock_logits(self._last_hidden(tokens, ctx_times, sides, symbols)), dim=-1)
        for k, column in enumerate(probs.double().cpu().numpy().T):
            frame[f"p_class_{k}"] = column
        return frame

    def _last_origins(self, context_frame) -> tuple[list[str], list, list, pd.DataFrame]:
        """The heads' forecasts after the last bar of each symbol of `context_frame`: (symbols in order, their
        features, their bar times, a frame of `symbol` and `origin` (the last bar's time) to add the forecasts to)."""
        per_symbol = self.features(load_prices(context_frame))
        symbols = sorted(per_symbol)
        origins = [pd.Timestamp(per_symbol[s][0][-1]).tz_localize("UTC") for s in symbols]
        return (symbols, [per_symbol[s][1] for s in symbols], [per_symbol[s][0] for s in symbols],
                pd.DataFrame({"symbol": symbols, "origin": origins}))

    def _last_hidden(self, tokens, ctx_times, sides, symbols) -> torch.Tensor:
        """(origins, E) the trunk's final hidden state at each context's last token, contexts of equal length
        batched (the heads read it)."""
        device = self.device
        out = torch.empty(len(tokens), self.model.config.n_embd)
        by_length: dict[int, list[int]] = {}
        for i, ids in enumerate(tokens):
            by_length.setdefault(len(ids), []).append(i)
        self.model.eval()
        for members in by_length.values():
            for lo in range(0, len(members), HIDDEN_WINDOWS_PER_CALL):
                batch = members[lo:lo + HIDDEN_WINDOWS_PER_CALL]
                extra = {name: values.to(device) for name, values in
                         self._model_inputs(batch, tokens, ctx_times, None, sides, 0, symbols).items()}
                idx = torch.as_tensor(np.stack([tokens[i] for i in batch]), dtype=torch.long, device=device)
                with (torch.autocast(device.type, dtype=self.autocast) if self.autocast is not None
                      else contextlib.nullcontext()):
                    out[batch] = self.model.hidden(idx, **extra)[:, -1].float().cpu()
        return out.to(device)

    def sample_cumulative(self, contexts, symbols, horizon: int, num_samples: int, *, seed: int = 0,
                          temperature: float | None = None, context_ends=None, progress: bool | None = None,
                          label: str = "sampling", context_times=None, target_times=None) -> np.ndarray:
        """Like `sample_returns`, as cumulative log returns from the origin: (origins, num_samples, horizon)."""
        return np.cumsum(self.sample_returns(contexts, symbols, horizon, num_samples, seed=seed,
                                             temperature=temperature, context_ends=context_ends, progress=progress,
                                             label=label, context_times=context_times,
                                             target_times=target_times), axis=-1)

    @property
    def uses_times(self) -> bool:
        """Whether bar times change this forecaster's paths (seasonal scaling or a calendar model): callers with
        the times at hand pass them as `context_times`."""
        return bool(self.tokenizer.seasonal) or self.uses_calendar

    def _times(self, contexts, symbols, context_times, target_times, n_bars: int) -> tuple[list, list]:
        """Per origin: its context bar times (or None) and the caller's end times of the n_bars it decodes (or
        None: inferred by the caller where needed)."""
        n = len(contexts)
        if context_times is None:
            needing = [s for s in symbols if self.tokenizer.needs_times(s)]
            if needing:
                raise DataError(f"symbol {show(needing[0])} is seasonally scaled by this forecaster's tokenizer: "
                                "pass context_times (the bar times of each context), or forecast from a price "
                                "frame with sample_paths")
            return [None] * n, [None] * n
        context_times = [np.asarray(t, dtype="datetime64[ns]") for t in context_times]
        assert len(context_times) == n, f"{len(context_times)} context times for {n} contexts"
        for t, c in zip(context_times, contexts):
            assert len(t) == len(c), f"{len(t)} context times for a context of {len(c)} bars"
        if target_times is None:
            target_times = [None] * n
        else:
            target_times = [np.asarray(t, dtype="datetime64[ns]") for t in target_times]
            assert len(target_times) == n, f"{len(target_times)} target times for {n} contexts"
            short = [len(t) for t in target_times if len(t) < n_bars]
            if short:
                raise DataError(f"target_times must give the {n_bars} future bar times of each origin (a whole "
                                f"number of patches), got {short[0]}")
        return context_times, target_times

    @property
    def uses_symbol(self) -> bool:
        """Whether the model has a symbol embedding (model.symbol_embedding): each origin then reads its symbol's
        row, or the "unknown" row for a symbol the model never saw."""
        return bool(getattr(self.model.config, "symbol_embedding", False))

    @property
    def uses_calendar(self) -> bool:
        """Whether the model reads calendar ids (model.calendar)."""
        return bool(getattr(self.model.config, "calendar", False))

    def _prepare(self, contexts: list, symbols: list[str], horizon: int, context_times, target_times, n_bars: int):
        """What a forecast from each context needs before the model runs: (the contexts' tokenizer features, their
        side values or None (`_split_side`), context times, the caller's target times (`_times`), seasonal
        profiles, context token ids)."""
        contexts, sides = self._split_side(contexts)
        ctx_times, tgt_times = self._times(contexts, symbols, context_times, target_times, n_bars)
        # each origin's seasonal profile: the symbol's own, or for a symbol the tokenizer never saw, one fit on
        # its context alone (a pretrained model on a new intraday series)
        profiles = [self.tokenizer.profile_for(s, c, t) for c, s, t in zip(contexts, symbols, ctx_times)]
        tokens = self._context_tokens(contexts, symbols, horizon, ctx_times, profiles)
        return contexts, sides, ctx_times, tgt_times, profiles, tokens

    def _model_inputs(self, origins: list[int], tokens, ctx_times, tgt_times, sides, n_new: int,
                      symbols: list[str]) -> dict:
        """The inputs of one model call over `origins` (CPU tensors) besides the tokens: calendar ids for a calendar
        model given context times, side-channel ids for a side model, each (len(origins), tokens + n_new, ...);
        each origin's symbol row (len(origins),) for a model with asset identity (-1, "unknown", for a symbol it
        was not trained on)."""
        extra = {}
        if self.uses_symbol:
            extra["symbol"] = self.model.symbol_ids([symbols[i] for i in origins])
        if self.uses_calendar and ctx_times[origins[0]] is not None:
            extra["calendar"] = torch.as_tensor(np.stack([
                self._calendar(ctx_times[i], None if tgt_times is None else tgt_times[i], len(tokens[i]), n_new)
                for i in origins]))
        if sides is not None:
            extra["side"] = torch.stack([self._side(sides[i], len(tokens[i]), n_new) for i in origins])
        return extra

    def _calendar(self, context_times: np.ndarray, target_times: np.ndarray | None, n_context: int, n_new: int):
        """(n_context + n_new, 2) [time of day, weekday] of each token's last bar: the context's last n_context
        patches (ending at the origin) and the n_new generated ones (target_times may be None when n_new is 0)."""
        P = self.patch_len
        context_ends = context_times[len(context_times) - 1 - P * np.arange(n_context)[::-1]]
        ends = context_ends if n_new == 0 else np.concatenate([context_ends, target_times[P - 1:n_new * P:P]])
        tod, dow = calendar_ids(ends)
        return np.stack([tod, dow], axis=-1)

    def _split_side(self, contexts: list) -> tuple[list, list | None]:
        """(the contexts' tokenizer features, their side values (bars, 3) or None) for a side model's contexts
        of tokenizer features followed by side values; a context without the side columns gets unknown values.
        (contexts, None) for other models."""
        if not self.uses_side:
            return contexts, None
        n = self.tokenizer.n_features
        features, sides = [], []
        for c in contexts:
            x = np.asarray(c, dtype=np.float64)
            x = x[:, None] if x.ndim == 1 else x
            if x.shape[1] == n + SIDE_CHANNELS:
                features.append(x[:, :n])
                sides.append(x[:, n:])
            else:
                features.append(c)
                sides.append(np.full((len(x), SIDE_CHANNELS), np.nan))
        return features, sides

    def _side(self, values: np.ndarray, n_context: int, n_new: int) -> torch.Tensor:
        """(n_context + n_new, 3) side-channel ids: those of the context's last n_context patches (ending at the
        origin; side values averaged over each patch's bars), then unknown (-1) for the n_new generated ones."""
        P = self.patch_len
        context = patch_side(values[len(values) - n_context * P:], P)
        ids = self.model.side_ids(context)
        return torch.cat([ids, torch.full((n_new, SIDE_CHANNELS), -1, dtype=torch.long)])

    def _context_tokens(self, contexts, symbols, horizon: int, context_times=None, profiles=None
                        ) -> list[np.ndarray]:
        """Each context's last whole patches, ending at the origin, as token ids (module docstring, steps 1-2)."""
        P, max_patches = self.patch_len, self.context_patches(horizon)
        tokens = []
        context_times = [None] * len(contexts) if context_times is None else context_times
        profiles = [None] * len(contexts) if profiles is None else profiles
        for context, symbol, times, profile in zip(contexts, symbols, context_times, profiles):
            x = np.asarray(context, dtype=np.float64)
            x = x[:, None] if x.ndim == 1 else x
            k = min(max_patches, len(x) // P)
            if k < 1:
                raise DataError(f"{symbol}: a forecast needs at least {P} bars of history before the origin "
                                f"(one patch), got {len(x)}")
            # each patch scaled by the (causal) scale at its first bar, from the whole history before it
            tokens.append(np.asarray(self.tokenizer.encode_history(x, symbol, n_patches=k, times=times,
                                                                   profile=profile)))
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
                     temperature: float | None = None, symbols: list[str] | None = None, future_timestamps=None,
                     progress: bool | None = None) -> ForecastPaths:
        """Paths for the `horizon_bars` bars after the last bar of each symbol in `context_frame` (a price frame,
        file, folder or sample:NAME: whatever `load_prices` reads).

        future_timestamps: the end times of the future bars (a dict symbol -> times, or one sequence for every
        symbol; exactly horizon_bars each); default: each series' own calendar (frames.py). The paths are decoded
        for these times (seasonal scaling, calendar models) and carry them (`.future_timestamps`, `.to_frame()`).
        progress: a progress bar (None: in a terminal or a notebook, not in logs)."""
        check_sampling(horizon_bars, num_samples, seed, horizon_flag="horizon_bars (--horizon)")
        context_frame = load_prices(context_frame)
        per_symbol = self.features(context_frame)
        symbols = sorted(per_symbol) if symbols is None else symbol_list(symbols)
        check_symbols(symbols, list(per_symbol))
        last_close = context_frame.groupby("symbol")["close"].last()
        ends = [per_symbol[s][0][-1] if len(per_symbol[s][0]) else np.datetime64("NaT") for s in symbols]
        times = [per_symbol[s][0] for s in symbols]
        check_paths_memory(len(symbols), num_samples, horizon_bars)  # before the future times: they cost too
        # the times decoded for (whole patches) and those reported are the same: the first horizon_bars of them
        targets = target_times(times, symbols, horizon_bars, math.ceil(horizon_bars / self.patch_len) * self.patch_len,
                               future_timestamps)
        paths = self.sample_returns([per_symbol[s][1] for s in symbols], symbols, horizon_bars, num_samples,
                                    seed=seed, temperature=temperature, context_ends=ends, progress=progress,
                                    context_times=times, target_times=targets)
        origins = [pd.Timestamp(end).tz_localize("UTC") for end in ends]
        return ForecastPaths(symbols, origins, np.array([float(last_close[s]) for s in symbols]), paths,
                             future_timestamps=[utc_index(t[:horizon_bars]) for t in targets])

    def predict_quantiles(self, context_frame, horizon_bars: int, levels=QUANTILE_LEVELS,
                          num_samples: int = 512, *, seed: int = 0, temperature: float | None = None,
                          symbols: list[str] | None = None, progress: bool | None = None) -> pd.DataFrame:
        """One row per symbol and horizon step (1..H): quantiles of the cumulative log return (`return_qL`)
        and of the price (`price_qL` = last close * exp(return quantile))."""
        levels = check_levels(levels)
        fc = self.sample_paths(context_frame, horizon_bars, num_samples, seed=seed, temperature=temperature,
                               symbols=symbols, progress=progress)
        return quantile_table(fc, levels)

    def predict_df(self, df, horizon: int, quantile_levels=DF_QUANTILE_LEVELS, num_samples: int = 512, *,
                   seed: int = 0, temperature: float | None = None, symbols: list[str] | None = None,
                   future_timestamps=None, progress: bool | None = None) -> pd.DataFrame:
        """One row per symbol and future bar: symbol, timestamp (the bar's end, UTC), mean and quantiles ("0.1",
        ...) of the cumulative log return from the last bar, price_mean and price_0.1, ... (frames.py). `df`: a
        price frame or anything `load_prices` reads; future_timestamps and progress as in `sample_paths`."""
        levels = check_levels(quantile_levels)
        check_sampling(horizon, num_samples, seed, horizon_flag="horizon")
        fc = self.sample_paths(df, horizon, num_samples, seed=seed, temperature=temperature, symbols=symbols,
                               future_timestamps=future_timestamps, progress=progress)
        return quantile_frame(fc, levels)

    # ------------------------------------------------------------------------------------ one folder
    def save_pretrained(self, directory: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write the forecaster folder (module docstring), built in a temporary folder and renamed into place.

        An existing non-empty `directory` is an OutputExistsError unless `overwrite` and it is a forecaster folder
        pricegpt wrote (never a run directory or anything else)."""
        check_bool(overwrite, "overwrite")
        directory = Path(check_path(directory, "directory"))
        if directory.is_dir() and not directory.is_symlink() and not any(directory.iterdir()):
            directory.rmdir()  # an empty folder holds nothing to protect
        train_end, val_end = run_cutoffs(self.run)
        config = {"kind": KIND, "format_version": FORMAT_VERSION, "temperature": self.temperature,
                  "calibration": json_ready(self.run.calibration),
                  "train_end": None if train_end is None else iso(train_end),
                  "val_end": None if val_end is None else iso(val_end),
                  "horizon": self.run.meta.get("horizon"), "tokenizer_hash": self.tokenizer.hash}
        if overwrite and directory.exists() and not _is_forecaster_folder(directory):
            raise OutputExistsError(f"{directory} exists and is not a forecaster folder; overwrite=True replaces "
                                    "only a folder written by save_pretrained: choose another directory")
        with atomic_dir(directory, overwrite=overwrite) as tmp:
            self.model.save_pretrained(tmp / MODEL_DIR)
            self.tokenizer.save_pretrained(tmp / TOKENIZER_DIR)
            write_json(tmp / CONFIG_FILE, config)
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, device: str | torch.device | None = None,
                        autocast: torch.dtype | None = None) -> Forecaster:
        """Load a folder written by `save_pretrained`, or a built-in pretrained model by name (BUILTIN_MODELS:
        "pricegpt-small", shipped inside the package); a missing or damaged file is a PriceGPTError naming it.
        device, autocast: as in `from_run`."""
        device = _load_device(device)
        directory = resolve_model(directory)
        if not directory.is_dir():
            raise CheckpointError(f"forecaster folder {directory} not found; write one with "
                                  "Forecaster.save_pretrained(DIR), or load a built-in model: "
                                  f"{', '.join(BUILTIN_MODELS)}")
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
        return cls(Run(dir=directory, model=model, tokenizer=tokenizer, meta=meta, calibration=calibration,
                       pretrained=True), autocast=autocast)


def _is_forecaster_folder(directory: Path) -> bool:
    """Whether `directory` holds a forecaster folder and nothing else (its config, model, tokenizer, marker)."""
    try:
        names = {p.name for p in directory.iterdir()} if directory.is_dir() and not directory.is_symlink() else None
        kind = json.loads((directory / CONFIG_FILE).read_text()).get("kind") if names else None
    except (OSError, ValueError, AttributeError):
        return False
    return kind == KIND and names <= {CONFIG_FILE, MODEL_DIR, TOKENIZER_DIR, OUTPUT_MARKER}


def forecaster_of(run: Run, autocast: torch.dtype | None = None) -> Forecaster:
    """The forecaster of a loaded run: the pool of its members when its directory has ensemble.json (`pipeline
    --ensemble K`; the run itself is the first member), else the run's own model."""
    if not run.pretrained and RunDir(run.dir).ensemble.is_file():
        from .ensemble import EnsembleForecaster  # ensemble.py builds on this module, so it is imported here

        return EnsembleForecaster.of_run(run, autocast=autocast)
    return Forecaster(run, autocast=autocast)


def _load_device(device: str | torch.device | None) -> torch.device:
    """Where a model loads: `device`, else the enclosing `sampling_on`'s, else the CPU."""
    return _device(device) or _PLACEMENT.get()[0] or torch.device("cpu")


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
