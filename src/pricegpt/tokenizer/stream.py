"""Tokenizing data larger than memory: a price source into a token store, a batch of whole symbols at a time.

`stream_token_store(tokenizer, source, out)` writes exactly the store `write_token_store(tokenizer,
load_prices(source), out)` writes (the same bytes in every file), while the price data passes through memory a
batch of symbols at a time (`stream_prices`): each batch is encoded, its arrays appended to spool files (one per
kind of array, in a build folder inside the store) and freed. What needs every symbol waits for the end, and is read
back from the spool a symbol at a time:

  - the splits: the default cutoffs come from the data's time span, tracked as the batches pass, and a token's
    split follows from its patch end time (the arrays hold them);
  - the side-channel edges: quantiles of the pooled train-split side values of all symbols. The float32 values
    wait in the spool; the exact order statistics `np.quantile` would pick are found in two counting
    passes over them (a histogram of each value's top 16 bits, then of the bottom 16 bits inside the bins that hold
    the wanted ranks), so no pass holds more than one symbol's values;
  - the per-symbol array files (`safe_file_names` needs every symbol) and all_tokens.txt.

So memory grows with the largest batch and symbol, not with the number of symbols or bars. Measured by `pricegpt
bench --only scaling` ("tokenize ..." lines).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..data import Splits, iso, parse_time, time_splits
from ..data.readers import BATCH_ROWS, LoadReport, partial_columns, stream_prices
from ..errors import DataError, OutputExistsError, TokenizerError
from ..fileio import atomic_dir, safe_file_names
from .base import Tokenizer
from .patches import splits_for
from .side import SIDE_BINS, SIDE_CHANNELS, SIDE_COLUMNS, SIDE_HALFLIFE, patch_side, side_ids, side_values
from .store import add_entry, finish_store, save_array, store_index, token_dtype, write_all_tokens

log = logging.getLogger("pricegpt")

BUILD_DIR = ".build"  # inside the store being built: the spool files, removed before the store is complete
VOLUME = SIDE_CHANNELS.index("volume")
KEY_BLOCK = 1 << 18  # train tokens of side values counted at a time when fitting the edges


@dataclass
class _Written:
    """Where a symbol's rows are in the spool files, and whether it has side values."""

    offset: int
    n_tokens: int
    side: bool


class _Spool:
    """Append-only raw files in the build directory, one per kind of per-token array, so that a symbol costs no
    file of its own until the end; read back in slices with ordinary reads (a memory map would count its touched
    pages as this process's memory)."""

    def __init__(self, folder: Path, kinds: dict[str, tuple[np.dtype, int]]):
        folder.mkdir(parents=True, exist_ok=True)
        self.kinds = kinds  # name -> (dtype, values per token)
        self.handles = {name: open(folder / f"{name}.bin", "w+b") for name in kinds}

    def append(self, name: str, values: np.ndarray) -> None:
        dtype, width = self.kinds[name]
        values = np.ascontiguousarray(values, dtype=dtype)
        assert values.size == len(values) * width, f"{name}: {width} values per token"
        values.tofile(self.handles[name])

    def read(self, name: str, offset: int, count: int) -> np.ndarray:
        """Rows offset .. offset + count (in tokens)."""
        dtype, width = self.kinds[name]
        handle = self.handles[name]
        handle.flush()
        handle.seek(offset * width * dtype.itemsize)
        values = np.fromfile(handle, dtype=dtype, count=count * width)
        assert len(values) == count * width, f"{name}: the spool is short"
        return values.reshape(count, width) if width > 1 else values

    def close(self) -> None:
        for handle in self.handles.values():
            handle.close()


def stream_token_store(tokenizer: Tokenizer, source, out_dir: str | Path, *, train_end=None, val_end=None,
                       date_format: str | None = None, overwrite: bool = False,
                       batch_rows: int = BATCH_ROWS) -> dict:
    """Encode every symbol of the price source (a file, a folder, `sample:NAME` or a DataFrame, as `load_prices`
    takes) into a token store at `out_dir` and return its index; the same store as `write_token_store(tokenizer,
    load_prices(source), out_dir, splits)`, where splits are `time_splits(frame, train_end, val_end)` when a cutoff
    is given, else write_token_store's default."""
    if not tokenizer.fitted:
        raise TokenizerError("the tokenizer is not fitted; fit it first (`pricegpt tokenizer fit`)")
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:  # before the work; atomic_dir checks again
        raise OutputExistsError(f"{out_dir} already exists; choose another --out or remove it first")
    for value, flag in ((train_end, "--train-end"), (val_end, "--val-end")):
        if value is not None:
            parse_time(value, flag)  # a wrong date fails before the work
    if train_end is not None and tokenizer.train_end is not None \
            and parse_time(train_end, "--train-end").floor("s") < tokenizer.train_end:
        _leak(tokenizer, parse_time(train_end, "--train-end").floor("s"))  # so does a leaky one
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        spool = _Spool(tmp / BUILD_DIR, {"tokens": (token_dtype(tokenizer.vocab_size), 1),
                                         "starts": (np.dtype(np.int64), 1), "ends": (np.dtype(np.int64), 1),
                                         "side": (np.dtype(np.float32), len(SIDE_CHANNELS))})
        try:
            report = LoadReport(source="")
            frames = stream_prices(source, date_format=date_format, report=report, batch_rows=batch_rows)
            written, skipped, span = _encode(tokenizer, frames, spool)
            index = _write(tokenizer, tmp, spool, written, skipped, report,
                           _splits(tokenizer, span, train_end, val_end))
            write_all_tokens(tmp, (spool.read("tokens", written[s].offset, written[s].n_tokens)
                                   for s in index["symbols"]))
        finally:
            spool.close()
            shutil.rmtree(tmp / BUILD_DIR, ignore_errors=True)
        finish_store(tmp, index, tokenizer)
    return index


def _encode(tokenizer: Tokenizer, frames, spool: _Spool):
    """Encode each batch of symbols into the spool: (symbol -> _Written, skipped symbols, [first, last] time)."""
    written: dict[str, _Written] = {}
    skipped: dict[str, str] = {}
    span: list[pd.Timestamp] = []
    offset = 0
    for frame in frames:
        values = side_values(frame)
        for symbol, patches in tokenizer.patchify(frame).items():
            if len(patches) == 0:
                skipped[symbol] = f"fewer than {tokenizer.patch_len + 1} bars: no complete patch"
                continue
            tokens = tokenizer.encode_patches(patches, symbol)
            spool.append("tokens", tokens)
            spool.append("starts", _ns(patches.starts))
            spool.append("ends", _ns(patches.ends))
            if values is not None:
                side = patch_side(values[symbol], tokenizer.patch_len)
                assert len(side) == len(tokens), f"{symbol}: {len(side)} side rows for {len(tokens)} tokens"
                spool.append("side", side)
            written[symbol] = _Written(offset, len(tokens), side=values is not None)
            offset += len(tokens)
        first, last = frame["timestamp"].min(), frame["timestamp"].max()
        span = [min(span[0], first), max(span[1], last)] if span else [first, last]
    return written, skipped, span


def _write(tokenizer: Tokenizer, tmp: Path, spool: _Spool, written: dict[str, _Written], skipped: dict[str, str],
           report: LoadReport, splits: Splits) -> dict:
    """The store's arrays, in symbol order, from the spool; returns the index."""
    partial = partial_columns(report, Path(report.source)) if len(report.columns) > 1 else []
    if tokenizer.config.features == "ohlcv" and partial:
        lacking = [c for c in ("open", "high", "low", "volume") if c in partial]
        raise DataError(f"features='ohlcv' needs open, high, low and volume columns; the data lacks "
                        f"{', '.join(lacking)}: use features='close' (--features close)")
    if not written:
        raise DataError(f"no symbol has a complete patch of {tokenizer.patch_len} returns "
                        f"({tokenizer.patch_len + 1} bars); nothing to tokenize")
    skipped = {s: skipped[s] for s in sorted(skipped)}
    for symbol, reason in skipped.items():
        log.warning("token store: symbol %s skipped (%s)", symbol, reason)
    symbols = sorted(written)
    cutoffs = [splits.train_end.as_unit("ns").value, splits.val_end.as_unit("ns").value]
    stops = {}
    for s in symbols:  # a token belongs to the split of its last bar (Splits.label); ends increase
        ends = spool.read("ends", written[s].offset, written[s].n_tokens)
        stops[s] = [*(int(np.searchsorted(ends, c, side="right")) for c in cutoffs), len(ends)]
    has_side = all(written[s].side for s in symbols) and not any(c in partial for c in SIDE_COLUMNS)
    no_volume = "volume" in partial  # a folder where some file lacks volume: load_prices drops it for all

    def side_of(symbol: str, rows: int | None = None) -> np.ndarray:
        values = spool.read("side", written[symbol].offset, written[symbol].n_tokens if rows is None else rows)
        if no_volume:
            values[:, VOLUME] = np.nan
        return values

    record = None
    if has_side:
        edges = pooled_side_edges(lambda: (side_of(s, stops[s][0]) for s in symbols))
        record = {"channels": list(SIDE_CHANNELS), "bins": SIDE_BINS, "halflife": SIDE_HALFLIFE, "edges": edges}
    header = {"tokenizer_kind": tokenizer.kind, "tokenizer_hash": tokenizer.hash,
              "vocab_size": tokenizer.vocab_size, "patch_len": tokenizer.patch_len, **splits.to_dict(),
              "tokenizer_train_end": tokenizer.config.train_end}
    index = store_index(header, symbols, sum(w.n_tokens for w in written.values()), skipped, record)
    files = safe_file_names(symbols)
    for symbol in symbols:
        at = written[symbol]
        entry = add_entry(index, symbol, files[symbol], stops[symbol], ends=True, side=has_side)
        for key, kind in (("file", "tokens"), ("patch_starts", "starts"), ("patch_ends", "ends")):
            save_array(tmp / entry[key], spool.read(kind, at.offset, at.n_tokens))
        if has_side:
            save_array(tmp / entry["side"], side_ids(side_of(symbol), record["edges"]))
    return index


def _ns(times: np.ndarray) -> np.ndarray:
    """Naive-UTC datetime64 patch times as int64 nanoseconds since 1970 (what the store keeps)."""
    return np.ascontiguousarray(np.asarray(times, dtype="datetime64[ns]").view(np.int64))


def _splits(tokenizer: Tokenizer, span: list[pd.Timestamp], train_end, val_end) -> Splits:
    """The cutoffs `pricegpt tokenize` resolves on the whole frame, from its first and last timestamp only."""
    frame = pd.DataFrame({"timestamp": pd.DatetimeIndex(span)})
    if train_end is not None or val_end is not None:
        splits = time_splits(frame, train_end=train_end, val_end=val_end)
    else:  # write_token_store's default
        splits = splits_for(frame)
        if splits.train_end != tokenizer.train_end:
            splits = splits_for(frame, train_end=tokenizer.train_end)
    if tokenizer.train_end is not None and splits.train_end < tokenizer.train_end:
        _leak(tokenizer, splits.train_end)
    return splits


def _leak(tokenizer: Tokenizer, train_end: pd.Timestamp) -> None:
    raise TokenizerError(f"the tokenizer was fitted on data up to {iso(tokenizer.train_end)}, after the token "
                         f"store's train_end {iso(train_end)}: it has seen validation data. Refit the "
                         "tokenizer with the same --train-end or use a later one for the store")


# ---------------------------------------------------------------------------------------- exact pooled edges
def pooled_side_edges(train_values: Callable[[], Iterable[np.ndarray]],
                      bins: int = SIDE_BINS) -> list[list[float]]:
    """`fit_side_edges(np.concatenate(list(train_values())))`, exactly, with one symbol's values in memory at a
    time: `train_values()` yields each symbol's train-split side values (n, 3) float32 (it is called twice).

    (Values of -0.0, which side.py never makes, would sort before 0.0 here and in any order in np.quantile.)"""
    channels = range(len(SIDE_CHANNELS))

    def known_keys():  # each channel's known values as sort keys, in blocks of about KEY_BLOCK tokens
        block: list[list[np.ndarray]] = [[] for _ in channels]
        size = 0
        for values in train_values():
            for c in channels:
                column = np.asarray(values[:, c], dtype=np.float32)
                block[c].append(_sort_keys(np.ascontiguousarray(column[np.isfinite(column)])))
            size += len(values)
            if size >= KEY_BLOCK:
                yield [np.concatenate(keys) for keys in block]
                block, size = [[] for _ in channels], 0
        if size:
            yield [np.concatenate(keys) for keys in block]

    high = np.zeros((len(channels), 1 << 16), dtype=np.int64)  # pass 1: counts of each key's top 16 bits
    for keys in known_keys():
        for i, k in enumerate(keys):
            high[i] += np.bincount(k >> 16, minlength=1 << 16)
    plans = [_ranks(row, bins) for row in high]
    low = [np.zeros((len(plan[-1]), 1 << 16), dtype=np.int64) for plan in plans]
    for keys in known_keys():  # pass 2: the bottom 16 bits, inside the top bins that hold a wanted rank
        for i, k in enumerate(keys):
            needed = plans[i][-1]
            if len(needed) == 0:
                continue
            slot = np.minimum(np.searchsorted(needed, k >> 16), len(needed) - 1)
            inside = needed[slot] == k >> 16
            low[i] += np.bincount(slot[inside] * (1 << 16) + (k[inside] & 0xFFFF),
                                  minlength=low[i].size).reshape(low[i].shape)
    return [_lerp_edges(high[c], low[c], *plans[c]) for c in channels]


def _sort_keys(values: np.ndarray) -> np.ndarray:
    """uint32 keys that sort as the float32 values do (-0.0 before 0.0; no NaN here)."""
    bits = values.view(np.uint32)
    return np.where(bits & np.uint32(0x80000000), ~bits, bits | np.uint32(0x80000000)).astype(np.int64)


def _ranks(high: np.ndarray, bins: int):
    """np.quantile's linear method for n = high.sum() values at q = 1/bins .. (bins-1)/bins: the virtual index
    (n - 1) q, the rank at its floor (n - 1 above the last), the weight gamma of the next rank, and the top bins
    holding those ranks."""
    n = int(high.sum())
    if n == 0:
        return n, None, None, None, np.zeros(0, dtype=np.int64)
    virtual = (n - 1) * (np.arange(1, bins) / bins)
    below = np.floor(virtual)
    above = virtual >= n - 1
    ranks = np.where(above, n - 1, below).astype(np.int64)
    nexts = np.where(above, n - 1, ranks + 1)
    gamma = virtual - np.where(above, -1, below)  # as numpy computes it, from a previous index of -1 above
    groups = np.searchsorted(np.cumsum(high), np.concatenate([ranks, nexts]), side="right")
    return n, ranks, nexts, gamma, np.unique(groups)


def _lerp_edges(high: np.ndarray, low: np.ndarray, n: int, ranks, nexts, gamma, needed) -> list[float]:
    """The edges from the two histograms: the values at the wanted ranks, interpolated as numpy's _lerp does."""
    if n == 0:
        return []
    cumulative, within = np.cumsum(high), np.cumsum(low, axis=1)

    def value(rank: int) -> float:
        group = int(np.searchsorted(cumulative, rank, side="right"))
        row = within[int(np.searchsorted(needed, group))]
        bottom = int(np.searchsorted(row, rank - (cumulative[group] - high[group]), side="right"))
        key = np.uint32((group << 16) | bottom)
        bits = key & np.uint32(0x7FFFFFFF) if key & np.uint32(0x80000000) else ~key
        return float(np.array([bits], dtype=np.uint32).view(np.float32)[0])

    a = np.array([value(r) for r in ranks.tolist()])
    b = np.array([value(r) for r in nexts.tolist()])
    diff = b - a
    edges = a + diff * gamma
    edges = np.where(gamma >= 0.5, b - diff * (1 - gamma), edges)
    return [float(x) for x in np.unique(edges)]
