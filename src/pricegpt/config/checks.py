"""Bound checks every layer uses for the values a user can pass (flags, API arguments, config keys).

`check_int`, `check_number`, `check_bool`, `check_choice`, `check_seed`, `derive_seed`, `check_temperature`,
`check_top_k`, `check_top_p`, `check_num_samples`, `check_num_generate`; `show` for a short repr in a message; and
the memory budget `available_memory_bytes` / `memory_budget_bytes` / `check_memory`. Each failure is a ConfigError
naming the key or flag, the value and the valid range.
"""

from __future__ import annotations

import math
import numbers
import os
import reprlib
from pathlib import Path

from ..errors import ConfigError

MAX_SEED = 2**32 - 1  # a user's seed: numpy's and torch's common range, so one seed means the same everywhere
MAX_GENERATOR_SEED = 2**64 - 1  # what torch.Generator.manual_seed takes (derived, per-call seeds)
MAX_THREADS = 1024  # torch.set_num_threads(100000) crashes the interpreter
MAX_STEPS = 10**9
MAX_NUM_SAMPLES = 1_000_000  # sample paths per call; memory bounds it further (check_memory)
MAX_NUM_GENERATE = 100_000  # tokens generated per call: one decode step each (minutes for the seed model)
MAX_HORIZON_BARS = 100_000  # a horizon is generated token by token; the engine's bound on new tokens
MAX_ENSEMBLE = 16  # models of pipeline --ensemble K: each is a full training run
MIN_TEMPERATURE, MAX_TEMPERATURE = 1e-3, 100.0  # below: logits / T overflow; above: uniform noise
MIN_TOP_P = 1e-3
MEMORY_FRACTION = 0.5  # of the memory available now: what one allocation-heavy call may plan to use

_short = reprlib.Repr()
_short.maxstring, _short.maxother, _short.maxlevel, _short.maxlist, _short.maxdict = 60, 60, 2, 4, 4


def show(value) -> str:
    """A short repr for an error message: a 1 GB string or a deeply nested list stays one readable line."""
    return _short.repr(value)


def _bound(lo, hi, lo_open: bool = False, hi_open: bool = False) -> str:
    return f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}" if isinstance(lo, float) \
        or isinstance(hi, float) else f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"


def _then(hint: str) -> str:
    return f"; {hint}" if hint else ""


def check_int(value, what: str, lo: int, hi: int, hint: str = "") -> int:
    """`value` as an int in [lo, hi], else a ConfigError naming `what` (a key or a flag), the value and the range."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigError(f"{what} must be a whole number in {_bound(lo, hi)}, got {show(value)}{_then(hint)}")
    if not lo <= value <= hi:
        raise ConfigError(f"{what} must be a whole number in {_bound(lo, hi)}, got {show(int(value))}{_then(hint)}")
    return int(value)


def check_number(value, what: str, lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False,
                 hint: str = "") -> float:
    """`value` as a finite float in the interval [lo, hi] (ends excluded when open), else a ConfigError."""
    interval = _bound(float(lo), float(hi), lo_open, hi_open)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"{what} must be a finite number in {interval}, got {show(value)}{_then(hint)}")
    number = float(value)
    inside = (lo < number if lo_open else lo <= number) and (number < hi if hi_open else number <= hi)
    if not (math.isfinite(number) and inside):
        raise ConfigError(f"{what} must be a finite number in {interval}, got {number:g}{_then(hint)}")
    return number


def check_path(value, what: str):
    """A caller's path argument: a non-empty str or os.PathLike, returned as given (ConfigError otherwise)."""
    if not isinstance(value, (str, os.PathLike)) or not str(value):
        raise ConfigError(f"{what} must be a path (a str or os.PathLike), got {show(value)}")
    return value


def check_bool(value, what: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{what} must be true or false, got {show(value)}")
    return value


def check_choice(value, what: str, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ConfigError(f"{what} must be one of {', '.join(choices)}; got {show(value)}")
    return value


def check_seed(value, what: str = "--seed") -> int:
    """A user's random seed: a whole number in [0, 2**32 - 1]."""
    return check_int(value, what, 0, MAX_SEED, "pick any whole number in that range, e.g. 0")


def derive_seed(seed: int, *keys: int) -> int:
    """A seed in [0, 2**63 - 1] for (seed, *keys), e.g. one per forecast origin or engine call: never overflows
    (unlike seed * K + i), and different keys give independent streams. Engine.generate takes it as `seed`."""
    import numpy as np

    entropy = [check_int(seed, "seed", 0, MAX_GENERATOR_SEED), *(int(k) % 2**64 for k in keys)]
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0] >> 1)


def check_temperature(value, what: str = "--temperature") -> float:
    """0 (greedy) or a finite number in [1e-3, 100]."""
    if not isinstance(value, bool) and isinstance(value, numbers.Real) and value == 0:
        return 0.0
    return check_number(value, what, MIN_TEMPERATURE, MAX_TEMPERATURE,
                        hint="0 samples greedily (always the most likely token); 1 is the model's own distribution")


def check_top_k(value, what: str = "--top-k") -> int | None:
    """None (off) or a whole number >= 1 (values above the vocabulary keep every token)."""
    return None if value is None else check_int(value, what, 1, 2**31 - 1, "leave it unset to keep every token")


def check_top_p(value, what: str = "--top-p") -> float | None:
    """None (off) or a number in [1e-3, 1]."""
    if value is None:
        return None
    return check_number(value, what, MIN_TOP_P, 1.0, hint="1 keeps every token; use --temperature 0 to always "
                                                          "take the most likely token")


def check_num_samples(value, what: str = "--num-samples") -> int:
    """Sample paths per call: [1, 1,000,000]; the caller also checks the memory they need (check_memory)."""
    return check_int(value, what, 1, MAX_NUM_SAMPLES)


def check_num_generate(value, what: str = "--num-generate") -> int:
    """Tokens to generate per path: [1, 100,000] (one model step each)."""
    return check_int(value, what, 1, MAX_NUM_GENERATE)


def available_memory_bytes() -> int:
    """Memory this process can still allocate: MemAvailable (Linux), within a cgroup limit when there is one,
    else the physical memory."""
    available = None
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        pass
    if available is None:
        try:
            available = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (AttributeError, ValueError, OSError):
            available = 8 * 2**30  # a platform without either: assume a small machine
    try:  # a container's limit (cgroup v2)
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
        if limit.isdigit():
            available = min(available, max(0, int(limit) - used))
    except (OSError, ValueError):
        pass
    return available


def memory_budget_bytes() -> int:
    """What one call may plan to allocate on the host: half of the memory available now."""
    return int(available_memory_bytes() * MEMORY_FRACTION)


def _gib(n: float) -> str:
    for unit, size in (("TiB", 2**40), ("GiB", 2**30)):
        if n >= size / 4:
            return f"{n / size:,.3g} {unit}"
    return f"{n / 2**20:.3g} MiB"


def check_memory(needed_bytes: float, what: str, hint: str, budget_bytes: int | None = None,
                 where: str = "this machine") -> None:
    """ConfigError when `what` needs more than `budget_bytes` (default: half the host memory available now)."""
    budget = memory_budget_bytes() if budget_bytes is None else budget_bytes
    if needed_bytes > budget:
        raise ConfigError(f"{what} needs about {_gib(needed_bytes)} of memory, more than the {_gib(budget)} "
                          f"allowed on {where} (half of what is free){_then(hint)}")
