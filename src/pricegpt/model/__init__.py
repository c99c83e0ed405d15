"""The GPT over market tokens (gpt.py) and its generation engine (engine.py)."""

from .engine import Engine, KVCache, as_contexts, generate, generation_bytes, make_generator, sample_next_token
from .gpt import GPT, PRESETS, GPTConfig, check_token_ids, preset_model_config

__all__ = [
    "GPT",
    "GPTConfig",
    "PRESETS",
    "preset_model_config",
    "check_token_ids",
    "Engine",
    "generate",
    "KVCache",
    "sample_next_token",
    "as_contexts",
    "make_generator",
    "generation_bytes",
]
