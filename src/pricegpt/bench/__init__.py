"""`pricegpt bench`: pricegpt against real peers, each line a ratio measured in this process.

suite.py (run_bench, FULL / QUICK, --only, the summary), harness.py (settings, Result, alternating timing, the
machine header), peers.py (the pricegpt and Hugging Face Llama training steps, FLOPs per token), sections.py
(train, generate, encode), scaling.py (e2e and scaling, in subprocesses).
"""

from .harness import (
    BenchSettings,
    Result,
    _transformers,
    alternate,
    bench_threads,
    machine_header,
    matmul_contender,
    paired_ratio,
    wall,
)
from .peers import (
    llama_config,
    llama_flops_per_token,
    llama_train_step,
    pricegpt_train_step,
)
from .scaling import (
    MEMORY_PER_TOKEN,
    bench_e2e,
    bench_scaling,
    scaling_child,
    section_e2e,
    section_scaling,
    write_synthetic_store,
)
from .sections import (
    ENCODE_GOAL,
    HF_SKIPPED,
    KV_VS_HF_GOAL,
    KV_VS_RECOMPUTE_GOAL,
    MFU_GOAL,
    TRAIN_GOAL,
    bench_encode,
    bench_generate,
    bench_train,
    naive_encode,
    recompute_scale,
    section_encode,
    section_generate,
    section_train,
    synthetic_prices,
)
from .suite import (
    FULL,
    QUICK,
    SECTIONS,
    parse_only,
    profile_table,
    run_bench,
    summary_table,
)

__all__ = [
    "BenchSettings",
    "Result",
    "wall",
    "alternate",
    "paired_ratio",
    "bench_threads",
    "machine_header",
    "matmul_contender",
    "_transformers",
    "llama_config",
    "llama_flops_per_token",
    "pricegpt_train_step",
    "llama_train_step",
    "HF_SKIPPED",
    "TRAIN_GOAL",
    "MFU_GOAL",
    "KV_VS_RECOMPUTE_GOAL",
    "KV_VS_HF_GOAL",
    "ENCODE_GOAL",
    "bench_train",
    "section_train",
    "recompute_scale",
    "bench_generate",
    "section_generate",
    "synthetic_prices",
    "naive_encode",
    "bench_encode",
    "section_encode",
    "MEMORY_PER_TOKEN",
    "bench_e2e",
    "section_e2e",
    "write_synthetic_store",
    "scaling_child",
    "bench_scaling",
    "section_scaling",
    "SECTIONS",
    "FULL",
    "QUICK",
    "profile_table",
    "parse_only",
    "summary_table",
    "run_bench",
]
