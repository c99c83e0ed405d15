"""The token store: what `pricegpt tokenize` writes and the trainer, evaluator and analysis read.

A store directory (built atomically; an existing one is an OutputExistsError unless overwrite):

    index.json           kind/hash of the tokenizer, vocab_size, patch_len, train_end, val_end, the symbols in
                         sorted order, and per symbol: file, n_tokens, split_bounds (three integers: where train,
                         val and test stop), split counts, and patch_starts and patch_ends: the files of the times
                         of each token's first and last bar
    arrays/<name>.npy    one token array per symbol (uint8 when K <= 256, else uint16), memory-mappable
    arrays/starts/<name>.npy, arrays/ends/<name>.npy
                         the patch start and end times per symbol: int64 nanoseconds since 1970 UTC, memory-mappable
    arrays/side/<name>.npy
                         data with open, high and low only: each token's side-channel ids (n_tokens, 3) int8 (range,
                         gap, volume; -1 unknown; side.py), binned by the edges in index.json's "side" record, fit
                         on the store's train split
    all_tokens.txt       every id, space-separated, symbols in index order, all splits (the seed's format)
    tokenizer/           a copy of the tokenizer, so the store is self-contained

Nothing in index.json grows with the number of tokens, so opening a store of any size takes the same memory.
`write_token_store` encodes a price frame in memory; stream.py writes the same bytes from a file or folder of any
size, a batch of symbols at a time (what `pricegpt tokenize` runs). Both go through `write_store`'s helpers.

Patches are time-ordered and a patch belongs to the split of its last bar, so each split is one contiguous range
of a symbol's array. Symbol names can be anything: file names are sanitised (and disambiguated by a hash) and
never leave the store.

`TokenStore.open(path)` reads a store directory or a plain whitespace-separated token file (the seed's
all_tokens.txt: one stream "all", split 80/20 by position into train/val, no test). Every defect of a token file
is a DataError naming the file and the position. Stores of format 1 (index.json with per-patch lists: ISO
patch_starts/patch_ends and a split label per patch) still open; a store written before patch_ends existed too,
only `patch_ends` (what a calendar model trains on) asks for it to be re-created.
"""

from __future__ import annotations

import codecs
import json
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from ..data import SPLIT_NAMES, Splits, iso
from ..errors import DataError, OutputExistsError, TokenizerError
from ..fileio import atomic_dir, atomic_path, safe_file_names
from .base import Tokenizer
from .patches import splits_for
from .side import SIDE_BINS, SIDE_CHANNELS, SIDE_HALFLIFE, fit_side_edges, patch_side, side_ids, side_values

log = logging.getLogger("pricegpt")

INDEX_FILE, ALL_TOKENS_FILE, ARRAYS_DIR, TOKENIZER_DIR = "index.json", "all_tokens.txt", "arrays", "tokenizer"
STORE_FORMAT = 2  # 1: per-patch ISO times and split labels in index.json (still read)
STARTS_DIR, ENDS_DIR, SIDE_DIR = "starts", "ends", "side"  # inside ARRAYS_DIR
TXT_TRAIN_FRACTION = 0.8


STORE_HEADER_KEYS = ("tokenizer_kind", "tokenizer_hash", "vocab_size", "patch_len", "train_end", "val_end",
                     "tokenizer_train_end")


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint8) if vocab_size <= 256 else np.dtype(np.uint16)


def write_token_store(tokenizer: Tokenizer, frame: pd.DataFrame, out_dir: str | Path, splits: Splits | None = None,
                      overwrite: bool = False) -> dict:
    """Encode every symbol of `frame` and write the store (see the module docstring). Returns the index.

    Pass the same `splits` as the fit (time_splits(frame, train_end, val_end)). Without them: the data's default
    cutoffs if their train_end is the tokenizer's, else the tokenizer's train_end and time_splits' default val_end.
    A train_end earlier than the tokenizer's is a TokenizerError: the tokenizer has seen the store's validation
    data."""
    if not tokenizer.fitted:
        raise TokenizerError("the tokenizer is not fitted; fit it first (`pricegpt tokenizer fit`)")
    if splits is None:  # the data's default cutoffs when the tokenizer was fitted with them, else its train_end
        splits = splits_for(frame)
        if splits.train_end != tokenizer.train_end:
            splits = splits_for(frame, train_end=tokenizer.train_end)
    if tokenizer.train_end is not None and splits.train_end < tokenizer.train_end:
        raise TokenizerError(f"the tokenizer was fitted on data up to {iso(tokenizer.train_end)}, after the token "
                             f"store's train_end {iso(splits.train_end)}: it has seen validation data. Refit the "
                             "tokenizer with the same --train-end or use a later one for the store")
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:  # before the work; atomic_dir checks again
        raise OutputExistsError(f"{out_dir} already exists; choose another --out or remove it first")
    patches = tokenizer.patchify(frame)
    dtype = token_dtype(tokenizer.vocab_size)
    encoded, skipped = {}, {}
    for symbol, p in patches.items():
        if len(p) == 0:
            skipped[symbol] = f"fewer than {tokenizer.patch_len + 1} bars: no complete patch"
            continue
        encoded[symbol] = (tokenizer.encode_patches(p, symbol).astype(dtype), p, splits.label(p.ends))
    if not encoded:
        raise DataError(f"no symbol has a complete patch of {tokenizer.patch_len} returns "
                        f"({tokenizer.patch_len + 1} bars); nothing to tokenize")
    for symbol, reason in skipped.items():
        log.warning("token store: symbol %s skipped (%s)", symbol, reason)
    header = {"tokenizer_kind": tokenizer.kind, "tokenizer_hash": tokenizer.hash,
              "vocab_size": tokenizer.vocab_size, "patch_len": tokenizer.patch_len, **splits.to_dict(),
              "tokenizer_train_end": tokenizer.config.train_end}
    series = {symbol: (tokens, p.starts, labels, p.ends) for symbol, (tokens, p, labels) in encoded.items()}
    side = store_side(frame, {s: (len(e[0]), e[2]) for s, e in encoded.items()}, tokenizer.patch_len)
    return write_store(out_dir, series, header, tokenizer=tokenizer, skipped=skipped, overwrite=overwrite, side=side)


def store_side(frame: pd.DataFrame, tokens: dict[str, tuple[int, np.ndarray]], patch_len: int
               ) -> tuple[dict[str, np.ndarray], dict] | None:
    """The side-channel ids of a store's tokens and its "side" index record, or None for data without open, high
    and low. tokens: symbol -> (n_tokens, split labels (n_tokens,)); the edges are fit on the train-split tokens of
    all symbols together (side.py)."""
    values = side_values(frame)
    if values is None:
        return None
    per_token = {}
    for symbol, (n, _) in tokens.items():
        v = patch_side(values[symbol], patch_len)
        assert len(v) == n, f"{symbol}: {len(v)} side rows for {n} tokens"
        per_token[symbol] = v
    train = [v[labels == 0] for (_, labels), v in zip(tokens.values(), per_token.values())]
    edges = fit_side_edges(np.concatenate(train) if train else np.zeros((0, len(SIDE_CHANNELS))))
    record = {"channels": list(SIDE_CHANNELS), "bins": SIDE_BINS, "halflife": SIDE_HALFLIFE, "edges": edges}
    return {s: side_ids(v, edges) for s, v in per_token.items()}, record


def write_store(out_dir: str | Path, series: dict[str, tuple[np.ndarray, ...]], header: dict,
                *, tokenizer: Tokenizer | None = None, skipped: dict[str, str] | None = None,
                overwrite: bool = False, all_tokens: bool = True,
                side: tuple[dict[str, np.ndarray], dict] | None = None) -> dict:
    """THE writer of the store format: `series` maps symbol -> (token ids (n,), patch start times (n,) as
    datetime64 UTC, split labels (n,) as indices into SPLIT_NAMES in time order (a DataError otherwise)[, patch end
    times (n,) as datetime64 UTC: the time of each token's last bar, what a calendar model reads; without them the
    store has no patch_ends]); `header` holds tokenizer_kind, tokenizer_hash, vocab_size, patch_len, train_end,
    val_end, tokenizer_train_end. Built atomically (an existing store is an OutputExistsError unless `overwrite`);
    with a `tokenizer`, a copy of it goes inside; with `all_tokens`, the seed's flat all_tokens.txt too. Returns
    the index. `side`: (symbol -> side-channel ids (n, 3) int8, the index's "side" record), from `store_side`.
    (stream.py writes the same files a symbol at a time through the helpers below.)"""
    dtype = token_dtype(int(header["vocab_size"]))
    files = safe_file_names(list(series))
    index = store_index(header, list(series), int(sum(len(entry[0]) for entry in series.values())), skipped,
                        None if side is None else side[1])
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        for symbol, (tokens, starts, labels, *ends) in series.items():
            stops = _label_stops(labels, len(tokens), symbol)
            entry = add_entry(index, symbol, files[symbol], stops, ends=bool(ends), side=side is not None)
            save_array(tmp / entry["file"], np.asarray(tokens).astype(dtype, copy=False))
            assert len(starts) == len(tokens), f"{symbol}: one start time per token"
            save_array(tmp / entry["patch_starts"], _ns(starts))
            if ends:
                assert len(ends) == 1 and len(ends[0]) == len(tokens), f"{symbol}: one end time per token"
                save_array(tmp / entry["patch_ends"], _ns(ends[0]))
            if side is not None:
                ids = np.asarray(side[0][symbol], dtype=np.int8)
                assert ids.shape == (len(tokens), len(SIDE_CHANNELS)), f"{symbol}: one side row per token"
                save_array(tmp / entry["side"], ids)
        if all_tokens:
            write_all_tokens(tmp, (entry[0] for entry in series.values()))
        finish_store(tmp, index, tokenizer)
    return index


def store_index(header: dict, symbols: list[str], n_tokens: int, skipped: dict[str, str] | None,
                side_record: dict | None) -> dict:
    """index.json of a store without its per-symbol entries (add_entry adds them, in `symbols` order)."""
    index = {"format": STORE_FORMAT, **{k: header[k] for k in STORE_HEADER_KEYS},
             "dtype": token_dtype(int(header["vocab_size"])).name, "symbols": list(symbols), "n_tokens": n_tokens,
             "split_counts": {name: 0 for name in SPLIT_NAMES}, "per_symbol": {}, "skipped": dict(skipped or {})}
    if side_record is not None:
        index["side"] = side_record
    return index


def add_entry(index: dict, symbol: str, stem: str, stops: list[int], *, ends: bool, side: bool) -> dict:
    """Add a symbol's entry (its array files, relative to the store, and split stops) to `index`; returns it."""
    counts = {name: stop - start for name, start, stop in zip(SPLIT_NAMES, [0, *stops], stops)}
    for name, count in counts.items():
        index["split_counts"][name] += count
    entry = {"file": f"{ARRAYS_DIR}/{stem}.npy", "n_tokens": stops[-1], "split_counts": counts,
             "split_bounds": stops, "patch_starts": f"{ARRAYS_DIR}/{STARTS_DIR}/{stem}.npy"}
    if ends:
        entry["patch_ends"] = f"{ARRAYS_DIR}/{ENDS_DIR}/{stem}.npy"
    if side:
        entry["side"] = f"{ARRAYS_DIR}/{SIDE_DIR}/{stem}.npy"
    index["per_symbol"][symbol] = entry
    return entry


def write_all_tokens(tmp: Path, tokens) -> None:
    """all_tokens.txt of a store being built in `tmp` from `tokens`: each symbol's ids, in index order, written one
    symbol at a time so the text of a large store never sits in memory."""
    with atomic_path(tmp / ALL_TOKENS_FILE) as path, open(path, "w", encoding="utf-8", newline="") as fh:
        separator = ""
        for ids in tokens:
            text = " ".join(map(str, np.asarray(ids).tolist()))
            if text:
                fh.write(separator + text)
                separator = " "
        fh.write("\n")


def finish_store(tmp: Path, index: dict, tokenizer: Tokenizer | None) -> None:
    """The last files of a store being built in `tmp`: the tokenizer copy and index.json; then everything is flushed
    to disk, so that the directory is complete before atomic_dir renames it into place."""
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp / TOKENIZER_DIR)
    with atomic_path(tmp / INDEX_FILE) as path, open(path, "w", encoding="utf-8") as fh:
        json.dump(index, fh, indent=2, allow_nan=False)
        fh.write("\n")
    if hasattr(os, "sync"):  # one flush for the many array files save_array wrote without their own fsync
        os.sync()


def save_array(file: Path, values: np.ndarray) -> None:
    """An .npy file inside a store being built (atomic_dir makes the whole store appear at once, so the file needs
    no temporary name or fsync of its own: finish_store flushes them all)."""
    file.parent.mkdir(parents=True, exist_ok=True)
    with open(file, "wb") as fh:
        np.save(fh, values)


def _ns(times) -> np.ndarray:
    """int64 nanoseconds since 1970 UTC of datetime64 values (naive = UTC) or tz-aware pandas times."""
    index = pd.DatetimeIndex(times)
    if index.tz is not None:
        index = index.tz_convert("UTC").tz_localize(None)
    return np.ascontiguousarray(index.as_unit("ns").asi8, dtype=np.int64)


def _label_stops(labels, n: int, symbol: str) -> list[int]:
    """[train stop, val stop, test stop] of a symbol's split labels (indices into SPLIT_NAMES) in time order."""
    labels = np.asarray(labels)
    if len(labels) != n:
        raise DataError(f"{symbol}: {len(labels)} split labels for {n} tokens")
    if n and (labels.min() < 0 or labels.max() >= len(SPLIT_NAMES) or (np.diff(labels) < 0).any()):
        raise DataError(f"{symbol}: split labels must be {', '.join(SPLIT_NAMES)} in time order")
    return np.cumsum(np.bincount(labels.astype(np.int64), minlength=len(SPLIT_NAMES))).astype(int).tolist()


class TokenStore:
    """Token ids per symbol with their splits; read-only. Use `TokenStore.open(path)`."""

    def __init__(self, path: Path, arrays: dict[str, np.ndarray], bounds: dict[str, dict[str, tuple[int, int]]],
                 vocab_size: int, index: dict | None = None):
        self.path = path
        self._arrays = arrays
        self._bounds = bounds
        self.vocab_size = vocab_size
        self.index = index
        self.symbols: list[str] = list(arrays)
        self.is_store = index is not None
        self.train_end = pd.Timestamp(index["train_end"]) if index else None
        self.val_end = pd.Timestamp(index["val_end"]) if index else None
        self.tokenizer_hash: str | None = index["tokenizer_hash"] if index else None
        self.tokenizer_kind: str | None = index["tokenizer_kind"] if index else None
        self.patch_len: int | None = index["patch_len"] if index else None
        self.tokenizer_dir: Path | None = path / TOKENIZER_DIR if index and (path / TOKENIZER_DIR).is_dir() else None

    @classmethod
    def open(cls, path: str | Path, vocab_size: int | None = None) -> TokenStore:
        """Open a store directory or a plain token .txt file. `vocab_size` (e.g. the model's) bounds the ids."""
        path = Path(path)
        if path.is_dir():
            return _open_store(path, vocab_size)
        if path.is_file():
            return _open_txt(path, vocab_size)
        raise DataError(f"{path}: no such token store or token file; create one with `pricegpt tokenize`")

    def _check_symbol(self, symbol: str) -> None:
        if symbol not in self._arrays:
            shown = ", ".join(self.symbols[:10]) + (" ..." if len(self.symbols) > 10 else "")
            raise DataError(f"{self.path}: no symbol '{symbol}' in the token store; it has {shown}")

    def tokens(self, symbol: str) -> np.ndarray:
        """The symbol's ids (n_tokens,), a read-only memmap for store directories."""
        self._check_symbol(symbol)
        return self._arrays[symbol]

    def split_bounds(self, symbol: str) -> dict[str, tuple[int, int]]:
        """{"train": (start, stop), "val": ..., "test": ...}: contiguous index ranges (an empty split has
        start == stop)."""
        self._check_symbol(symbol)
        return dict(self._bounds[symbol])

    def split_tokens(self, symbol: str, split: str) -> np.ndarray:
        start, stop = self.split_bounds(symbol)[split]
        return self.tokens(symbol)[start:stop]

    def patch_starts(self, symbol: str) -> pd.DatetimeIndex:
        """Start timestamp (UTC) of each token's first bar; store directories only."""
        return _as_times(self.patch_times_ns(symbol, "patch_starts"))

    def patch_ends(self, symbol: str) -> pd.DatetimeIndex:
        """Timestamp (UTC) of each token's last bar (the bar a token's calendar is read from); store directories
        written with end times only."""
        return _as_times(self.patch_times_ns(symbol, "patch_ends"))

    @property
    def has_patch_ends(self) -> bool:
        """Whether every symbol records its tokens' end times (stores written before they existed do not)."""
        return self.index is not None and all("patch_ends" in self.index["per_symbol"][s] for s in self.symbols)

    def patch_times_ns(self, symbol: str, key: str = "patch_ends") -> np.ndarray:
        """The "patch_starts" or "patch_ends" times of the symbol's tokens as int64 ns since 1970 UTC (n_tokens,): a
        read-only memmap for stores of the current format."""
        self._check_symbol(symbol)
        if self.index is None:
            raise DataError(f"{self.path} is a plain token file without timestamps; tokenize a price file into a "
                            "store directory with `pricegpt tokenize`")
        entry = self.index["per_symbol"][symbol]
        redo = "re-create the store with `pricegpt tokenize`"
        if key not in entry:
            raise DataError(f"{self.path / INDEX_FILE} has no {key} (the store was written by an older pricegpt); "
                            "re-create it with `pricegpt tokenize`")
        value = entry[key]
        if isinstance(value, str):  # format 2: a file of int64 ns
            file = _inside(self.path, value, f"{self.path / INDEX_FILE}: {key} of {symbol!r}", redo)
            times = _load_array(file, symbol, len(self._arrays[symbol]), redo, what=f"{key} array")
            if times.dtype != np.int64:
                raise DataError(f"{file}: expected int64 nanoseconds, got {times.dtype}; {redo}")
            return times
        try:  # format 1: ISO strings in index.json
            index = pd.DatetimeIndex(pd.to_datetime(value, utc=True))
        except (ValueError, TypeError) as err:
            raise DataError(f"{self.path / INDEX_FILE}: {key} of {symbol} are not ISO timestamps") from err
        if len(index) != len(self._arrays[symbol]):
            raise DataError(f"{self.path / INDEX_FILE}: {key} of {symbol} hold {len(index)} times for "
                            f"{len(self._arrays[symbol])} tokens; {redo}")
        return _ns(index)

    @property
    def has_side(self) -> bool:
        """Whether the store holds side-channel ids (data with open, high and low, written since they exist)."""
        return self.index is not None and isinstance(self.index.get("side"), dict) \
            and all("side" in self.index["per_symbol"][s] for s in self.symbols)

    @property
    def side_edges(self) -> list[list[float]]:
        """The side channels' bin edges (side.py), fit on the store's train split."""
        redo = "re-create the store with `pricegpt tokenize`"
        if not self.has_side:
            raise DataError(f"{self.path} has no side channels (the data has no open/high/low columns, or the store "
                            f"was written by an older pricegpt); {redo}")
        edges = self.index["side"].get("edges")
        if not (isinstance(edges, list) and len(edges) == len(SIDE_CHANNELS)
                and all(isinstance(e, list) and len(e) < SIDE_BINS
                        and all(isinstance(x, (int, float)) and not isinstance(x, bool) and np.isfinite(x) for x in e)
                        and all(a < b for a, b in zip(e, e[1:])) for e in edges)):
            raise DataError(f"{self.path / INDEX_FILE}: the side record's edges are damaged; {redo}")
        return [[float(x) for x in e] for e in edges]

    def side_ids(self, symbol: str) -> np.ndarray:
        """The symbol's side-channel ids (n_tokens, 3) int8, -1 unknown: a read-only memmap."""
        self._check_symbol(symbol)
        redo = "re-create the store with `pricegpt tokenize`"
        entry = self.index["per_symbol"][symbol] if self.index is not None else {}
        if "side" not in entry:
            raise DataError(f"{self.path}: symbol {symbol!r} has no side channels; {redo}")
        file = _inside(self.path, entry["side"], f"{self.path / INDEX_FILE}: side of {symbol!r}", redo)
        try:
            ids = np.load(file, mmap_mode="r", allow_pickle=False)
        except FileNotFoundError as err:
            raise DataError(f"{file}: side array of symbol {symbol!r} is missing; {redo}") from err
        except (OSError, ValueError, EOFError) as err:
            raise DataError(f"{file}: side array of symbol {symbol!r} is truncated or corrupted ({err}); {redo}") \
                from err
        if ids.dtype != np.int8 or ids.shape != (len(self._arrays[symbol]), len(SIDE_CHANNELS)):
            raise DataError(f"{file}: expected int8 of shape ({len(self._arrays[symbol])}, {len(SIDE_CHANNELS)}), "
                            f"got {ids.dtype} {ids.shape}; {redo}")
        return ids

    @property
    def n_tokens(self) -> int:
        return sum(len(a) for a in self._arrays.values())

    def __repr__(self) -> str:
        return (f"TokenStore({str(self.path)!r}, symbols={len(self.symbols)}, n_tokens={self.n_tokens}, "
                f"vocab_size={self.vocab_size})")


# ---------------------------------------------------------------------------------------------- reading
def _open_txt(path: Path, vocab_size: int | None) -> TokenStore:
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DataError(f"{path}: cannot be read ({err.strerror or err})") from err
    text = _decode_text(path, data)
    words = text.split()
    if not words:
        raise DataError(f"{path}: empty token file; expected whitespace-separated integer token ids")
    position = next((i for i, w in enumerate(words) if not _is_int(w)), None)
    if position is not None:
        raise DataError(f"{path}: {_where(text, position)}: '{words[position][:20]}' is not an integer token id")
    try:
        ids = np.array(words, dtype=np.int64)
    except OverflowError as err:
        position = next(i for i, w in enumerate(words) if abs(int(w)) >= 2**63)
        raise DataError(f"{path}: {_where(text, position)}: token id {words[position][:20]} is far too large") from err
    if ids.min() < 0:
        position = int(np.argmax(ids < 0))
        raise DataError(f"{path}: {_where(text, position)}: negative token id {ids[position]}")
    if vocab_size is not None and ids.max() >= vocab_size:
        position = int(np.argmax(ids >= vocab_size))
        raise DataError(f"{path}: {_where(text, position)}: token id {ids[position]} is outside the vocabulary "
                        f"[0, {vocab_size}); the file does not match this model or tokenizer")
    vocab = int(vocab_size) if vocab_size is not None else int(ids.max()) + 1
    n_train = int(len(ids) * TXT_TRAIN_FRACTION)
    bounds = {"train": (0, n_train), "val": (n_train, len(ids)), "test": (len(ids), len(ids))}
    return TokenStore(path, {"all": ids}, {"all": bounds}, vocab)


def _decode_text(path: Path, data: bytes) -> str:
    """UTF-8 text (a leading byte-order mark is dropped); UTF-16/32 and binary files are DataErrors saying so."""
    if data.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
        raise DataError(f"{path}: the file is UTF-32 text; save it as UTF-8 (plain text) and try again")
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) or _looks_utf16(data):
        raise DataError(f"{path}: the file is UTF-16 text (as some Windows editors save it); save it as UTF-8 "
                        "(plain text) and try again")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not a text file of token ids (byte {err.start} is not UTF-8); save it as UTF-8 "
                        "text of whitespace-separated ids") from None
    nul = data.find(b"\x00")
    if nul >= 0:
        raise DataError(f"{path}: holds a NUL byte at byte {nul}: a binary file, not a text file of token ids")
    return text


def _looks_utf16(data: bytes) -> bool:
    """UTF-16 without a byte-order mark: ASCII digits and spaces alternating with NUL bytes."""
    head = data[:1000]
    half = len(head) // 2
    return half > 0 and max(head[1::2].count(0), head[0::2].count(0)) >= 0.9 * half


def _is_int(word: str) -> bool:
    digits = word[1:] if word[:1] in "+-" else word
    return digits.isascii() and digits.isdigit()


def _where(text: str, position: int) -> str:
    """'line L, token T' of the position-th whitespace-separated word (both 1-based)."""
    seen = 0
    for line_no, line in enumerate(text.splitlines(), start=1):
        count = len(line.split())
        if seen + count > position:
            return f"line {line_no}, token {position - seen + 1}"
        seen += count
    return f"token {position + 1}"


def _open_store(path: Path, vocab_size: int | None) -> TokenStore:
    index_path = path / INDEX_FILE
    redo = "re-create it with `pricegpt tokenize`"
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise DataError(f"{path}: not a token store (no {INDEX_FILE}); {redo}") from err
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        reason = "nested too deeply" if isinstance(err, RecursionError) else str(err)
        raise DataError(f"{index_path}: cannot be read as JSON ({reason}); {redo}") from None
    required = {"vocab_size": int, "patch_len": int, "symbols": list, "per_symbol": dict, "train_end": str,
                "val_end": str, "tokenizer_hash": str, "tokenizer_kind": str}
    for key, kind in required.items():
        if not isinstance(index, dict) or not isinstance(index.get(key), kind):
            raise DataError(f"{index_path}: missing or invalid '{key}'; {redo}")
    for key in ("train_end", "val_end"):
        try:
            pd.Timestamp(index[key])
        except ValueError as err:
            raise DataError(f"{index_path}: '{key}' is not a timestamp; {redo}") from err
    store_vocab = index["vocab_size"]
    limit = min(store_vocab, vocab_size) if vocab_size is not None else store_vocab
    arrays, bounds = {}, {}
    for symbol in index["symbols"]:
        entry = index["per_symbol"].get(symbol) if isinstance(symbol, str) else None
        if not isinstance(entry, dict) or not isinstance(entry.get("file"), str) \
                or not isinstance(entry.get("n_tokens"), int) \
                or not isinstance(entry.get("split_bounds", entry.get("splits")), list):
            raise DataError(f"{index_path}: entry of symbol {symbol!r} is missing or incomplete; {redo}")
        file = _inside(path, entry["file"], f"{index_path}: file of symbol {symbol!r}", redo)
        tokens = _load_array(file, symbol, entry["n_tokens"], redo)
        if len(tokens) and int(tokens.max()) >= limit:
            position = int(np.argmax(np.asarray(tokens) >= limit))
            raise DataError(f"{file}: position {position}: token id {int(tokens[position])} is outside the "
                            f"vocabulary [0, {limit}); the store does not match this model or tokenizer")
        if "split_bounds" in entry:
            bounds[symbol] = _stops_bounds(entry["split_bounds"], len(tokens), index_path, symbol, redo)
        else:  # format 1: a label per token
            bounds[symbol] = _split_bounds(entry["splits"], len(tokens), index_path, symbol, redo)
        arrays[symbol] = tokens
    if not arrays:
        raise DataError(f"{index_path}: the store has no symbols; {redo}")
    return TokenStore(path, arrays, bounds, store_vocab, index)


def _inside(path: Path, name: str, what: str, redo: str) -> Path:
    if ".." in Path(name).parts or Path(name).is_absolute():
        raise DataError(f"{what} points outside the store; {redo}")
    return path / name


def _as_times(ns: np.ndarray) -> pd.DatetimeIndex:
    return pd.DatetimeIndex(np.asarray(ns, dtype=np.int64).view("datetime64[ns]")).tz_localize("UTC")


def _load_array(file: Path, symbol: str, n_tokens: int, redo: str, what: str = "token array") -> np.ndarray:
    try:
        tokens = np.load(file, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError as err:
        raise DataError(f"{file}: {what} of symbol {symbol!r} is missing; {redo}") from err
    except (OSError, ValueError, EOFError) as err:
        raise DataError(f"{file}: {what} of symbol {symbol!r} is truncated or corrupted ({err}); {redo}") from err
    if tokens.ndim != 1 or tokens.dtype.kind not in "ui":
        raise DataError(f"{file}: expected a 1-D integer array, got {tokens.dtype} {tokens.shape}; {redo}")
    if len(tokens) != n_tokens:
        raise DataError(f"{file}: holds {len(tokens)} values but index.json says {n_tokens} tokens; {redo}")
    if what == "token array" and tokens.dtype.kind == "i" and len(tokens) and int(tokens.min()) < 0:
        raise DataError(f"{file}: negative token id at position {int(np.argmax(np.asarray(tokens) < 0))}; {redo}")
    return tokens


def _stops_bounds(stops: list, n: int, index_path: Path, symbol: str, redo: str) -> dict[str, tuple[int, int]]:
    """Format 2: [train stop, val stop, test stop] -> {"train": (0, a), "val": (a, b), "test": (b, n)}."""
    if len(stops) != len(SPLIT_NAMES) or not all(isinstance(x, int) and not isinstance(x, bool) for x in stops) \
            or stops[-1] != n:
        raise DataError(f"{index_path}: split_bounds of symbol {symbol!r} do not match its {n} tokens; {redo}")
    if any(a > b for a, b in zip([0, *stops], stops)):
        raise DataError(f"{index_path}: split_bounds of symbol {symbol!r} are not in time order; {redo}")
    return {name: (start, stop) for name, start, stop in zip(SPLIT_NAMES, [0, *stops], stops)}


def _split_bounds(labels: list, n: int, index_path: Path, symbol: str, redo: str) -> dict[str, tuple[int, int]]:
    if len(labels) != n or any(label not in SPLIT_NAMES for label in labels):
        raise DataError(f"{index_path}: splits of symbol {symbol!r} do not match its {n} tokens; {redo}")
    order = [SPLIT_NAMES.index(label) for label in labels]
    if any(a > b for a, b in zip(order, order[1:])):
        raise DataError(f"{index_path}: splits of symbol {symbol!r} are not in time order; {redo}")
    bounds, start = {}, 0
    for i, name in enumerate(SPLIT_NAMES):
        stop = start + order.count(i)
        bounds[name] = (start, stop)
        start = stop
    return bounds
