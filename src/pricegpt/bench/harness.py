"""The bench harness: settings, one `Result` per printed line, contenders timed in alternating rounds, the thread
count, the machine header, and the optional `transformers` peer.

Contenders are timed in turn (A, B, A, B, ...) after a warm-up, and a ratio is the median of the per-round ratios,
so a change of machine load between rounds hits both sides. Threads: PRICEGPT_BENCH_THREADS, else os.cpu_count().
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import ConfigError


@dataclass(frozen=True)
class BenchSettings:
    train_batch: int = 16
    train_rounds: int = 3
    train_bf16_gqa: bool = True  # also the GQA shape under bf16 autocast
    train_compile: tuple[str, ...] = ("fp32", "bf16")  # dtypes whose seed-shape runs also time torch.compile
    peak_size: int = 4096  # side of the square matmul that measures the peak
    gen_context: int = 192
    gen_paths: int = 64
    gen_tokens: int = 64
    gen_recompute_tokens: int = 4  # recompute is timed on this many tokens and extrapolated to gen_tokens
    gen_rounds: int = 3
    decode_tiny_origins: int = 64  # x decode_paths rows at the tiny preset's shape, 4 tokens after 60
    decode_paths: int = 256  # samples per origin (the forecaster's default), tiny and seed shapes
    decode_seed_tokens: int = 16  # 4 origins x decode_paths rows after 192 tokens at the seed shape
    decode_rounds: int = 7  # alternating rounds of the decode lines (their peers' times vary run to run)
    encode_bars: int = 10_000_000
    encode_naive_patches: int = 20_000
    encode_rounds: int = 3
    encode_fit_steps: int = 2000  # vqvae fitting steps of the benchmarked tokenizer (its speed does not depend on it)
    e2e_args: tuple[str, ...] = ()  # extra `pricegpt pipeline` flags
    scaling_base_tokens: int = 50_000
    scaling_steps: int = 40


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


# The first call compiles the forward graph and its backward pass the backward graph; the second would show a
# recompile (none at the bench's fixed shapes). Compile seconds = these calls less as many steady steps.
COMPILE_CALLS = 2


def cold_compile(contender: Callable[[], float], calls: int = COMPILE_CALLS) -> float:
    """Seconds of the first `calls` calls of a contender that runs a torch.compile'd model, in a fresh, empty
    inductor cache: what the first training run of a shape on this machine pays. Later runs of the same shape
    find torch's on-disk cache and compile in a fraction of it (benchmarks/README.md)."""
    from torch._inductor.utils import fresh_cache  # torch's own context for cold-compile measurements

    with fresh_cache():
        return sum(contender() for _ in range(calls))


def break_even_steps(compile_seconds: float, eager_step: float, compiled_step: float) -> float | None:
    """Training steps after which compiling has paid for itself: the compile seconds over the seconds a compiled
    step saves; None when it saves none."""
    saved = eager_step - compiled_step
    return compile_seconds / saved if saved > 0 else None


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
    try:  # the optional `bench` extra, imported only when a section needs its peer
        import transformers
    except ImportError:
        return None
    transformers.utils.logging.set_verbosity_error()
    return transformers


@contextlib.contextmanager
def quiet_log():
    logger = logging.getLogger("pricegpt")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def cpu_autocast(dtype: torch.dtype | None):
    return torch.autocast("cpu", dtype=dtype) if dtype is not None else torch.autocast("cpu", enabled=False)


def matmul_contender(size: int, dtype: torch.dtype) -> tuple[Callable[[], float], float]:
    """A (size, size) @ (size, size) matmul in `dtype` as a contender, and its FLOPs."""
    a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
    out = torch.empty(size, size, dtype=dtype)
    return wall(lambda: torch.matmul(a, b, out=out)), 2.0 * size**3


def model_matmuls_contender(config, batch_size: int, dtype: torch.dtype) -> tuple[Callable[[], float], float]:
    """Every matrix product of one training step of a GPT of `config` and nothing else, as a contender: per layer
    the q/k/v, output and two MLP weight products forward and their two backward products, and the attention's
    QK^T and AV over the full T x T square (per head, forward and backward), then the head's; and their FLOPs,
    which are GPT.flops_per_token x tokens. Its time is what the step would take if norms, activations, softmax,
    rotary, the loss and the optimizer cost nothing: flops over it is the highest MFU the shape can reach here."""
    c, tokens = config, batch_size * config.sequence_len
    E, D, T = c.n_embd, c.head_dim, c.sequence_len
    shapes = [(E, (c.n_head + 2 * c.n_kv_head) * D), (E, E), (E, c.mlp_ratio * E), (c.mlp_ratio * E, E)]
    x = {k: torch.randn(tokens, k).to(dtype) for k in {E, c.mlp_ratio * E}}
    weights = [torch.randn(k, n).to(dtype) for k, n in shapes]
    grads = {n: torch.randn(tokens, n).to(dtype) for _, n in shapes}
    head, head_grad = torch.randn(E, c.vocab_size).to(dtype), torch.randn(tokens, c.vocab_size).to(dtype)
    q = torch.randn(batch_size * c.n_head, T, D).to(dtype)
    scores = torch.randn(batch_size * c.n_head, T, T).to(dtype)

    def step():
        for _ in range(c.n_layer):
            for (k, n), w in zip(shapes, weights):
                x[k] @ w, grads[n] @ w.T, x[k].T @ grads[n]  # forward, input grad, weight grad
            for _ in range(3):  # forward, and the two products of each backward
                q @ q.transpose(1, 2), scores @ q
        x[E] @ head, head_grad @ head.T, x[E].T @ head_grad

    weight_macs = c.n_layer * sum(k * n for k, n in shapes) + E * c.vocab_size
    flops = tokens * (6 * weight_macs + 12 * c.n_layer * E * T)
    return wall(step), float(flops)
