"""Fuzzing the readers of untrusted files: whatever bytes a user hands pricegpt, `load_prices` and
`TokenStore.open` either return valid data or raise a PriceGPTError, never another exception."""

from __future__ import annotations

import gzip
import json
import shutil

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pricegpt.data import load_prices, time_splits
from pricegpt.errors import PriceGPTError
from pricegpt.tokenizer import TokenStore, create_tokenizer, write_token_store

FUZZ = settings(max_examples=120, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

# ------------------------------------------------------------------------------------------------ price files
COLUMN_NAMES = ["date", "Date", "DATE", "timestamp", "time", "datetime", "ts", "Unnamed: 0", "close", "Close",
                "CLOSE", "Adj Close", "adj_close", "price", "last", "open", "high", "low", "volume", "vol",
                "symbol", "ticker", "pair", "", " ", "foo", "close ", "\ufeffdate", "a,b", '"close"', "close;x",
                "日期", "nan"]
DATES = st.one_of(
    st.datetimes(min_value=pd.Timestamp("1500-01-01").to_pydatetime(),
                 max_value=pd.Timestamp("2400-01-01").to_pydatetime()).flatmap(lambda d: st.sampled_from([
                     d.strftime("%Y-%m-%d"), d.strftime("%Y-%m-%dT%H:%M:%SZ"), d.strftime("%m/%d/%Y"),
                     d.strftime("%d.%m.%Y %H:%M"), d.strftime("%Y%m%d"), d.strftime("%Y-%m-%d %H:%M:%S+05:30")])),
    st.integers(-(2**63), 2**63).map(str),  # Unix seconds / ms / us / ns, and far out of range
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
)
CELLS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.floats(min_value=1e-3, max_value=1e4).map(lambda v: f"{v:.4f}"),
    st.integers(-10, 10**30).map(str),
    st.sampled_from(["", " ", "inf", "-inf", "Infinity", "nan", "NaN", "null", "N/A", "None", "1,5", "0x10", "1e999",
                     "-0", "+3", ".5", "5.", "1_000", "true", '"', '""', "'", "\\", "=1+1"]),
    DATES,
    st.text(max_size=8),
)


DATE_FORMATS = ["%Y-%m-%d", "%Y-%m-%dT%H:%M:%SZ", "%m/%d/%Y", "%d.%m.%Y %H:%M", "%Y%m%d", "%Y-%m-%d %H:%M:%S+05:30",
                "unix_s", "unix_ms"]


def _format_date(ts: pd.Timestamp, fmt: str) -> str:
    if fmt == "unix_s":
        return str(int(ts.timestamp()))
    if fmt == "unix_ms":
        return str(int(ts.timestamp() * 1000))
    return ts.strftime(fmt)


@st.composite
def csv_texts(draw) -> tuple[str, bytes]:
    """(suffix, bytes) of a price file: mostly plausible files with a few bad cells, sometimes pure noise."""
    if draw(st.integers(0, 3)) == 0:  # noise: any header, any cells
        columns = draw(st.lists(st.sampled_from(COLUMN_NAMES), min_size=0, max_size=6))
        rows = [[draw(CELLS) for _ in range(draw(st.integers(max(len(columns) - 1, 0), len(columns) + 1)))]
                for _ in range(draw(st.integers(0, 8)))]
    else:  # a timestamp and a close column, maybe more, cells mostly of the right kind
        kinds = ["date", "close"] + draw(st.lists(st.sampled_from(["open", "high", "low", "volume", "symbol", "adj"]),
                                                  max_size=3, unique=True))
        kinds = draw(st.permutations(kinds))
        names = {"date": ["date", "Date", "timestamp", "time", "datetime", "ts"], "close": ["close", "Close", "price"],
                 "open": ["open", "Open"], "high": ["high"], "low": ["low"], "volume": ["volume", "Vol"],
                 "symbol": ["symbol", "ticker"], "adj": ["Adj Close", "adj_close"]}
        columns = [draw(st.sampled_from(names[k])) for k in kinds]
        fmt = draw(st.sampled_from(DATE_FORMATS))
        start = pd.Timestamp(draw(st.sampled_from(["1999-12-30", "2020-02-28 23:00", "1970-01-01", "2262-04-10"])))
        step = pd.Timedelta(draw(st.sampled_from(["1D", "1h", "1min", "7D", "0s"])))
        n_rows = draw(st.integers(0, 10))
        order = draw(st.permutations(range(n_rows)))
        good = {"close": st.floats(1e-6, 1e6), "open": st.floats(1e-6, 1e6), "high": st.floats(1e-6, 1e6),
                "low": st.floats(1e-6, 1e6), "adj": st.floats(1e-6, 1e6), "volume": st.floats(0, 1e9),
                "symbol": st.sampled_from(["A", "B", "../x", "a b", "<s>"])}
        rows = []
        for i in order:
            row = []
            for kind in kinds:
                if draw(st.integers(0, 24)) == 0:
                    row.append(draw(CELLS))  # a bad cell
                elif kind == "date":
                    try:
                        row.append(_format_date(start + i * step, fmt))
                    except (OverflowError, ValueError):
                        row.append(draw(DATES))
                else:
                    value = draw(good[kind])
                    row.append(value if isinstance(value, str) else f"{value:.6g}")
            rows.append(row)
    delimiter = draw(st.sampled_from([",", ";", "\t", "|"]))
    newline = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    text = newline.join(delimiter.join(row) for row in [columns, *rows])
    data = text.encode(draw(st.sampled_from(["utf-8", "utf-8-sig", "latin-1"])), errors="replace")
    if draw(st.integers(0, 4)) == 0:  # garbage bytes spliced in somewhere
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.binary(max_size=16)) + data[at:]
    suffix = draw(st.sampled_from([".csv", ".tsv", ".txt", ".csv.gz"]))
    if suffix == ".csv.gz" and draw(st.integers(0, 4)) > 0:
        data = gzip.compress(data)
    return suffix, data


def check_canonical(frame: pd.DataFrame) -> None:
    assert str(frame["timestamp"].dtype) == "datetime64[ns, UTC]"
    assert frame["symbol"].map(type).eq(str).all()
    prices = frame[[c for c in ("open", "high", "low", "close") if c in frame]].to_numpy(dtype=np.float64)
    assert np.isfinite(prices).all() and (prices > 0).all()
    assert not frame.duplicated(["symbol", "timestamp"]).any()
    assert (frame.groupby("symbol").size() >= 2).all()
    key = list(zip(frame["symbol"], frame["timestamp"]))
    assert key == sorted(key)


@FUZZ
@given(case=csv_texts())
def test_load_prices_raises_only_user_errors(case, tmp_path_factory):
    suffix, data = case
    path = tmp_path_factory.mktemp("prices") / f"fuzz{suffix}"
    path.write_bytes(data)
    try:
        frame = load_prices(path)
    except PriceGPTError as err:
        assert str(err) and "\n" not in str(err).strip()
        return
    check_canonical(frame)


@FUZZ
@given(files=st.lists(csv_texts(), min_size=1, max_size=3))
def test_a_folder_of_fuzzed_files_raises_only_user_errors(files, tmp_path_factory):
    folder = tmp_path_factory.mktemp("folder")
    for k, (suffix, data) in enumerate(files):
        (folder / f"S{k}{suffix}").write_bytes(data)
    try:
        frame = load_prices(folder)
    except PriceGPTError:
        return
    check_canonical(frame)


# ------------------------------------------------------------------------------------------------ token files
WORDS = st.one_of(st.integers(-5, 300).map(str), st.integers(-(2**70), 2**70).map(str),
                  st.sampled_from(["1.5", "abc", "٣", "0x10", "1e3", "+7", "-0", "", "\x00", "nan", "ǅ"]),
                  st.text(max_size=4))


@FUZZ
@given(words=st.lists(WORDS, max_size=30), separators=st.lists(st.sampled_from([" ", "\n", "\t", "\r\n", ",", "  "]),
                                                               min_size=1, max_size=3),
       garbage=st.one_of(st.none(), st.binary(max_size=12)), vocab=st.one_of(st.none(), st.integers(1, 300)))
def test_text_token_files_raise_only_user_errors(words, separators, garbage, vocab, tmp_path_factory):
    text = "".join(w + separators[i % len(separators)] for i, w in enumerate(words))
    data = text.encode("utf-8", errors="replace") + (garbage or b"")
    path = tmp_path_factory.mktemp("tokens") / "tokens.txt"
    path.write_bytes(data)
    try:
        store = TokenStore.open(path, vocab_size=vocab)
    except PriceGPTError:
        return
    tokens = np.asarray(store.tokens("all"))
    assert len(tokens) > 0 and tokens.min() >= 0 and tokens.max() < store.vocab_size


@pytest.fixture(scope="module")
def good_store(tmp_path_factory):
    """A real two-symbol token store (quantile tokenizer, K=8) to damage."""
    rng = np.random.default_rng(0)
    times = pd.date_range("2021-01-01", periods=60, freq="D", tz="UTC")
    frame = pd.concat([pd.DataFrame({"timestamp": times, "symbol": s,
                                     "close": 100 * np.exp(np.cumsum(rng.normal(0, 0.01, len(times))))})
                       for s in ("AAA", "BBB")], ignore_index=True)
    splits = time_splits(frame)
    tokenizer = create_tokenizer("quantile", codebook_size=8, patch_len=2).fit(frame, splits.train_end)
    root = tmp_path_factory.mktemp("good") / "store"
    write_token_store(tokenizer, frame, root, splits)
    TokenStore.open(root)  # sanity: the undamaged store opens
    return root


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers(-300, 300) | st.floats(allow_nan=False)
                           | st.text(max_size=10) | st.sampled_from(["../../evil.npy", "/etc/passwd", "arrays/AAA.npy",
                                                                      "2021-01-01T00:00:00Z", "train", "val"]),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                                        max_size=4), max_leaves=12)


@st.composite
def store_damage(draw):
    """('index', path-in-index, new value) | ('array', symbol, new bytes) | ('npy', symbol, array)."""
    kind = draw(st.sampled_from(["index", "array", "npy", "whole index"]))
    if kind == "index":
        key = draw(st.sampled_from([("vocab_size",), ("patch_len",), ("symbols",), ("train_end",), ("val_end",),
                                    ("per_symbol",), ("per_symbol", "AAA"), ("per_symbol", "AAA", "file"),
                                    ("per_symbol", "AAA", "n_tokens"), ("per_symbol", "AAA", "splits"),
                                    ("per_symbol", "BBB", "patch_starts"), ("tokenizer_hash",)]))
        return kind, key, draw(JSON_VALUES)
    if kind == "whole index":
        return kind, None, draw(st.one_of(JSON_VALUES.map(json.dumps), st.binary(max_size=40)))
    symbol = draw(st.sampled_from(["AAA", "BBB"]))
    if kind == "array":
        return kind, symbol, draw(st.one_of(st.integers(0, 200), st.binary(max_size=200)))
    dtype = draw(st.sampled_from(["uint8", "int64", "float32", "uint16", "bool", "U3"]))
    shape = draw(st.sampled_from([(0,), (5,), (29,), (2, 3), ()]))
    values = draw(st.lists(st.integers(-3, 300), min_size=int(np.prod(shape)), max_size=int(np.prod(shape))))
    return kind, symbol, np.array(values).astype(dtype).reshape(shape)


@FUZZ
@given(damages=st.lists(store_damage(), min_size=1, max_size=3), vocab=st.one_of(st.none(), st.integers(1, 20)))
def test_damaged_token_stores_raise_only_user_errors(good_store, damages, vocab, tmp_path_factory):
    root = tmp_path_factory.mktemp("damaged") / "store"
    shutil.copytree(good_store, root)
    index = json.loads((root / "index.json").read_text())
    for kind, where, value in damages:
        if kind == "index":
            target = index
            for key in where[:-1]:
                target = target.get(key) if isinstance(target, dict) else None
            if isinstance(target, dict):
                target[where[-1]] = value
        elif kind == "whole index":
            index = value
        else:
            array = root / "arrays" / f"{where}.npy"
            if kind == "array":
                array.write_bytes(array.read_bytes()[:value] if isinstance(value, int) else value)
            else:
                np.save(array, value)
    if isinstance(index, (bytes, str)):
        (root / "index.json").write_bytes(index if isinstance(index, bytes) else index.encode())
    else:
        (root / "index.json").write_text(json.dumps(index))
    try:
        store = TokenStore.open(root, vocab_size=vocab)
    except PriceGPTError:
        return
    for symbol in store.symbols:
        tokens = np.asarray(store.tokens(symbol))
        assert tokens.ndim == 1 and (len(tokens) == 0 or tokens.max() < store.vocab_size)
        bounds = store.split_bounds(symbol)
        assert all(0 <= a <= b <= len(tokens) for a, b in bounds.values())
