"""`pricegpt bench`: pricegpt against real peers, each line a ratio measured in this process.

Sections (`--only` picks some):
  train     one optimizer step (forward + backward + AdamW) at the seed shape, fp32 and bf16 autocast, against
            Hugging Face `LlamaForCausalLM` of the same shape and parameter count; tokens/s and MFU, where MFU is
            each model's own training FLOPs per token times tokens/s over a large square matmul timed in the same
            rounds (the machine's matmul peak as it is right now, load included).
  generate  64 paths x 64 tokens after a 192-token context: the KV-cache engine against recomputing every step
            and against `transformers` `generate`.
  encode    vqvae tokenizer bars/s on 10M bars against a naive per-patch numpy loop (a small sample, extrapolated).
  e2e       wall time per stage of `pricegpt pipeline` on sample:stocks-daily with the tiny preset.
  scaling   training tokens/s and peak RSS as a memory-mapped token store grows 1x, 10x, 100x (one subprocess per
            size, so each peak RSS is its own).

Contenders are timed in turn (A, B, A, B, ...) after a warm-up, and a ratio is the median of the per-round ratios,
so a change of machine load between rounds hits both sides. Threads: PRICEGPT_BENCH_THREADS, else os.cpu_count().
Without `transformers` (the `bench` extra) the Hugging Face lines say "skipped" and the rest runs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from .errors import ConfigError
from .tokenizer.store import write_store

SECTIONS = ("train", "generate", "encode", "e2e", "scaling")
HF_SKIPPED = "pip install 'pricegpt[bench]'"  # printed as "skipped: pip install ..."
TRAIN_GOAL = 1.0  # x HF Llama tokens/s
MFU_GOAL = {"fp32": 0.85, "bf16": 0.60}  # of the matmul peak measured in the same rounds
KV_VS_RECOMPUTE_GOAL, KV_VS_HF_GOAL = 10.0, 2.0
ENCODE_GOAL = 5e6  # bars/s
# Flat memory: a memory-mapped store may at most leave its own pages (1 byte per token) resident, plus slack.
MEMORY_PER_TOKEN = 2.0  # bytes of peak RSS per extra token


@dataclass(frozen=True)
class BenchSettings:
    train_batch: int = 16
    train_rounds: int = 3
    train_bf16_gqa: bool = True  # also the GQA shape under bf16 autocast
    peak_size: int = 4096  # side of the square matmul that measures the peak
    gen_context: int = 192
    gen_paths: int = 64
    gen_tokens: int = 64
    gen_recompute_tokens: int = 4  # recompute is timed on this many tokens and extrapolated to gen_tokens
    gen_rounds: int = 3
    encode_bars: int = 10_000_000
    encode_naive_patches: int = 20_000
    encode_rounds: int = 3
    encode_fit_steps: int = 2000  # vqvae fitting steps of the benchmarked tokenizer (its speed does not depend on it)
    e2e_args: tuple[str, ...] = ()  # extra `pricegpt pipeline` flags
    scaling_base_tokens: int = 50_000
    scaling_steps: int = 40


FULL = BenchSettings()
QUICK = BenchSettings(train_batch=4, train_rounds=2, train_bf16_gqa=False, peak_size=2048, gen_recompute_tokens=2,
                      gen_rounds=2, encode_rounds=2, encode_fit_steps=300,
                      e2e_args=("--max-steps", "50", "--num-samples", "32"),
                      scaling_base_tokens=10_000, scaling_steps=20)


@dataclass
class Result:
    """One printed line: a measured value (None when skipped or failed), how to show it, and its goal if any."""

    name: str
    value: float | None
    shown: str
    detail: str = ""
    goal: float | None = None
    goal_text: str = ""
    lower_is_better: bool = False

    @property
    def verdict(self) -> str:
        if self.goal is None or self.value is None:
            return ""
        met = self.value <= self.goal if self.lower_is_better else self.value >= self.goal
        return "PASS" if met else "MISS"

    def line(self) -> str:
        if self.value is None:
            return f"{self.name:<30} {self.shown}: {self.detail}"
        goal = f"goal {self.goal_text}: {self.verdict}" if self.goal is not None else ""
        return f"{self.name:<30} {self.shown:>14}  {goal:<22} {self.detail}".rstrip()


# ---------------------------------------------------------------------------------------------------- timing
def wall(fn: Callable[[], object]) -> Callable[[], float]:
    """A contender that runs `fn` and returns its wall seconds."""

    def timed() -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    return timed


def alternate(contenders: dict[str, Callable[[], float]], rounds: int,
              warmup: list[Callable[[], object]] | None = None) -> dict[str, list[float]]:
    """Seconds of each contender per round, run in turn A, B, ..., A, B, ... after the warm-up calls (default:
    each contender once). A contender returns the seconds it measured (see `wall`)."""
    for fn in contenders.values() if warmup is None else warmup:
        fn()
    seconds: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, fn in contenders.items():
            seconds[name].append(fn())
    return seconds


def paired_ratio(slow: list[float], fast: list[float]) -> float:
    """Median over rounds of slow / fast: how many times faster `fast` was, round by round."""
    return statistics.median(s / f for s, f in zip(slow, fast))


def bench_threads() -> int:
    """PRICEGPT_BENCH_THREADS, else every core; applied with torch.set_num_threads."""
    text = os.environ.get("PRICEGPT_BENCH_THREADS")
    if text is None:
        return os.cpu_count() or 1
    if not text.isdigit() or int(text) < 1:
        raise ConfigError(f"PRICEGPT_BENCH_THREADS must be a positive whole number, got {text!r}")
    return int(text)


def machine_header(threads: int, quick: bool) -> str:
    """What the numbers were measured on: CPU model, cores, torch, threads, transformers, and the load."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError, StopIteration):
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    hf, cores, load = _transformers(), os.cpu_count() or 1, os.getloadavg()
    lines = [f"pricegpt bench{' --quick' if quick else ''}  ({time.strftime('%Y-%m-%d %H:%M')})",
             f"machine: {cpu}, {cores} cores, torch {torch.__version__}, {threads} threads, transformers "
             f"{hf.__version__ if hf else 'not installed'}, load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}"]
    if load[0] > 0.5 * cores:
        lines.append(f"warning: load average {load[0]:.1f} on {cores} cores: other processes share the CPU, so "
                     "absolute numbers are low and noisy (ratios are paired round by round)")
    return "\n".join(lines)


def _transformers():
    """The transformers module with its logging quietened, or None when the bench extra is not installed."""
    try:
        import transformers
    except ImportError:
        return None
    transformers.utils.logging.set_verbosity_error()
    return transformers


@contextlib.contextmanager
def _quiet_log():
    logger = logging.getLogger("pricegpt")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def _autocast(dtype: torch.dtype | None):
    return torch.autocast("cpu", dtype=dtype) if dtype is not None else torch.autocast("cpu", enabled=False)


def matmul_contender(size: int, dtype: torch.dtype) -> tuple[Callable[[], float], float]:
    """A (size, size) @ (size, size) matmul in `dtype` as a contender, and its FLOPs."""
    a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
    out = torch.empty(size, size, dtype=dtype)
    return wall(lambda: torch.matmul(a, b, out=out)), 2.0 * size**3


# ---------------------------------------------------------------------------------------------------- train
def llama_config(config, intermediate_size: int | None = None):
    """A transformers LlamaConfig of the GPT's shape. The default intermediate size, 2/3 of pricegpt's MLP width
    rounded to a multiple of 8, gives SwiGLU's three matrices the parameters and FLOPs of pricegpt's two."""
    from transformers import LlamaConfig

    if intermediate_size is None:
        intermediate_size = round(2 * config.mlp_ratio * config.n_embd / 3 / 8) * 8
    return LlamaConfig(vocab_size=config.vocab_size, hidden_size=config.n_embd, intermediate_size=intermediate_size,
                       num_hidden_layers=config.n_layer, num_attention_heads=config.n_head,
                       num_key_value_heads=config.n_kv_head, max_position_embeddings=config.sequence_len,
                       rope_parameters={"rope_theta": config.rope_base, "rope_type": "default"},
                       tie_word_embeddings=False, attention_bias=False, mlp_bias=False, attn_implementation="sdpa",
                       bos_token_id=None, eos_token_id=None, pad_token_id=0)


def llama_flops_per_token(model, config) -> float:
    """Llama's own 6N + attention, counted as GPT.flops_per_token counts pricegpt's (N without the embedding)."""
    n = sum(p.numel() for p in model.parameters()) - model.get_input_embeddings().weight.numel()
    return 6 * n + 12 * config.n_layer * config.n_embd * config.sequence_len


def _random_windows(config, batch_size: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, config.vocab_size, (batch_size, config.sequence_len + 1), generator=generator)


def pricegpt_train_step(config, batch_size: int, autocast: torch.dtype | None, seed: int = 0):
    """(one optimizer step as a function, training FLOPs per token) of a fresh GPT with the trainer's AdamW."""
    from .config import TrainConfig
    from .model import GPT
    from .train.optim import build_optimizers

    torch.manual_seed(seed)
    model = GPT(config)
    optimizers = build_optimizers(model, TrainConfig())
    windows = _random_windows(config, batch_size, seed)
    inputs, targets = windows[:, :-1], windows[:, 1:]

    def step():
        with _autocast(autocast):
            loss = model(inputs, targets)
        loss.backward()
        for optimizer in optimizers:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    return step, model.flops_per_token(config.sequence_len)


def llama_train_step(config, batch_size: int, autocast: torch.dtype | None, seed: int = 0):
    """The same for transformers' LlamaForCausalLM (loss from its own `labels` path) and torch AdamW."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(llama_config(config)).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    inputs = _random_windows(config, batch_size, seed)[:, :-1]

    def step():
        with _autocast(autocast):
            loss = model(input_ids=inputs, labels=inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step, llama_flops_per_token(model, config)


def bench_train(config, batch_size: int, dtype: str, rounds: int, peak_size: int) -> list[Result]:
    """pricegpt vs Llama training steps and a matmul, alternated; a ratio line and an MFU line."""
    gqa = config.n_kv_head != config.n_head
    label = f"train {dtype}{' GQA' if gqa else ''}"
    autocast = torch.bfloat16 if dtype == "bf16" else None
    ours, our_flops = pricegpt_train_step(config, batch_size, autocast)
    contenders = {"pricegpt": wall(ours)}
    hf = _transformers()
    if hf is not None:
        theirs, their_flops = llama_train_step(config, batch_size, autocast)
        contenders["llama"] = wall(theirs)
    contenders["matmul"], matmul_flops = matmul_contender(peak_size, torch.bfloat16 if autocast else torch.float32)
    seconds = alternate(contenders, rounds)
    tokens = batch_size * config.sequence_len
    peak = statistics.median(matmul_flops / s for s in seconds["matmul"])
    mfu = statistics.median(our_flops * tokens / s / (matmul_flops / m)
                            for s, m in zip(seconds["pricegpt"], seconds["matmul"]))
    ours_tok_s = tokens / statistics.median(seconds["pricegpt"])
    shape = f"B={batch_size} T={config.sequence_len}{f', GQA {config.n_kv_head} kv heads' if gqa else ''}"
    results = []
    if hf is None:
        results.append(Result(f"{label} vs HF Llama", None, "skipped", HF_SKIPPED))
        their_text = ""
    else:
        their_mfu = statistics.median(their_flops * tokens / s / (matmul_flops / m)
                                      for s, m in zip(seconds["llama"], seconds["matmul"]))
        their_text = f"; Llama MFU {their_mfu:.0%}"
        ratio = paired_ratio(seconds["llama"], seconds["pricegpt"])
        results.append(Result(
            f"{label} vs HF Llama", ratio, f"{ratio:.3f}x", goal=TRAIN_GOAL, goal_text=">= 1.0x",
            detail=f"{ours_tok_s:,.0f} vs {tokens / statistics.median(seconds['llama']):,.0f} tok/s ({shape}, Llama "
                   f"intermediate {llama_config(config).intermediate_size}; median of {rounds} alternating rounds)"))
    results.append(Result(
        f"{label} MFU", mfu, f"{mfu:.1%}", goal=MFU_GOAL[dtype] if not gqa else None,
        goal_text=f">= {MFU_GOAL[dtype]:.0%}",
        detail=f"{our_flops * tokens / statistics.median(seconds['pricegpt']) / 1e9:,.1f} of {peak / 1e9:,.1f} "
               f"GFLOP/s ({peak_size}^2 {dtype} matmul peak, same rounds){their_text}"))
    return results


def section_train(settings: BenchSettings) -> Iterator[Result]:
    from .model import GPTConfig

    seed = GPTConfig()
    gqa = replace(seed, n_kv_head=2)
    runs = [(seed, "fp32"), (seed, "bf16"), (gqa, "fp32")] + ([(gqa, "bf16")] if settings.train_bf16_gqa else [])
    for config, dtype in runs:
        yield from bench_train(config, settings.train_batch, dtype, settings.train_rounds, settings.peak_size)


# ------------------------------------------------------------------------------------------------- generate
def recompute_scale(context: int, measured: int, wanted: int) -> float:
    """Time of `wanted` recomputed tokens over that of the first `measured`: each step is a full forward over the
    whole window, so its cost grows with the window length (context + tokens so far)."""
    return sum(context + i for i in range(wanted)) / sum(context + i for i in range(measured))


def bench_generate(config, *, context_len: int, paths: int, new_tokens: int, recompute_tokens: int,
                   rounds: int) -> list[Result]:
    """KV-cache engine vs recompute (use_cache=False) vs HF generate, one context, `paths` samples each."""
    from .model import GPT, Engine

    assert context_len + new_tokens <= config.sequence_len, "the bench keeps generation inside one window"
    torch.manual_seed(0)
    engine = Engine(GPT(config).eval())
    context = torch.randint(0, config.vocab_size, (1, context_len), generator=torch.Generator().manual_seed(0))

    def ours(n: int, use_cache: bool = True, rows: int = paths):
        return lambda: engine.generate(context, n, num_samples=rows, seed=0, use_cache=use_cache)

    contenders = {"kv": wall(ours(new_tokens)), "recompute": wall(ours(recompute_tokens, use_cache=False))}
    warmup = [ours(2), ours(1, use_cache=False, rows=2)]  # every code path once, cheaply
    hf = _transformers()
    if hf is not None:
        llama = hf.LlamaForCausalLM(llama_config(config)).eval()

        def theirs(n: int, rows: int = paths):
            return lambda: llama.generate(input_ids=context, attention_mask=torch.ones_like(context), do_sample=True,
                                          top_k=0, max_new_tokens=n, min_new_tokens=n, num_return_sequences=rows,
                                          use_cache=True, pad_token_id=0)

        contenders["hf"] = wall(theirs(new_tokens))
        warmup.append(theirs(2, rows=2))
    seconds = alternate(contenders, rounds, warmup)
    scale = recompute_scale(context_len, recompute_tokens, new_tokens)
    kv = statistics.median(seconds["kv"])
    what = f"{paths} paths x {new_tokens} tokens after {context_len}"
    ratio = paired_ratio([s * scale for s in seconds["recompute"]], seconds["kv"])
    results = [Result(
        "generate KV vs recompute", ratio, f"{ratio:.1f}x", goal=KV_VS_RECOMPUTE_GOAL, goal_text=">= 10x",
        detail=f"KV {kv:.3g} s ({paths * new_tokens / kv:,.0f} tok/s) vs recompute "
               f"{statistics.median(seconds['recompute']) * scale:.3g} s, {what}; recompute timed on "
               f"{recompute_tokens} tokens, extrapolated in proportion to the window length")]
    if hf is None:
        results.append(Result("generate KV vs HF generate", None, "skipped", HF_SKIPPED))
    else:
        ratio = paired_ratio(seconds["hf"], seconds["kv"])
        results.append(Result(
            "generate KV vs HF generate", ratio, f"{ratio:.1f}x", goal=KV_VS_HF_GOAL, goal_text=">= 2x",
            detail=f"HF {statistics.median(seconds['hf']):.3g} s, {what} (do_sample, top_k=0, use_cache, "
                   f"num_return_sequences={paths}); median of {rounds} rounds"))
    return results


def section_generate(settings: BenchSettings) -> Iterator[Result]:
    from .model import GPTConfig

    yield from bench_generate(GPTConfig(), context_len=settings.gen_context, paths=settings.gen_paths,
                              new_tokens=settings.gen_tokens, recompute_tokens=settings.gen_recompute_tokens,
                              rounds=settings.gen_rounds)


# --------------------------------------------------------------------------------------------------- encode
def synthetic_prices(n_bars: int, seed: int = 0):
    """A daily close series of one symbol "SYN" with Student-t returns (the data benchmark_encode fits on)."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(0.01 * rng.standard_t(4, n_bars)))
    return pd.DataFrame({"timestamp": pd.date_range("2000-01-01", periods=n_bars, freq="D", tz="UTC"),
                         "symbol": "SYN", "close": close})


def naive_encode(tokenizer, patches: np.ndarray, symbol: str | None = None) -> np.ndarray:
    """The peer: one patch at a time through the same encoder and nearest-code search, plain numpy float32.
    patches (n, patch_len) -> ids (n,)."""
    linears = [m for m in tokenizer.model.encoder if isinstance(m, torch.nn.Linear)]
    layers = [(m.weight.detach().numpy(), m.bias.detach().numpy()) for m in linears]
    codebook = tokenizer.model.codebook.numpy()
    scale = tokenizer.scale(symbol)
    ids = np.empty(len(patches), dtype=np.int64)
    for i, patch in enumerate(patches):
        h = (patch[:, None] / scale).reshape(-1).astype(np.float32)
        for j, (weight, bias) in enumerate(layers):
            h = weight @ h + bias
            if j < len(layers) - 1:
                h = np.maximum(h, 0)
        ids[i] = np.argmin(((codebook - h) ** 2).sum(1))
    return ids


def bench_encode(n_bars: int, naive_patches: int, rounds: int, fit_steps: int) -> list[Result]:
    """tokenizer.benchmark_encode on n_bars vs naive_encode on a sample of naive_patches, alternated."""
    from .tokenizer import VQVAETokenizer, benchmark_encode

    frame = synthetic_prices(20_000)
    with _quiet_log():  # the fit's progress lines are not the benchmark
        tokenizer = VQVAETokenizer(steps=fit_steps).fit(frame, frame["timestamp"].iloc[-1], progress=False)
    sample = 0.01 * np.random.default_rng(1).standard_t(4, (naive_patches, tokenizer.patch_len))
    contenders = {"pricegpt": lambda: n_bars / benchmark_encode(n_bars, tokenizer=tokenizer),
                  "naive": wall(lambda: naive_encode(tokenizer, sample, "SYN"))}
    seconds = alternate(contenders, rounds, warmup=[lambda: benchmark_encode(10_000, tokenizer=tokenizer)])
    agree = float(np.mean(naive_encode(tokenizer, sample, "SYN") == tokenizer.encode_patches(sample, "SYN")))
    ours = n_bars / statistics.median(seconds["pricegpt"])
    naive_bars = naive_patches * tokenizer.patch_len
    ratio = paired_ratio([s * n_bars / naive_bars for s in seconds["naive"]], seconds["pricegpt"])
    return [Result("encode bars/s", ours, f"{ours / 1e6:.2f}M", goal=ENCODE_GOAL, goal_text=">= 5M bars/s",
                   detail=f"{n_bars / 1e6:g}M bars; {ratio:,.0f}x a naive per-patch numpy loop "
                          f"({naive_bars / statistics.median(seconds['naive']) / 1e6:.3f}M bars/s on "
                          f"{naive_patches:,} patches, extrapolated; same ids on {agree:.1%})")]


def section_encode(settings: BenchSettings) -> Iterator[Result]:
    yield from bench_encode(settings.encode_bars, settings.encode_naive_patches, settings.encode_rounds,
                            settings.encode_fit_steps)


# ------------------------------------------------------------------------------------------------------ e2e
def bench_e2e(threads: int, data: str = "sample:stocks-daily", extra_args: tuple[str, ...] = ()) -> list[Result]:
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
            return [Result("e2e pipeline", None, "failed", f"exit {proc.returncode}: {last}")]
        timings = json.loads((run / "timings.json").read_text())
    results = [Result(f"e2e {stage}", seconds, f"{seconds:.1f} s") for stage, seconds in timings.items()]
    results.append(Result("e2e total (wall)", total, f"{total:.1f} s",
                          detail=f"{shown}; {total - sum(timings.values()):.1f} s of it start-up and loading"))
    return results


def section_e2e(settings: BenchSettings, threads: int) -> Iterator[Result]:
    yield from bench_e2e(threads, extra_args=settings.e2e_args)


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
    from .config import TrainConfig
    from .model import GPT, preset_model_config
    from .train import TokenData, read_token_source
    from .train.optim import build_optimizers

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


# ------------------------------------------------------------------------------------------------------ run
def profile_table(fn: Callable[[], object], warmup: int = 1, row_limit: int = 15) -> str:
    """torch.profiler's top ops by self CPU time over one call of `fn` (after `warmup` calls), for the README."""
    from torch.profiler import ProfilerActivity, profile

    for _ in range(warmup):
        fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=row_limit)


def parse_only(only: str | None) -> tuple[str, ...]:
    if not only:
        return SECTIONS
    chosen = [name.strip() for name in only.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in SECTIONS]
    if unknown or not chosen:
        raise ConfigError(f"--only {only!r}: unknown section(s) {unknown}; choose among {','.join(SECTIONS)}")
    return tuple(name for name in SECTIONS if name in chosen)


def summary_table(results: list[Result]) -> str:
    lines = [f"{'benchmark':<30} {'measured':>14}  {'goal':<22} result", "-" * 76]
    for r in results:
        if r.goal is not None or r.value is None:
            lines.append(f"{r.name:<30} {r.shown:>14}  {r.goal_text:<22} {r.verdict or '-'}")
    return "\n".join(lines)


def run_bench(quick: bool = False, only: str | None = None) -> int:
    """Run the chosen sections, printing each line as it is measured, then the summary table. Returns 0."""
    sections = parse_only(only)
    settings = QUICK if quick else FULL
    threads = bench_threads()
    torch.set_num_threads(threads)
    print(machine_header(threads, quick), flush=True)
    runners = {"train": lambda: section_train(settings), "generate": lambda: section_generate(settings),
               "encode": lambda: section_encode(settings), "e2e": lambda: section_e2e(settings, threads),
               "scaling": lambda: section_scaling(settings, threads)}
    results: list[Result] = []
    started = time.perf_counter()
    for name in sections:
        print(f"\n== {name}", flush=True)
        section_start = time.perf_counter()
        for result in runners[name]():
            print(result.line(), flush=True)
            results.append(result)
        print(f"({name}: {time.perf_counter() - section_start:.0f} s)", flush=True)
    print(f"\n== summary ({time.perf_counter() - started:.0f} s in all)")
    print(summary_table(results))
    return 0
