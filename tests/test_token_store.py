"""The token store: round trip, self-containedness, any symbol name, splits, and typed errors for bad token files."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import assert_user_error, run_cli
from pricegpt.data import time_splits
from pricegpt.errors import DataError, OutputExistsError, TokenizerError
from pricegpt.tokenizer import TokenStore, create_tokenizer, load_tokenizer, write_token_store

PROPERTY = settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                         HealthCheck.function_scoped_fixture])


def walks(symbols, seed: int = 0, bars: int = 150) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    parts = []
    for symbol in symbols:
        returns = rng.uniform(0.005, 0.03) * rng.standard_t(4, bars - 1)
        parts.append(pd.DataFrame({"timestamp": pd.date_range("2021-01-01", periods=bars, freq="D", tz="UTC"),
                                   "symbol": symbol,
                                   "close": 20 * np.exp(np.concatenate([[0.0], np.cumsum(returns)]))}))
    return pd.concat(parts, ignore_index=True)


@pytest.fixture(scope="module")
def fitted():
    frame = walks(["AAA", "BBB", "CCC"])
    splits = time_splits(frame, "2021-03-31", "2021-04-30")
    return frame, splits, create_tokenizer("quantile", codebook_size=32, patch_len=4).fit(frame, splits.train_end)


def test_store_round_trip(fitted, tmp_path):
    frame, splits, tokenizer = fitted
    index = write_token_store(tokenizer, frame, tmp_path / "tokens", splits)
    store = TokenStore.open(tmp_path / "tokens")
    expected = tokenizer.encode(frame)
    assert store.symbols == sorted(expected) == index["symbols"]
    assert (store.vocab_size, store.patch_len, store.tokenizer_hash) == (32, 4, tokenizer.hash)
    assert store.train_end == splits.train_end and store.val_end == splits.val_end
    patches = tokenizer.patchify(frame)
    for symbol in store.symbols:
        tokens = store.tokens(symbol)
        assert isinstance(tokens, np.memmap) and tokens.dtype == np.uint8
        np.testing.assert_array_equal(tokens, expected[symbol])
        starts = store.patch_starts(symbol)
        assert starts.equals(pd.DatetimeIndex(patches[symbol].starts, tz="UTC"))
        labels = splits.label(patches[symbol].ends)
        bounds = store.split_bounds(symbol)
        for i, name in enumerate(("train", "val", "test")):
            start, stop = bounds[name]
            assert stop - start == int((labels == i).sum())
            assert (labels[start:stop] == i).all()
        assert bounds["train"][1] > 0 and bounds["test"][1] == len(tokens)
    all_tokens = (tmp_path / "tokens" / "all_tokens.txt").read_text().split()
    assert [int(t) for t in all_tokens] == [int(t) for s in store.symbols for t in expected[s]]
    assert load_tokenizer(store.tokenizer_dir).hash == tokenizer.hash
    with pytest.raises(OutputExistsError):
        write_token_store(tokenizer, frame, tmp_path / "tokens", splits)
    write_token_store(tokenizer, frame.iloc[:300], tmp_path / "tokens", splits, overwrite=True)
    assert TokenStore.open(tmp_path / "tokens").symbols == ["AAA", "BBB"]


def test_large_vocab_is_uint16_and_plain_text_reads_back(tmp_path):
    frame = walks(["X"], bars=1400)
    tokenizer = create_tokenizer("uniform", codebook_size=300, patch_len=2).fit(frame, "2023-06-30")
    write_token_store(tokenizer, frame, tmp_path / "s", time_splits(frame, "2023-06-30"))
    store = TokenStore.open(tmp_path / "s")
    assert store.tokens("X").dtype == np.uint16
    plain = TokenStore.open(tmp_path / "s" / "all_tokens.txt", vocab_size=300)
    assert plain.symbols == ["all"] and plain.vocab_size == 300 and plain.tokenizer_dir is None
    np.testing.assert_array_equal(plain.tokens("all"), store.tokens("X"))
    n = len(store.tokens("X"))
    assert plain.split_bounds("all") == {"train": (0, int(0.8 * n)), "val": (int(0.8 * n), n), "test": (n, n)}
    with pytest.raises(DataError, match="timestamps"):
        plain.patch_starts("all")


def test_leaky_splits_are_refused(fitted, tmp_path):
    frame, _, tokenizer = fitted
    with pytest.raises(TokenizerError, match="validation data"):
        write_token_store(tokenizer, frame, tmp_path / "t", time_splits(frame, "2021-02-28", "2021-04-30"))
    assert not (tmp_path / "t").exists()


@PROPERTY
@given(names=st.lists(st.text(min_size=1, max_size=12).filter(lambda s: s.strip() == s and s.strip()),
                      min_size=1, max_size=4, unique=True))
def test_any_symbol_name_stays_inside_the_store(names, tmp_path_factory):
    names = list(dict.fromkeys(names + ["../x", "a/b", "CON", "Aa", "aA", ".hidden"]))
    frame = walks(names, bars=40)
    tokenizer = create_tokenizer("quantile", codebook_size=8, patch_len=3).fit(frame, "2021-01-25")
    root = tmp_path_factory.mktemp("store")
    write_token_store(tokenizer, frame, root / "out", time_splits(frame, "2021-01-25", "2021-02-01"))
    written = {p.resolve() for p in root.rglob("*") if p.is_file()}
    assert all((root / "out").resolve() in p.parents for p in written)
    assert len(list((root / "out" / "arrays").glob("*.npy"))) == len(set(names))  # token arrays; times in subdirs
    assert len(list((root / "out" / "arrays").glob("*/*.npy"))) == 2 * len(set(names))
    store = TokenStore.open(root / "out")
    assert store.symbols == sorted(set(names))
    encoded = tokenizer.encode(frame)
    for name in names:
        np.testing.assert_array_equal(store.tokens(name), encoded[name])


# ------------------------------------------------------------------------------------------- bad files
@PROPERTY
@given(tokens=st.lists(st.integers(0, 50), min_size=1, max_size=40), where=st.integers(0, 39),
       bad=st.sampled_from(["abc", "1.5", "-3", "0x10", "1e3", "٣", "99999999999999999999999"]))
def test_bad_text_token_files_are_data_errors_naming_the_line(tokens, where, bad, tmp_path_factory):
    where = where % (len(tokens) + 1)
    words = [str(t) for t in tokens[:where]] + [bad] + [str(t) for t in tokens[where:]]
    lines = [" ".join(words[i:i + 7]) for i in range(0, len(words), 7)]
    path = tmp_path_factory.mktemp("txt") / "tokens.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataError) as err:
        TokenStore.open(path)
    assert str(path) in str(err.value) and f"line {where // 7 + 1}" in str(err.value)


def test_text_files_vocab_and_empty(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("80 81 83\n89 66\n")
    store = TokenStore.open(path)
    assert store.vocab_size == 90 and store.tokens("all").tolist() == [80, 81, 83, 89, 66]
    with pytest.raises(DataError, match=r"line 2, token 1.*\[0, 85\)"):
        TokenStore.open(path, vocab_size=85)
    path.write_text(" \n\n")
    with pytest.raises(DataError, match="empty"):
        TokenStore.open(path)
    path.write_bytes(b"\xff\xfe1 2")
    with pytest.raises(DataError, match="UTF-8"):
        TokenStore.open(path)
    with pytest.raises(DataError, match="no such"):
        TokenStore.open(tmp_path / "nothing.txt")


@pytest.mark.parametrize("damage", ["no index", "bad json", "missing array", "truncated array", "length mismatch",
                                    "id too large", "escaping file", "splits out of order", "unknown symbol"])
def test_broken_store_directories_are_data_errors(fitted, tmp_path, damage):
    frame, splits, tokenizer = fitted
    root = tmp_path / "s"
    write_token_store(tokenizer, frame, root, splits)
    index = json.loads((root / "index.json").read_text())
    array = root / index["per_symbol"]["AAA"]["file"]
    if damage == "no index":
        (root / "index.json").unlink()
    elif damage == "bad json":
        (root / "index.json").write_text("{")
    elif damage == "missing array":
        array.unlink()
    elif damage == "truncated array":
        array.write_bytes(array.read_bytes()[:-5])
    elif damage == "length mismatch":
        np.save(array, np.zeros(3, dtype=np.uint8))
    elif damage == "id too large":
        values = np.load(array)
        values[2] = 200
        np.save(array, values)
    elif damage == "escaping file":
        index["per_symbol"]["AAA"]["file"] = "../elsewhere.npy"
    elif damage == "splits out of order":
        index["per_symbol"]["AAA"]["split_bounds"] = index["per_symbol"]["AAA"]["split_bounds"][::-1]
    if damage in ("escaping file", "splits out of order"):
        (root / "index.json").write_text(json.dumps(index))
    if damage == "unknown symbol":
        with pytest.raises(DataError, match="ZZZ"):
            TokenStore.open(root).tokens("ZZZ")
        return
    with pytest.raises(DataError) as err:
        TokenStore.open(root)
    assert str(root) in str(err.value)


# ------------------------------------------------------------------------------- format 2: flat in the data
def _write_format1(root, tokens, starts, ends, labels, vocab_size=16):
    """A store as pricegpt wrote it before format 2: ISO times and a split label per patch in index.json."""
    (root / "arrays").mkdir(parents=True)
    np.save(root / "arrays" / "X.npy", tokens.astype(np.uint8))
    iso = [t.strftime("%Y-%m-%dT%H:%M:%SZ") for t in starts]
    counts = {name: int((labels == i).sum()) for i, name in enumerate(("train", "val", "test"))}
    index = {"format": 1, "tokenizer_kind": "quantile", "tokenizer_hash": "h", "vocab_size": vocab_size,
             "patch_len": 1, "train_end": iso[counts["train"] - 1], "val_end": iso[-1],
             "tokenizer_train_end": iso[counts["train"] - 1], "dtype": "uint8", "symbols": ["X"],
             "n_tokens": len(tokens), "split_counts": counts, "skipped": {},
             "per_symbol": {"X": {"file": "arrays/X.npy", "n_tokens": len(tokens), "split_counts": counts,
                                  "patch_starts": iso,
                                  "patch_ends": [t.strftime("%Y-%m-%dT%H:%M:%SZ") for t in ends],
                                  "splits": [("train", "val", "test")[i] for i in labels]}}}
    (root / "index.json").write_text(json.dumps(index))


def _write_format2(root, tokens, starts, ends, labels, vocab_size=16):
    from pricegpt.tokenizer.store import write_store

    iso = [t.strftime("%Y-%m-%dT%H:%M:%SZ") for t in starts]
    n_train = int((labels == 0).sum())
    header = {"tokenizer_kind": "quantile", "tokenizer_hash": "h", "vocab_size": vocab_size, "patch_len": 1,
              "train_end": iso[n_train - 1], "val_end": iso[-1], "tokenizer_train_end": iso[n_train - 1]}
    return write_store(root, {"X": (tokens, starts.to_numpy(), labels, ends.to_numpy())}, header, all_tokens=False)


@pytest.fixture
def twin_stores(tmp_path):
    """The same tokens in a format 1 store (hand-written) and a format 2 store (write_store)."""
    n = 700
    rng = np.random.default_rng(3)
    tokens = rng.integers(0, 16, n)
    starts = pd.date_range("2021-01-04 09:00", periods=n, freq="37min")
    ends = starts + pd.Timedelta("36min")
    labels = np.repeat([0, 1, 2], [500, 120, 80])
    _write_format1(tmp_path / "old", tokens, starts, ends, labels)
    index = _write_format2(tmp_path / "new", tokens, starts, ends, labels)
    return tmp_path / "old", tmp_path / "new", index, tokens, starts, ends


def test_format2_keeps_nothing_per_token_in_the_index(twin_stores):
    _, new, index, tokens, starts, ends = twin_stores
    entry = index["per_symbol"]["X"]
    assert index["format"] == 2 and entry["split_bounds"] == [500, 620, 700] and "splits" not in entry
    assert isinstance(entry["patch_starts"], str) and isinstance(entry["patch_ends"], str)
    assert (new / "index.json").stat().st_size < 2000
    store = TokenStore.open(new)
    for key, times in (("patch_starts", starts), ("patch_ends", ends)):
        ns = store.patch_times_ns("X", key)
        assert isinstance(ns, np.memmap) and ns.dtype == np.int64
        np.testing.assert_array_equal(ns, times.as_unit("ns").asi8)
    assert store.patch_starts("X").equals(starts.tz_localize("UTC"))
    assert store.patch_ends("X").equals(ends.tz_localize("UTC")) and store.has_patch_ends


def test_a_format1_store_opens_and_trains_the_same(twin_stores):
    from pricegpt.train import TokenData, read_token_source

    old, new, _, tokens, starts, ends = twin_stores
    a, b = TokenStore.open(old), TokenStore.open(new)
    np.testing.assert_array_equal(a.tokens("X"), tokens)
    np.testing.assert_array_equal(a.tokens("X"), b.tokens("X"))
    assert a.split_bounds("X") == b.split_bounds("X") == {"train": (0, 500), "val": (500, 620), "test": (620, 700)}
    np.testing.assert_array_equal(a.split_tokens("X", "val"), tokens[500:620])
    assert a.patch_starts("X").equals(b.patch_starts("X")) and a.patch_ends("X").equals(b.patch_ends("X"))
    assert a.has_patch_ends and b.has_patch_ends
    datas = []
    for path in (old, new):
        series, source, _ = read_token_source(path, calendar=True)
        datas.append(TokenData.from_series(series, 31, 16, source=source, calendar=True))
    for split in ("train", "val"):
        x, y = getattr(datas[0], split), getattr(datas[1], split)
        ids = np.arange(x.num_windows)
        assert x.num_windows == y.num_windows
        assert torch_equal(x.gather(ids), y.gather(ids))
        assert torch_equal(x.gather_calendar(ids), y.gather_calendar(ids))


def _on_a_map(array) -> bool:
    while array is not None:
        if isinstance(array, np.memmap) or type(array).__name__ == "mmap":
            return True
        array = getattr(array, "base", None)
    return False


def torch_equal(x, y) -> bool:
    return x.dtype == y.dtype and x.shape == y.shape and bool((x == y).all())


def test_the_sampler_reads_the_memory_maps_and_matches_a_flat_copy(twin_stores):
    import torch

    from pricegpt.data.calendar import calendar_ids
    from pricegpt.train import TokenData, WindowSet, read_token_source

    _, new, _, tokens, _, ends = twin_stores
    series, source, _ = read_token_source(new, calendar=True)
    data = TokenData.from_series(series, 15, 16, source=source, calendar=True)
    assert all(_on_a_map(s) for s in data.train.segments + data.val.segments)  # views, not copies
    ids = data.train.sample_ids(5, 2, 64)
    flat = torch.from_numpy(tokens[:500].astype(np.int32))  # the old sampler: an int32 copy of the stream
    starts = torch.from_numpy(data.train.window_starts(ids))
    expected = flat[starts.unsqueeze(1) + torch.arange(16)].long()
    got = data.train.gather(ids)
    assert got.dtype == torch.int64 and torch.equal(got, expected)
    tod, dow = calendar_ids(ends.to_numpy())
    eager = WindowSet([tokens[:500]], 16, calendars=[np.stack([tod, dow], axis=1)[:500].astype(np.int8)])
    assert torch.equal(data.train.gather_calendar(ids), eager.gather_calendar(ids))
    np.testing.assert_array_equal(np.asarray(series["X"][2]), np.stack([tod, dow], axis=1))
    # many segments: every window still comes from its own segment, in the order asked
    pieces = [tokens[i:i + 70] for i in range(0, 700, 70)]
    windows = WindowSet(pieces, 16)
    ids = np.random.default_rng(0).integers(0, windows.num_windows, 300)
    reference = np.concatenate(pieces)[windows.window_starts(ids)[:, None] + np.arange(16)]
    np.testing.assert_array_equal(windows.gather(ids).numpy(), reference)


def test_the_writer_refuses_split_labels_out_of_time_order(tmp_path):
    from pricegpt.tokenizer.store import write_store

    starts = pd.date_range("2021-01-01", periods=6, freq="D").to_numpy()
    header = {"tokenizer_kind": "q", "tokenizer_hash": "h", "vocab_size": 8, "patch_len": 1,
              "train_end": "2021-01-03T00:00:00Z", "val_end": "2021-01-05T00:00:00Z",
              "tokenizer_train_end": "2021-01-03T00:00:00Z"}
    with pytest.raises(DataError, match="time order"):
        write_store(tmp_path / "s", {"X": (np.arange(6), starts, np.array([0, 0, 1, 0, 2, 2]))}, header)
    assert not (tmp_path / "s").exists()


# ---------------------------------------------------------------------------------- streaming tokenization
def _same_files(a, b) -> int:
    """Assert two store directories hold the same files with the same bytes; returns how many."""
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files_a == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    for rel in files_a:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    return len(files_a)


@pytest.fixture(scope="module")
def stocks_tokenizer(stocks_frame):
    return create_tokenizer("quantile", codebook_size=32, patch_len=4).fit(stocks_frame)


def test_streaming_writes_the_in_memory_store_byte_for_byte(stocks_frame, stocks_tokenizer, tmp_path):
    """sample:stocks-daily as a folder of per-symbol CSV files and as one Parquet file of several row groups read in
    small batches: every file of the store (index, arrays, side ids, all_tokens.txt) as write_token_store's."""
    from pricegpt.data import load_prices
    from pricegpt.data.readers import stream_prices
    from pricegpt.tokenizer.stream import stream_token_store

    folder = tmp_path / "csv"
    folder.mkdir()
    for symbol, rows in stocks_frame.groupby("symbol"):
        rows.drop(columns="symbol").to_csv(folder / f"{symbol}.csv", index=False)
    parquet = tmp_path / "stocks.parquet"
    stocks_frame.iloc[::-1].to_parquet(parquet, row_group_size=2000, index=False)  # newest first: sorted on read
    for source, batch_rows in ((folder, 3000), (parquet, 2500), ("sample:stocks-daily", 10**6)):
        expected = write_token_store(stocks_tokenizer, load_prices(source), tmp_path / "memory")
        batches = list(stream_prices(source, batch_rows=batch_rows))
        symbols = [s for b in batches for s in b["symbol"].unique()]
        assert len(symbols) == len(set(symbols)) == 4 and len(batches) > (source != "sample:stocks-daily")
        index = stream_token_store(stocks_tokenizer, source, tmp_path / "stream", batch_rows=batch_rows)
        assert index == expected and "side" in index
        assert _same_files(tmp_path / "memory", tmp_path / "stream") > 20
        shutil.rmtree(tmp_path / "memory")
        shutil.rmtree(tmp_path / "stream")
    # explicit cutoffs, as `pricegpt tokenize --train-end --val-end` gives them
    splits = time_splits(stocks_frame, "2010-06-30", "2012-06-30")
    write_token_store(stocks_tokenizer, stocks_frame, tmp_path / "memory", splits)
    stream_token_store(stocks_tokenizer, parquet, tmp_path / "stream", train_end="2010-06-30", val_end="2012-06-30",
                       batch_rows=2500)
    _same_files(tmp_path / "memory", tmp_path / "stream")


def test_streaming_a_folder_of_mixed_files(tmp_path):
    """Long-format files of several symbols each, CSV and Parquet, one without volume (so no symbol keeps it), odd
    and case-colliding names, a symbol too short to tokenize: the same store as in memory."""
    from pricegpt.data import load_prices
    from pricegpt.tokenizer.stream import stream_token_store

    rng = np.random.default_rng(3)
    frame = walks(["abc", "ABC", "a/b", "Zed", "tiny"], seed=3, bars=120)
    frame = frame[(frame["symbol"] != "tiny") | (frame["timestamp"] < "2021-01-04")]
    spread = np.exp(np.abs(rng.normal(0, 0.004, (len(frame), 3))))
    frame = frame.assign(open=frame["close"] * spread[:, 0] / spread[:, 1], high=frame["close"] * spread[:, 0],
                         low=frame["close"] / spread[:, 2], volume=rng.integers(100, 10_000, len(frame)))
    frame["open"] = frame["open"].clip(frame["low"], frame["high"])
    folder = tmp_path / "data"
    folder.mkdir()
    frame[frame["symbol"].isin(["abc", "tiny"])].to_csv(folder / "one.csv", index=False)
    two = frame[frame["symbol"].isin(["ABC", "a/b"])].sample(frac=1, random_state=0)
    again = two[two["symbol"] == "ABC"].iloc[[5]]  # a duplicate timestamp, later in the file: the row kept
    pd.concat([two, again.assign(close=again["close"] * 1.5, high=again["high"] * 1.5)]).to_parquet(
        folder / "two.parquet", row_group_size=50, index=False)
    frame[frame["symbol"] == "Zed"].drop(columns="volume").to_csv(folder / "three.csv", index=False)
    loaded = load_prices(folder)
    assert "volume" not in loaded.columns
    tokenizer = create_tokenizer("quantile", codebook_size=16, patch_len=3).fit(loaded)
    write_token_store(tokenizer, loaded, tmp_path / "memory")
    index = stream_token_store(tokenizer, folder, tmp_path / "stream", batch_rows=60)
    assert index["symbols"] == ["ABC", "Zed", "a/b", "abc"] and list(index["skipped"]) == ["tiny"]
    assert index["side"]["edges"][2] == []  # volume: unknown everywhere, as in the folder's price frame
    _same_files(tmp_path / "memory", tmp_path / "stream")


def test_pooled_side_edges_are_exactly_fit_side_edges():
    from pricegpt.tokenizer.side import fit_side_edges
    from pricegpt.tokenizer.stream import pooled_side_edges

    rng = np.random.default_rng(0)
    for trial in range(40):
        parts = []
        for _ in range(int(rng.integers(1, 5))):
            values = (rng.standard_normal((int(rng.integers(0, 400)), 3)) * 10 ** rng.uniform(-3, 3))
            values = values.astype(np.float32) + np.float32(0.0)
            if trial % 3 == 1:  # many ties
                values = np.round(values, 1) + np.float32(0.0)
            values[rng.random(values.shape) < 0.2] = np.nan
            parts.append(values)
        assert pooled_side_edges(lambda parts=parts: iter(parts)) == fit_side_edges(np.concatenate(parts)), trial


def test_streaming_keeps_load_prices_errors(stocks_frame, stocks_tokenizer, tmp_path):
    from pricegpt.data import load_prices
    from pricegpt.tokenizer.stream import stream_token_store

    bad = stocks_frame.copy()
    bad.loc[7000, "close"] = -1.0
    bad.to_parquet(tmp_path / "bad.parquet", row_group_size=1500, index=False)
    with pytest.raises(DataError) as memory:
        load_prices(tmp_path / "bad.parquet")
    with pytest.raises(DataError) as stream:
        stream_token_store(stocks_tokenizer, tmp_path / "bad.parquet", tmp_path / "out", batch_rows=1000)
    assert str(stream.value) == str(memory.value) and "row 7001" in str(stream.value)
    assert not (tmp_path / "out").exists()
    stocks_tokenizer.save_pretrained(tmp_path / "tokenizer")
    result = run_cli("tokenize", "--tokenizer", tmp_path / "tokenizer", "--data", tmp_path / "bad.parquet", "--out",
                     tmp_path / "out")
    assert_user_error(result, "bad.parquet: row 7001, column 'close'", "not positive")
    folder = tmp_path / "twice"
    folder.mkdir()
    stocks_frame.to_csv(folder / "a.csv", index=False)
    stocks_frame[stocks_frame["symbol"] == "IBM"].to_csv(folder / "b.csv", index=False)
    with pytest.raises(DataError, match="is in two files"):
        stream_token_store(stocks_tokenizer, folder, tmp_path / "out")


def test_the_tokenize_bench_lines():
    from pricegpt.bench.scaling import bench_tokenize

    results = bench_tokenize(base_bars=4000, threads=1, factors=(1, 2))
    assert [r.name for r in results] == ["tokenize 1x bars/s", "tokenize 2x bars/s", "tokenize end to end bars/s",
                                         "tokenize peak RSS per bar"], [r.line() for r in results]
    assert results[2].value > 0 and results[2].goal == 5e6 and "4,000 bars, 2 symbols" in results[0].detail
