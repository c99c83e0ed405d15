"""`pricegpt bench`: pricegpt against real peers, each line a ratio measured in this process.

Sections (`--only` picks some): train, generate, decode, encode (sections.py) and e2e, scaling (scaling.py); the peers
are in peers.py and the timing harness in harness.py. `FULL` and `QUICK` (`--quick`) are the settings;
`run_bench` yields each line as it is measured, then the summary table.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import torch

from ..errors import ConfigError
from .harness import BenchSettings, Result, bench_threads, machine_header
from .scaling import section_e2e, section_scaling
from .sections import section_decode, section_encode, section_generate, section_train

SECTIONS = ("train", "generate", "decode", "encode", "e2e", "scaling")

FULL = BenchSettings()
QUICK = BenchSettings(train_batch=4, train_rounds=2, train_bf16_gqa=False, peak_size=2048, gen_recompute_tokens=2,
                      gen_rounds=2, decode_seed_tokens=8, decode_rounds=3, encode_rounds=2, encode_fit_steps=300,
                      e2e_args=("--max-steps", "50", "--num-samples", "32"),
                      scaling_base_tokens=10_000, scaling_steps=20, train_compile=("fp32",))


def profile_table(fn: Callable[[], object], warmup: int = 1, row_limit: int = 15) -> str:
    """torch.profiler's top ops by self CPU time over one call of `fn` (after `warmup` calls), for the README."""
    from torch.profiler import ProfilerActivity, profile  # only for the README profile, not for `pricegpt bench`

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


def run_bench(quick: bool = False, only: str | None = None) -> Iterator[str]:
    """Run the chosen sections and yield the report line by line as it is measured (the machine header, each
    section's results and time), then the summary table; the command line prints the lines as they come."""
    sections = parse_only(only)
    settings = QUICK if quick else FULL
    threads = bench_threads()
    torch.set_num_threads(threads)
    yield machine_header(threads, quick)
    runners = {"train": lambda: section_train(settings), "generate": lambda: section_generate(settings),
               "decode": lambda: section_decode(settings),
               "encode": lambda: section_encode(settings), "e2e": lambda: section_e2e(settings, threads),
               "scaling": lambda: section_scaling(settings, threads)}
    results: list[Result] = []
    started = time.perf_counter()
    for name in sections:
        yield f"\n== {name}"
        section_start = time.perf_counter()
        for result in runners[name]():
            yield result.line()
            results.append(result)
        yield f"({name}: {time.perf_counter() - section_start:.0f} s)"
    yield f"\n== summary ({time.perf_counter() - started:.0f} s in all)"
    yield summary_table(results)
