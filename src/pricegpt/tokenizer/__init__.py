"""Tokenizers: price patches -> token ids -> log returns.

One interface (`Tokenizer`: fit, encode, decode, save_pretrained, from_pretrained, hash), three kinds (`vqvae`, the
default; `quantile`; `uniform`), three scalings (`static`, the default; `ewma`; `garch`: scaling.py) with
`scales` / `origin_state` / `encode_history` / `decode_paths` for forecasting, two decodes (`centroid`, `within`:
decoding.py), the token store the trainer reads, and `fit_to_dir`, which fits, measures and writes a tokenizer
directory. The tokenizer knows nothing of the model.
"""

from .base import DEFAULT_PATCH_LEN, FEATURES, Tokenizer, TokenizerConfig, create_tokenizer, load_tokenizer
from .bins import QuantileConfig, QuantileTokenizer, UniformConfig, UniformTokenizer
from .decoding import DECODES
from .patches import Patches, bar_features
from .report import fit_to_dir, tokenizer_report
from .scaling import SCALINGS
from .store import TokenStore, token_dtype, write_token_store
from .vqvae import VQVAEConfig, VQVAETokenizer, benchmark_encode

__all__ = ["DECODES", "DEFAULT_PATCH_LEN", "FEATURES", "SCALINGS", "Patches", "QuantileConfig", "QuantileTokenizer",
           "TokenStore", "Tokenizer", "TokenizerConfig", "UniformConfig", "UniformTokenizer", "VQVAEConfig",
           "VQVAETokenizer", "bar_features", "benchmark_encode", "create_tokenizer", "fit_to_dir", "load_tokenizer",
           "token_dtype", "tokenizer_report", "write_token_store"]
