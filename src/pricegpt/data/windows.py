"""Forecast windows and THE leakage rule: which bars each stage may forecast, for calibration, evaluation and
backtests alike.

The rule. A run is trained on the bars at or before `train_end`; its best checkpoint and its sampling temperature
are chosen on the validation bars (train_end, val_end]. So a stage may only forecast targets in its window:
    calibrate, val (evaluation of the val split)    every target bar in (train_end, val_end]
    test (evaluation of the test split), backtest   every target bar after val_end
`resolve_cutoffs` finds the cutoffs a stage labels the data with and its window; `check_leakage` refuses origins
outside that window with a LeakageError naming the cutoff, the data's last timestamp and what to do. Every stage
calls both, so the rule lives here only. A run that records no cutoffs (a bare model) has no window.

Which cutoffs label the data. Those the caller names (a backtest's val_end, the pipeline's splits), else the
run's (train_end from its metadata, else its tokenizer's; val_end from its metadata). When the run's do not fit
the data (a different file that has no bar in the stage's split) the data's own 70/85% cutoffs are used
instead. The window is always the run's, so such a file, or a named val_end before the run's, is refused unless
its targets lie after the run's cutoffs anyway.

Bars and origins. Per symbol, bars are indexed by their return (bar 0 is the first return). An origin is the
position `i` of its first TARGET bar: its context is bars [0, i), every bar before it, and its target bars
[i, i + H). So every context ends strictly before its target starts.
- `select_origins` (calibration, evaluation): from the split's first bar every H bars (targets do not overlap),
  the whole target inside the split, at most `max_origins` per symbol evenly spaced.
- `decision_origins` (backtest): every `every` bars from the first test bar to the last bar. The decision is taken
  at the close of bar i - 1 and its position is held from bar i on; one target bar is enough.
Both need `min_context` bars of context (one patch of the tokenizer).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..config import show
from ..errors import ConfigError, DataError, LeakageError, PriceGPTError
from .frame import SPLIT_NAMES, Splits, iso, log_returns, parse_time, time_splits

log = logging.getLogger("pricegpt")

STAGES = ("calibrate", "val", "test", "backtest")
_STAGE_SPLIT = {"calibrate": "val", "val": "val", "test": "test", "backtest": "test"}


# --------------------------------------------------------------------------------------------------- series
@dataclass
class SymbolSeries:
    """One symbol's bars in time order: timestamps (n,) datetime64[ns] (UTC) of each return, features (n, F)
    with the log return in column 0, and split labels (n,) (0 train, 1 val, 2 test)."""

    symbol: str
    timestamps: np.ndarray
    features: np.ndarray
    labels: np.ndarray

    @property
    def returns(self) -> np.ndarray:
        return self.features[:, 0]

    @property
    def train_len(self) -> int:
        """Bars in the train split; they are a prefix because bars are in time order."""
        return int(np.sum(self.labels == 0))


def symbol_series(features: dict[str, tuple[np.ndarray, np.ndarray]], splits: Splits) -> dict[str, SymbolSeries]:
    """SymbolSeries per symbol from `{symbol: (timestamps, features)}` (tokenizer.bar_features, return_features)."""
    return {s: SymbolSeries(s, times, values, splits.label(pd.to_datetime(times, utc=True)))
            for s, (times, values) in features.items()}


def return_features(frame: pd.DataFrame) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """`{symbol: (timestamps (n,) datetime64[ns], log returns (n, 1))}`: the features of a forecaster that has no
    tokenizer (bar n ends at timestamps[n])."""
    out = {}
    for symbol, group in log_returns(frame).groupby("symbol", sort=True):
        times = group["timestamp"].dt.tz_convert("UTC").dt.tz_localize(None).to_numpy(dtype="datetime64[ns]")
        out[str(symbol)] = (times, group["log_return"].to_numpy(dtype=np.float64)[:, None])
    return out


@dataclass
class Origins:
    """Forecast origins: symbols (n,) and index (n,), the position of each origin's first target bar."""

    symbols: np.ndarray
    index: np.ndarray

    @property
    def n(self) -> int:
        return len(self.index)

    def contexts(self, series: dict[str, SymbolSeries], features: dict | None = None) -> list[np.ndarray]:
        """Features of the bars before each origin (views, no copies). `features` ({symbol: (times, values)})
        lets another tokenizer's features of the same bars be used (an ablation run)."""
        if features is None:
            return [series[s].features[:i] for s, i in zip(self.symbols, self.index)]
        return [features[s][1][:i] for s, i in zip(self.symbols, self.index)]

    def context_times(self, series: dict[str, SymbolSeries]) -> list[np.ndarray]:
        """End times (datetime64[ns]) of the bars before each origin (views), parallel to `contexts`."""
        return [series[s].timestamps[:i] for s, i in zip(self.symbols, self.index)]

    def realised(self, series: dict[str, SymbolSeries], horizon: int) -> np.ndarray:
        """(n, horizon) realised cumulative log returns over each target."""
        return np.stack([np.cumsum(series[s].returns[i:i + horizon]) for s, i in zip(self.symbols, self.index)])

    def context_end(self, series: dict[str, SymbolSeries]) -> np.ndarray:
        """(n,) datetime64[ns]: the last bar of each context, where the forecast is made."""
        return np.array([series[s].timestamps[i - 1] for s, i in zip(self.symbols, self.index)],
                        dtype="datetime64[ns]")

    def target_start(self, series: dict[str, SymbolSeries]) -> np.ndarray:
        return np.array([series[s].timestamps[i] for s, i in zip(self.symbols, self.index)], dtype="datetime64[ns]")

    def target_end(self, series: dict[str, SymbolSeries], horizon: int) -> np.ndarray:
        """(n,) the last target bar of each origin (the series' last bar when the target runs past it)."""
        return np.array([series[s].timestamps[min(i + horizon, len(series[s].timestamps)) - 1]
                         for s, i in zip(self.symbols, self.index)], dtype="datetime64[ns]")

    def take(self, mask) -> Origins:
        return Origins(self.symbols[mask], self.index[mask])


def select_origins(series: dict[str, SymbolSeries], split: str, horizon: int, max_origins: int | None = None,
                   min_context: int = 1) -> Origins:
    """Non-overlapping origins of `split` whose whole target lies in it (module docstring), symbols sorted."""
    if split not in SPLIT_NAMES:
        raise ConfigError(f"split must be one of {', '.join(SPLIT_NAMES)}, got {split!r}")
    code = SPLIT_NAMES.index(split)
    symbols, index = [], []
    for symbol in sorted(series):
        labels = series[symbol].labels
        in_split = np.flatnonzero(labels == code)
        if len(in_split) == 0:
            continue
        first = max(int(in_split[0]), min_context)
        last = int(in_split[-1]) - horizon + 1  # the last start whose whole target stays inside the split
        candidates = np.arange(first, last + 1, horizon)
        if max_origins is not None and len(candidates) > max_origins:
            candidates = candidates[np.unique(np.linspace(0, len(candidates) - 1, max_origins).round().astype(int))]
        symbols += [symbol] * len(candidates)
        index += candidates.tolist()
    return Origins(np.array(symbols, dtype=object), np.array(index, dtype=np.int64))


def decision_origins(series: dict[str, SymbolSeries], every: int, min_context: int = 1) -> Origins:
    """Walk-forward origins: every `every` bars from each symbol's first test bar up to its last bar (module
    docstring); the decision of origin i is taken at the close of bar i - 1."""
    symbols, index = [], []
    for symbol in sorted(series):
        test = np.flatnonzero(series[symbol].labels == SPLIT_NAMES.index("test"))
        if len(test) == 0:
            continue
        candidates = np.arange(max(int(test[0]), min_context), len(series[symbol].labels), every)
        symbols += [symbol] * len(candidates)
        index += candidates.tolist()
    return Origins(np.array(symbols, dtype=object), np.array(index, dtype=np.int64))


# -------------------------------------------------------------------------------------------------- cutoffs
@dataclass(frozen=True)
class Cutoffs:
    """What `resolve_cutoffs` decided for one stage.

    splits: the cutoffs the data's bars are labelled with; own: True when those are the data's own 70/85%
    cutoffs because the requested ones did not fit; window: (after, until) the stage's targets must lie in
    after < bar <= until (None: unbounded), with window_names saying which cutoff each end is; data_end: the
    data's last timestamp."""

    stage: str
    splits: Splits
    own: bool
    window: tuple[pd.Timestamp | None, pd.Timestamp | None]
    window_names: tuple[str, str]
    data_end: pd.Timestamp

    @property
    def split(self) -> str:
        return _STAGE_SPLIT[self.stage]


def run_cutoffs(run) -> tuple[pd.Timestamp | None, pd.Timestamp | None]:
    """(train_end, val_end) a run was fit and selected with: its metadata's, the tokenizer's train_end as a
    fallback; None where the run does not record one."""
    meta = getattr(run, "meta", None) or {}
    tokenizer_config = getattr(getattr(run, "tokenizer", None), "config", None)
    train_end = meta.get("train_end") or getattr(tokenizer_config, "train_end", None)
    val_end = meta.get("val_end")
    return (None if train_end is None else parse_time(train_end, "the run's train_end"),
            None if val_end is None else parse_time(val_end, "the run's val_end"))


def init_data_cutoff(run) -> pd.Timestamp | None:
    """The data cutoff of the pretrained model a run was fine-tuned from (its meta's "init"), or None."""
    init = (getattr(run, "meta", None) or {}).get("init")
    cutoff = init.get("data_cutoff") if isinstance(init, dict) else None
    return None if cutoff is None else parse_time(cutoff, "the init's data_cutoff")


def resolve_cutoffs(frame: pd.DataFrame, stage: str, run=None, *, train_end=None, val_end=None) -> Cutoffs:
    """THE cutoffs of `stage` (calibrate | val | test | backtest) for `frame`: the explicit train_end / val_end
    where given (never replaced), else the run's, else (or when the run's leave the stage's split without a bar
    of this data) the data's own; and the stage's window from the run's cutoffs (module docstring)."""
    if stage not in STAGES:
        raise ConfigError(f"stage must be one of {', '.join(STAGES)}, got {stage!r}")
    if len(frame) == 0:
        raise DataError("no price data: the frame is empty")
    run_train_end, run_val_end = run_cutoffs(run)
    split = _STAGE_SPLIT[stage]
    explicit = train_end is not None or val_end is not None
    seen_until = run_val_end if run_val_end is not None else run_train_end
    # zero-shot: the model never saw a bar of this data (a pretrained model on a later series), so the data's own
    # cutoffs (or the caller's) split it for the baselines, the temperature and the test, and bound the stages'
    # windows, as for a run trained on it; nothing of it can have leaked into the model
    zero_shot = seen_until is not None and pd.Timestamp(frame["timestamp"].min()) > seen_until
    if explicit:  # the caller's cutoffs are never replaced: a split without bars is refused later
        splits = _splits(frame, None if train_end is None else parse_time(train_end, "train_end"),
                         None if val_end is None else parse_time(val_end, "val_end"))
        own = False
    else:
        splits, own = None, zero_shot
        if not zero_shot and (run_train_end is not None or run_val_end is not None):
            try:
                splits = _splits(frame, run_train_end, run_val_end)
            except PriceGPTError as err:
                log.info(f"{stage}: the run's cutoffs do not fit this data ({err}); using the data's own")
            if splits is not None and not _has_bars(frame, splits, split):
                log.warning(f"{stage}: the data has no {split} bars under the run's cutoffs (train_end "
                            f"{iso(splits.train_end)}, val_end {iso(splits.val_end)}); using the data's own cutoffs")
                splits = None
            own = splits is None
        if splits is None:
            splits = time_splits(frame)
    if zero_shot:
        window, names = (((splits.val_end, None), ("val_end", "")) if split == "test" else
                         ((splits.train_end, splits.val_end), ("train_end", "val_end")))
    elif split == "test":
        after = run_val_end if run_val_end is not None else run_train_end
        names = ("val_end" if run_val_end is not None else "train_end", "")
        init_cutoff = init_data_cutoff(run)
        if init_cutoff is not None and (after is None or init_cutoff > after):
            # a fine-tuned run: the pretrained model it started from saw bars up to its own cutoff
            after, names = init_cutoff, ("init data_cutoff", "")
        window = (after, None)
    else:
        window, names = (run_train_end, run_val_end), ("train_end", "val_end")
    return Cutoffs(stage, splits, own, window, names, pd.Timestamp(frame["timestamp"].max()))


def _splits(frame: pd.DataFrame, train_end: pd.Timestamp | None, val_end: pd.Timestamp | None) -> Splits:
    if train_end is None:  # only val_end is known (a backtest's): everything up to it counts as seen
        val_end = pd.Timestamp(val_end).floor("s")
        return Splits(min(time_splits(frame).train_end, val_end), val_end)
    return time_splits(frame, train_end=train_end, val_end=val_end)


def _has_bars(frame: pd.DataFrame, splits: Splits, split: str) -> bool:
    labels = splits.label(frame["timestamp"])
    return bool(np.any(labels == SPLIT_NAMES.index(split)))


def timestamps_ns(values) -> np.ndarray:
    """(n,) int64 nanoseconds since 1970 (UTC) of timestamps given as datetime64, Timestamps or strings (naive
    values are UTC), whatever unit pandas would infer."""
    return pd.DatetimeIndex(pd.to_datetime(np.asarray(values).ravel(), utc=True)).as_unit("ns").asi8


def _ns(ts: pd.Timestamp) -> np.datetime64:
    return np.datetime64(ts.tz_convert("UTC").tz_localize(None).as_unit("ns"))


def check_leakage(origins: Origins, series: dict[str, SymbolSeries], cutoffs: Cutoffs, horizon: int = 1,
                  allow_overlap: bool = False) -> int:
    """THE refusal: a LeakageError when any origin's target bars leave the stage's window (its first bar at or
    before the window's start, or, for calibrate / val, its last bar after val_end). Returns how many origins
    do (non-zero only with allow_overlap, for evaluation's flagged reports)."""
    after, until = cutoffs.window
    if origins.n == 0 or (after is None and until is None):
        return 0
    early = np.zeros(origins.n, dtype=bool) if after is None else origins.target_start(series) <= _ns(after)
    late = (np.zeros(origins.n, dtype=bool) if until is None
            else origins.target_end(series, horizon) > _ns(until))
    bad = int(np.sum(early | late))
    if bad == 0 or allow_overlap:
        return bad
    name_after, name_until = cutoffs.window_names
    if early.any():
        first = pd.Timestamp(origins.target_start(series)[early].min()).tz_localize("UTC")
        where = f"start at or before the run's {name_after} {iso(after)} (the first on {iso(first)})"
        why = {"train_end": "the model was trained on those bars",
               "init data_cutoff": "the pretrained model this run was fine-tuned from saw those bars"}.get(
            name_after, "the checkpoint and the sampling temperature were chosen on those bars")
    else:
        where = f"end after the run's {name_until} {iso(until)}"
        why = "those are the run's test bars, which must stay unseen until evaluation"
    todo = {"calibrate": "calibrate on the run's own data and cutoffs (its validation split)",
            "val": "evaluate the val split on the run's own data and cutoffs, or pass --allow-overlap to score "
                   "them anyway (the report is flagged)",
            "test": f"give data that extends past {iso(after) if after is not None else 'the cutoff'} (test origins "
                    "start after it), or pass --allow-overlap to score them anyway (the report is flagged)",
            "backtest": f"give data that extends past {iso(after) if after is not None else 'the cutoff'} (the "
                        "backtest trades only bars after it)"}[cutoffs.stage]
    what = {"calibrate": "calibration", "val": "validation", "test": "test", "backtest": "backtest"}[cutoffs.stage]
    raise LeakageError(f"{bad} of {origins.n} {what} origins have targets that {where}: {why}, so the "
                       f"results would be leaked. The data ends on {iso(cutoffs.data_end)}; {todo}")


def require_origins(origins: Origins, series: dict[str, SymbolSeries], cutoffs: Cutoffs, horizon: int,
                    minimum: int = 1, flag: str = "--horizon") -> None:
    """A DataError, saying how many bars the split has, when no symbol has `minimum` origins whose whole
    `horizon`-bar target is in the data: nothing runs on a split too short for the horizon."""
    complete: dict[str, int] = {}
    for s, i in zip(origins.symbols, origins.index):
        complete[s] = complete.get(s, 0) + int(i + horizon <= len(series[s].labels))
    if max(complete.values(), default=0) >= minimum:
        return
    code = SPLIT_NAMES.index(cutoffs.split)
    bars = {s: int(np.sum(series[s].labels == code)) for s in series}
    longest = max(bars, key=lambda s: bars[s], default=None)
    splits = cutoffs.splits
    span = (f"after val_end {iso(splits.val_end)}" if cutoffs.split == "test" else
            f"from train_end {iso(splits.train_end)} to val_end {iso(splits.val_end)}")
    need = "one origin" if minimum == 1 else f"{minimum} origins of one symbol"
    if longest is None or bars[longest] == 0:
        raise DataError(f"the {cutoffs.split} split ({span}) has no bars in this data, which ends on "
                        f"{iso(cutoffs.data_end)}; give data that extends further")
    raise DataError(f"the {cutoffs.split} split ({span}) has {bars[longest]} bars (symbol {show(longest)}, the "
                    "longest); "
                    f"{need} with a whole {horizon}-bar target need more: use {flag} "
                    f"{max(1, bars[longest] // minimum)} or less, or data that extends further")


def source_name(source) -> str:
    """How a price source is named in every stage's outputs: the path or sample:NAME, or the type of an in-memory
    frame."""
    return str(source) if isinstance(source, (str, os.PathLike)) else f"in-memory {type(source).__name__}"


__all__ = ["Cutoffs", "LeakageError", "Origins", "STAGES", "SymbolSeries", "check_leakage", "decision_origins",
           "require_origins", "resolve_cutoffs", "return_features", "run_cutoffs", "select_origins",
           "source_name", "symbol_series", "timestamps_ns"]
