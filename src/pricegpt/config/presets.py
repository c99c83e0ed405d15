"""The one preset table: each preset's model shape, dropout, training schedule and tokenizer options."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..errors import ConfigError
from .checks import show
from .schema import GPTConfig, RunConfig, TrainConfig


@dataclass(frozen=True)
class Preset:
    """Everything one preset decides: the model's shape, its dropout, the training schedule and the tokenizer
    options the pipeline fits with (on top of the tokenizer's defaults)."""

    model: GPTConfig
    dropout: float
    train: TrainConfig
    tokenizer: dict = field(default_factory=dict)


# Financial token datasets are small (the embedded stocks sample has ~2,000 train tokens), so every preset
# regularises: dropout, weight decay, and early stopping on the validation loss, evaluated often.
# tiny: a GQA model (393,216 parameters, ~2.4 MFLOP/token) that trains in well under a minute on 2 CPU cores;
#       n_kv_head=2 keeps the grouped-query path exercised end to end. One bar per token: with a few thousand bars
#       per symbol, 4-bar patches give the GPT a quarter of the tokens and it overfits before it beats the unigram.
# small: the pretrained model's shape (4 layers, n_embd 192, GQA; 1.6M parameters), for pooled corpora of a few
#        hundred thousand bars: still trains on 2 CPU cores in minutes.
# seed: the reference shape, exactly 19,005,440 parameters (a GPU, or patience).
# large: 85,131,264 parameters, for a GPU.
# Every preset tokenizes EWMA-standardised shocks (scaling "ewma", half-life 11.2 bars) decoded to code centroids,
# chosen on the validation split of four real datasets over static scaling and within-code decoding, and divides
# intraday returns by their time-of-day profile first (seasonal; daily data are unaffected), chosen on the
# validation split of EUR/USD hourly (the tables are in MODEL_README, "Scaling: the ablation" and "Calendar").
# train.compile (torch.compile) stays off in every preset: at each preset's own training shape, with its dropout, a
# compiled step was slower than an eager one on CPU (tiny 0.98x, small 0.92x, seed at batch 8 0.93x; 1 thread,
# 2026-12-01), so the 30-45 s of a cold compile never pays back. Dropout is why: without it the small shape
# compiles to 1.25x (paying off after ~270 steps) and the seed shape to 1.1-1.9x (benchmarks/README.md, issue 19).
RUNNING_SCALE = {"scaling": "ewma", "decode": "centroid", "seasonal": True}
PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        model=GPTConfig(sequence_len=64, n_layer=2, n_head=4, n_kv_head=2, n_embd=128), dropout=0.2,
        train=TrainConfig(lr=3e-4, warmup_steps=20, max_steps=400, batch_size=16, weight_decay=0.2, eval_every=20,
                          eval_batches=8, save_every=100, early_stopping_patience=8),
        tokenizer={"patch_len": 1, **RUNNING_SCALE}),
    "small": Preset(
        model=GPTConfig(sequence_len=128, n_layer=4, n_head=4, n_kv_head=2, n_embd=192), dropout=0.1,
        train=TrainConfig(lr=3e-4, warmup_steps=100, max_steps=3000, batch_size=32, weight_decay=0.2,
                          eval_every=50, eval_batches=16, save_every=250, early_stopping_patience=6),
        tokenizer={"patch_len": 1, **RUNNING_SCALE}),
    "seed": Preset(
        model=GPTConfig(), dropout=0.1,
        train=TrainConfig(lr=3e-4, warmup_steps=100, max_steps=3000, batch_size=32, weight_decay=0.2,
                          eval_every=50, eval_batches=10, save_every=250, early_stopping_patience=10),
        tokenizer=dict(RUNNING_SCALE)),
    "large": Preset(
        model=GPTConfig(sequence_len=256, n_layer=12, n_head=12, n_kv_head=12, n_embd=768), dropout=0.1,
        train=TrainConfig(lr=2e-4, warmup_steps=200, max_steps=10000, batch_size=32, global_batch_size=128,
                          weight_decay=0.2, eval_every=100, eval_batches=20, save_every=500,
                          early_stopping_patience=10, dtype="bf16"),
        tokenizer=dict(RUNNING_SCALE)),
}
PRESET_NAMES = tuple(PRESETS)
MODEL_PRESETS: dict[str, GPTConfig] = {name: p.model for name, p in PRESETS.items()}  # the shapes alone


def _preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {show(name)}; valid presets are {', '.join(PRESET_NAMES)}")
    return PRESETS[name]


def preset_model_config(name: str, **overrides) -> GPTConfig:
    """A fresh copy of preset `name`'s model shape (dropout 0) with `overrides` (e.g. vocab_size from the
    tokenizer)."""
    return GPTConfig.from_dict({**_preset(name).model.to_dict(), **overrides})


def preset(name: str) -> RunConfig:
    """A fresh RunConfig for preset `name` (tiny | seed | large)."""
    chosen = _preset(name)
    return RunConfig(model=dataclasses.replace(chosen.model, dropout=chosen.dropout),
                     train=dataclasses.replace(chosen.train))


def preset_tokenizer_options(name: str) -> dict:
    """The tokenizer options preset `name` fits with in the pipeline (a fresh dict)."""
    return dict(_preset(name).tokenizer)

