"""Tokenizers: price patches -> token ids -> log returns. One interface, three kinds (vqvae, quantile, uniform),
a token store for the trainer, and `fit_to_dir` which fits, measures and writes a tokenizer directory."""

from .base import (DEFAULT_PATCH_LEN, FEATURES, Patches, Tokenizer, TokenizerConfig, bar_features, create_tokenizer,
                   load_tokenizer)
from .bins import QuantileTokenizer, UniformTokenizer
from .vqvae import VQVAETokenizer, benchmark_encode

__all__ = ["DEFAULT_PATCH_LEN", "FEATURES", "Patches", "QuantileTokenizer", "Tokenizer", "TokenizerConfig",
           "UniformTokenizer", "VQVAETokenizer", "bar_features", "benchmark_encode", "create_tokenizer",
           "load_tokenizer"]
