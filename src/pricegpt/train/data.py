"""Training and validation windows cut from a token store.

A window is `sequence_len + 1` consecutive tokens of one symbol inside one split: inputs are its first
`sequence_len` tokens, targets the last `sequence_len`. Windows never cross a symbol boundary or a split
boundary, because each (symbol, split) piece is a separate segment and a window start is only drawn where the
whole window fits in its segment.

The batch of optimizer step `s` is a pure function of (seed, s): `WindowSet.sample(seed, s, n, calendar_dropout)`
(the window ids, and which windows hide their calendar). Nothing about the data order needs saving for an exact
resume, and every process of a distributed run computes the same global batch and takes its own slice of it.

Calendar. For a calendar model (model.calendar) every token also carries the [time of day, day of week] ids of its
last bar (data.calendar.calendar_ids of the store's patch_ends), gathered next to the tokens
(`WindowSet.gather_calendar`). Only a token store directory has timestamps; a plain .txt cannot train such a model.

Side channels. For a side model (model.side) every token also carries its side-channel ids (range, gap, volume;
tokenizer/side.py), read from the store's memory-mapped int8 arrays (`WindowSet.gather_side`); the trainer hides
a `train.side_dropout` fraction of them.

Asset identity. For a model with a symbol embedding (model.symbol_embedding) every window also carries its symbol's
row (`WindowSet.gather_symbol`); the trainer hides a `train.symbol_dropout` fraction of them.

Memory. The windows are gathered straight from the store's memory-mapped uint8/uint16 arrays (only a batch is ever
converted to int64), and a store's calendar ids are computed per gathered batch from its memory-mapped end times
(`EndCalendar`), so training takes no memory per token beyond the pages of the maps.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..config.schema import SIDE_CHANNELS
from ..data.calendar import calendar_ids
from ..errors import DataError
from ..tokenizer import TokenStore

log = logging.getLogger("pricegpt")

MIN_CONTEXT = 16  # a window shorter than this many context tokens is not worth training on


class EndCalendar:
    """The (n, 2) [time of day, day of week] calendar ids of tokens whose last bars end at `ends` (int64 ns since
    1970 UTC, e.g. a store's memory-mapped patch end times), computed only for what is asked: slicing gives another
    EndCalendar, `np.asarray` the whole (n, 2) int8 array, `take(positions)` the ids at an index array."""

    def __init__(self, ends: np.ndarray):
        self.ends = ends

    def __len__(self) -> int:
        return len(self.ends)

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.ends), 2)

    def __getitem__(self, key):
        if isinstance(key, slice):
            return EndCalendar(self.ends[key])
        return self.take(np.asarray(key))

    def take(self, positions: np.ndarray) -> np.ndarray:
        """int8 ids of shape positions.shape + (2,)."""
        return _calendar_of_ns(np.asarray(self.ends[positions], dtype=np.int64))

    def __array__(self, dtype=None, copy=None):
        out = _calendar_of_ns(np.asarray(self.ends, dtype=np.int64))
        return out if dtype is None else out.astype(dtype)


def _calendar_of_ns(ns: np.ndarray) -> np.ndarray:
    time_of_day, day_of_week = calendar_ids(ns.view("datetime64[ns]"))
    return np.stack([time_of_day, day_of_week], axis=-1).astype(np.int8)


class WindowSet:
    """All windows of `length` tokens lying entirely inside one of `segments` (1-D integer arrays, e.g. slices of a
    store's memory maps: they are read in place, never copied), with the tokens' calendar ids when `calendars`
    gives one per segment: an (n, 2) array or an EndCalendar.

    Window ids 0 .. num_windows-1 enumerate them segment after segment; segments shorter than a window hold none.
    """

    def __init__(self, segments: list[np.ndarray], length: int, calendars: list | None = None,
                 sides: list | None = None, names: list[str] | None = None):
        assert length >= 2, f"a window needs an input and a target token, got length {length}"
        self.length = length
        # each segment's symbol (TokenData.from_series: one segment per symbol), for a model with asset identity
        self.names = list(names) if names is not None else [str(i) for i in range(len(segments))]
        assert len(self.names) == len(segments), "one name per segment"
        self.segments = [np.asarray(s) for s in segments]  # views: a memmap stays a map
        assert all(s.ndim == 1 and s.dtype.kind in "ui" for s in self.segments), "segments are 1-D integer arrays"
        lengths = np.array([len(s) for s in segments], dtype=np.int64)
        self.segment_offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        self.window_counts = np.maximum(lengths - length + 1, 0)
        self.cum_windows = np.cumsum(self.window_counts)
        self.num_windows = int(self.cum_windows[-1]) if len(segments) else 0
        self._positions = np.arange(length, dtype=np.int64)
        self.calendar: list | None = None  # per segment: (n, 2) int8 [time of day, day of week] or EndCalendar
        if calendars is not None:
            assert [len(c) for c in calendars] == lengths.tolist(), "one calendar row per token"
            self.calendar = [c if isinstance(c, EndCalendar) else np.asarray(c, dtype=np.int8).reshape(-1, 2)
                             for c in calendars]
        self.side: list | None = None  # per segment: (n, SIDE_CHANNELS) int8 side-channel ids (memory maps)
        if sides is not None:
            assert [len(c) for c in sides] == lengths.tolist(), "one side row per token"
            self.side = [np.asarray(c) for c in sides]

    def _locate(self, window_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(segment, start inside the segment) of each window id."""
        window_ids = np.asarray(window_ids, dtype=np.int64)
        assert window_ids.size == 0 or (window_ids.min() >= 0 and window_ids.max() < self.num_windows), \
            f"window ids must lie in [0, {self.num_windows})"
        segment = np.searchsorted(self.cum_windows, window_ids, side="right")
        first_id = self.cum_windows[segment] - self.window_counts[segment]
        return segment, window_ids - first_id

    def window_starts(self, window_ids: np.ndarray) -> np.ndarray:
        """Positions in the segments laid end to end where the windows with these ids start."""
        segment, local = self._locate(window_ids)
        return self.segment_offsets[segment] + local

    def _gather(self, window_ids: np.ndarray, arrays: list, shape: tuple[int, ...], take) -> np.ndarray:
        """int64 (len(window_ids), length, *shape): take(arrays[segment], positions) per segment of the batch."""
        segment, local = self._locate(window_ids)
        out = np.empty((len(segment), self.length, *shape), dtype=np.int64)
        order = np.argsort(segment, kind="stable")
        present, first = np.unique(segment[order], return_index=True)
        for s, a, b in zip(present.tolist(), first.tolist(), [*first[1:].tolist(), len(order)]):
            rows = order[a:b]
            out[rows] = take(arrays[s], local[rows, None] + self._positions)
        return out

    def gather(self, window_ids: np.ndarray) -> torch.Tensor:
        """The windows as an int64 tensor of shape (len(window_ids), length)."""
        return torch.from_numpy(self._gather(window_ids, self.segments, (), lambda a, i: a[i]))

    def gather_calendar(self, window_ids: np.ndarray) -> torch.Tensor:
        """The windows' calendar ids as an int64 tensor of shape (len(window_ids), length, 2); calendar sets only."""
        assert self.calendar is not None, "this window set has no calendar"
        return torch.from_numpy(self._gather(window_ids, self.calendar, (2,),
                                             lambda c, i: c.take(i) if isinstance(c, EndCalendar) else c[i]))

    def gather_side(self, window_ids: np.ndarray) -> torch.Tensor:
        """The windows' side-channel ids as an int64 tensor (len(window_ids), length, SIDE_CHANNELS); side sets
        only."""
        assert self.side is not None, "this window set has no side channels"
        return torch.from_numpy(self._gather(window_ids, self.side, (SIDE_CHANNELS,), lambda c, i: c[i]))

    def symbol_rows(self, rows: dict[str, int]) -> np.ndarray:
        """(segments,) int64: each segment's symbol's row in `rows` (a model's symbol -> embedding row), -1 for a
        symbol it does not hold; what `gather_symbol` reads."""
        return np.array([rows.get(name, -1) for name in self.names], dtype=np.int64)

    def gather_symbol(self, window_ids: np.ndarray, of_segment: np.ndarray) -> torch.Tensor:
        """(len(window_ids),) int64: the symbol row of each window, from `symbol_rows`'s per-segment array."""
        return torch.from_numpy(of_segment[self._locate(window_ids)[0]])

    def sample(self, seed: int, step: int, n: int, calendar_dropout: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """The batch of optimizer step `step`, a pure function of the arguments: n window ids drawn uniformly (with
        replacement), and (n,) bool, True for the windows whose calendar is hidden (a `calendar_dropout` fraction
        of them on average). The hiding draws come after the ids, so they never change which windows are drawn."""
        rng = np.random.default_rng([seed, step])
        ids = rng.integers(0, self.num_windows, size=n)
        return ids, rng.random(n) < calendar_dropout

    def sample_ids(self, seed: int, step: int, n: int) -> np.ndarray:
        """n window ids drawn uniformly (with replacement) for optimizer step `step`: a pure function of its args."""
        return self.sample(seed, step, n)[0]

    def eval_ids(self, n: int) -> np.ndarray:
        """Up to n window ids spread evenly over the whole set (all of them when there are fewer)."""
        if n >= self.num_windows:
            return np.arange(self.num_windows)
        return np.linspace(0, self.num_windows - 1, n).round().astype(np.int64)


@dataclass
class TokenData:
    """The train and validation windows of a token source, and what a checkpoint records about the source."""

    train: WindowSet
    val: WindowSet
    source: dict = field(default_factory=dict)  # path, train_end, val_end, tokenizer_hash, vocab_size, ...
    tokenizer_dir: Path | None = None

    @property
    def has_calendar(self) -> bool:
        return self.train.calendar is not None

    @property
    def has_side(self) -> bool:
        return self.train.side is not None

    @classmethod
    def from_series(cls, series: dict[str, tuple], sequence_len: int, vocab_size: int,
                    source: dict | None = None, tokenizer_dir: Path | None = None, where: str = "tokens",
                    calendar: bool = False, side: bool = False):
        """series: symbol -> (tokens, {"train": (start, stop), "val": (start, stop), ...}[, calendar ids (n, 2) or
        None[, side-channel ids (n, SIDE_CHANNELS)]]) with index ranges; with `calendar` / `side` every symbol has
        them (read_token_source(calendar=True, side=True)) and the windows carry them."""
        check_vocab(series, vocab_size, where)
        windows = {}
        for split in ("train", "val"):
            segments, calendars, sides = [], [], []
            for symbol, (tokens, bounds, *ids) in series.items():
                start, stop = bounds.get(split, (0, 0))
                assert 0 <= start <= stop <= len(tokens), f"{symbol} {split} ({start}, {stop}) outside 0..{len(tokens)}"
                segments.append(np.asarray(tokens[start:stop]))
                if calendar:
                    assert ids and ids[0] is not None, \
                        f"{symbol}: no calendar ids; read the source with read_token_source(calendar=True)"
                    calendars.append(ids[0][start:stop])
                if side:
                    assert len(ids) > 1, f"{symbol}: no side ids; read the source with read_token_source(side=True)"
                    sides.append(ids[1][start:stop])
            length = window_length(segments, sequence_len + 1, split, where)
            windows[split] = WindowSet(segments, length, calendars if calendar else None, sides if side else None,
                                       names=[str(symbol) for symbol in series])
        n_tokens = {split: int(sum(stop - start for entry in series.values()
                                   for start, stop in [entry[1].get(split, (0, 0))]))
                    for split in ("train", "val")}
        source = {**(source or {}), "symbols": list(series), "train_tokens": n_tokens["train"],
                  "val_tokens": n_tokens["val"]}
        return cls(train=windows["train"], val=windows["val"], source=source, tokenizer_dir=tokenizer_dir)


def read_token_source(path: str | os.PathLike, calendar: bool = False, side: bool = False
                      ) -> tuple[dict[str, tuple], dict, Path | None]:
    """Open a token store directory or a plain .txt token file: (series, source record, tokenizer dir or None).

    series: symbol -> (tokens, split bounds), and with `calendar` (a calendar model) the tokens' calendar ids
    (n, 2) [time of day, day of week] of their last bars third, as an EndCalendar over the memory-mapped end times
    (np.asarray gives the int8 array); a source without timestamps is then a DataError. With `side` (a side model)
    the side-channel ids (n, SIDE_CHANNELS) come fourth (the third is then None without `calendar`) and the source
    record holds the store's bin edges ("side_edges"); a store without side channels is a DataError. The source
    record is what checkpoints and RUN/model/meta.json keep.
    """
    if not Path(path).exists():
        raise DataError(f"--tokens {path} does not exist; give a token store directory or a .txt file of token ids")
    store = TokenStore.open(path)
    if calendar and not getattr(store, "has_patch_ends", False):
        what = ("a plain token file without timestamps" if not getattr(store, "is_store", False)
                else "a token store written before pricegpt recorded token end times")
        raise DataError(f"model.calendar needs a token store with timestamps: --tokens {path} is {what}. Tokenize "
                        "the prices into a store directory with `pricegpt tokenize` (or run `pricegpt pipeline`), "
                        "or train without --set model.calendar=true")
    if side and not getattr(store, "has_side", False):
        what = ("a plain token file" if not getattr(store, "is_store", False)
                else "a token store of data without open/high/low columns (or written before side channels existed)")
        raise DataError(f"model.side needs a token store with side channels: --tokens {path} is {what}. Tokenize "
                        "prices with open, high and low columns with `pricegpt tokenize` (or run `pricegpt "
                        "pipeline`), or train a model without side channels (drop --set model.side=true; an --init "
                        "model with side channels needs such a store)")
    series = {symbol: (store.tokens(symbol), store.split_bounds(symbol)) for symbol in store.symbols}
    if calendar or side:
        series = {symbol: (*entry, EndCalendar(store.patch_times_ns(symbol, "patch_ends")) if calendar else None)
                  for symbol, entry in series.items()}
    if side:
        series = {symbol: (*entry, store.side_ids(symbol)) for symbol, entry in series.items()}
    tokenizer_dir = getattr(store, "tokenizer_dir", None)
    source = {
        "tokens": str(Path(path).resolve()),
        "train_end": _plain(getattr(store, "train_end", None)),
        "val_end": _plain(getattr(store, "val_end", None)),
        "tokenizer_hash": getattr(store, "tokenizer_hash", None),
        # a plain .txt only knows its largest id, not the tokenizer's codebook: the model config decides then
        "vocab_size": _plain(store.vocab_size) if getattr(store, "is_store", True) else None,
        "patch_len": _plain(getattr(store, "patch_len", None)),
    }
    if side:
        source["side_edges"] = store.side_edges
    return series, source, Path(tokenizer_dir) if tokenizer_dir else None


def token_calendar(ends) -> np.ndarray:
    """(n, 2) int8 [time of day, day of week] model inputs (data.calendar.calendar_ids) of tokens whose last bars
    end at `ends` (a DatetimeIndex)."""
    ends = pd.DatetimeIndex(ends)
    naive = (ends.tz_convert("UTC").tz_localize(None) if ends.tz is not None else ends).as_unit("ns").to_numpy()
    return _calendar_of_ns(naive.astype(np.int64))


def check_vocab(series: dict[str, tuple], vocab_size: int, where: str) -> None:
    """DataError unless every token id lies in [0, vocab_size): the only pass over all tokens."""
    for symbol, (tokens, *_) in series.items():
        if len(tokens) == 0:
            continue
        if not np.issubdtype(np.asarray(tokens).dtype, np.integer):
            raise DataError(f"{where}: tokens of {symbol} are not integers (dtype {np.asarray(tokens).dtype})")
        lo, hi = int(np.min(tokens)), int(np.max(tokens))
        if lo < 0 or hi >= vocab_size:
            raise DataError(
                f"{where}: symbol {symbol} has token ids in [{lo}, {hi}] but the model's vocabulary is "
                f"[0, {vocab_size}); set model.vocab_size={hi + 1} or use tokens from the model's tokenizer"
            )


def shortest_window(wanted: int) -> int:
    """The fewest consecutive tokens of one symbol a split needs for a window (`window_length`): `wanted`
    (model.sequence_len + 1), or MIN_CONTEXT tokens of context and a target when that is fewer."""
    return min(wanted, MIN_CONTEXT + 1)


def window_length(segments: list[np.ndarray], wanted: int, split: str, where: str) -> int:
    """`wanted` when some segment holds a full window; else the longest segment if it gives MIN_CONTEXT tokens of
    context; else a DataError saying how many tokens are needed."""
    longest = max((len(s) for s in segments), default=0)
    if longest >= wanted:
        return wanted
    needed = shortest_window(wanted)
    if longest >= needed:
        log.warning(f"{where}: no symbol has {wanted} tokens (model.sequence_len + 1) in its {split} split; the "
                    f"longest has {longest}, so {split} windows are {longest} tokens long. Set "
                    f"model.sequence_len={longest - 1} or less to silence this.")
        return longest
    raise DataError(
        f"{where}: the {split} split is too short: a {split} window needs {needed} consecutive tokens of one symbol "
        f"(model.sequence_len={wanted - 1}), the longest {split} series has {longest}; use more data, a longer "
        f"{split} split, or a smaller model.sequence_len"
    )


def _plain(value):
    """Timestamps and numpy scalars as JSON-friendly values."""
    if value is None or isinstance(value, (str, int, float)):
        return value
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if isinstance(value, np.generic):
        return value.item()
    return str(value)
