"""The run configuration: one flat dataclass per component, each checking its own values.

A run's configuration is a `RunConfig` with one section per component: `model` (`GPTConfig`, the shape of the
GPT; the model is built from it alone) and `train` (`TrainConfig`). A section is added by giving `RunConfig`
another dataclass field; loading, overrides and error messages follow from the field types (`coerce` turns a YAML
or `--set` value into a field's type). Every number is finite and bounded by what a machine can do.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
import types
import typing
from dataclasses import asdict, dataclass, field, fields

from ..errors import ConfigError
from .checks import MAX_STEPS, MAX_THREADS, check_bool, check_choice, check_int, check_number, check_seed, show

OPTIMIZERS = ("adamw", "muon")
DTYPES = ("fp32", "bf16")
DEVICES = ("auto", "cpu", "cuda")


# ------------------------------------------------------------------------------------------------------- model
MAX_SEQUENCE_LEN = 2**20
MAX_VOCAB = 2**20
MAX_LAYERS = MAX_HEADS = 1024
MAX_EMBD = 65536
MAX_MLP_RATIO = 64
MAX_INIT_STD = 10.0
MAX_SOFTCAP = 1e4
MAX_ROPE_BASE = 1e9
# the keys that define the network a saved config.json must hold; the others only shape a fresh initialisation
ARCHITECTURE_KEYS = ("sequence_len", "vocab_size", "n_layer", "n_head", "n_kv_head", "n_embd", "mlp_ratio",
                     "rope_base", "logit_softcap")
# rows of the calendar embeddings: data.calendar.TOD_SLOTS times of day + 7 weekdays (config sits below data, so
# the number is repeated here; a test checks that GPT and GPTConfig count the same parameters)
CALENDAR_ROWS = 48 + 7
# side channels (tokenizer/side.py): range, gap and volume, each in at most SIDE_BINS bins plus one "unknown" row
SIDE_CHANNELS, SIDE_BINS = 3, 16


@dataclass
class GPTConfig:
    sequence_len: int = 256  # tokens of context the model is trained on
    vocab_size: int = 128  # the tokenizer's codebook size
    n_layer: int = 6
    n_head: int = 8  # query heads
    n_kv_head: int = 8  # key/value heads; fewer than n_head is grouped-query attention
    n_embd: int = 512
    mlp_ratio: int = 4  # MLP hidden width = mlp_ratio * n_embd
    rope_base: float = 10000.0
    logit_softcap: float | None = 15.0  # logits -> softcap * tanh(logits / softcap); 0 or None disables
    dropout: float = 0.0  # on attention weights and on each block's residual branch, training only
    embedding_init_std: float = 1.0  # the embedding is RMS-normed right after lookup, so its scale is free
    init_std: float | None = None  # std of the input-side matrices; None: 1/sqrt(fan_in) * min(1, sqrt(out/in))
    zero_init_proj: bool = True  # attention and MLP output projections start at zero (blocks start as identity)
    zero_init_head: bool = True  # lm_head starts at zero: the initial loss is exactly ln(vocab_size)
    # learned time-of-day and weekday embeddings of each token's last bar, added to the token embedding; they start
    # at zero, so a fresh calendar model computes what the same model without them does
    calendar: bool = False
    # learned embeddings of each token's side channels (range, gap and volume of its bars, binned; tokenizer/side.py)
    # added to the token embedding; they start at zero. Needs a token store of data with open/high/low.
    side: bool = False
    # the side channels' bin edges, fit on the token store's train split and copied in by the trainer (not a
    # setting: the model reads new data's side values through them)
    side_edges: list | None = None
    # asset identity: a learned embedding of each series' symbol (one row per training symbol and a last "unknown"
    # row, for symbols the model never saw) added to every token embedding; it starts at zero
    symbol_embedding: bool = False
    # the training symbols, in row order, copied in by the trainer from the token store (not a setting)
    symbols: list | None = None
    # a volatility head: from the same trunk, the log of the mean squared return of the next vol_bars bars in units
    # of the volatility scale at the forecast origin (QLIKE loss, weighted by train.vol_loss_weight); 0: no head
    vol_bars: int = 0
    # a shock head: from the same trunk, the class of the next bar's absolute shock among shock_bins bins (equal
    # numbers of the tokenizer's codes, by the size of their first bar's scaled return; train/shock_targets.py),
    # cross-entropy weighted by train.shock_loss_weight; 0: no head
    shock_bins: int = 0

    def __post_init__(self):
        for name, hi in (("sequence_len", MAX_SEQUENCE_LEN), ("vocab_size", MAX_VOCAB), ("n_layer", MAX_LAYERS),
                         ("n_head", MAX_HEADS), ("n_kv_head", MAX_HEADS), ("n_embd", MAX_EMBD),
                         ("mlp_ratio", MAX_MLP_RATIO)):
            check_int(getattr(self, name), f"model.{name}", 1, hi)
        if self.n_embd % self.n_head != 0:
            raise ConfigError(
                f"model.n_embd={self.n_embd} must be divisible by model.n_head={self.n_head}; "
                f"pick n_head among the divisors of n_embd"
            )
        if self.head_dim % 2 != 0:
            raise ConfigError(
                f"model head_dim = n_embd / n_head = {self.head_dim} must be even for rotary embeddings; "
                f"change n_embd or n_head"
            )
        if self.n_head % self.n_kv_head != 0:
            raise ConfigError(
                f"model.n_kv_head={self.n_kv_head} must divide model.n_head={self.n_head} "
                f"(each key/value head serves n_head / n_kv_head query heads)"
            )
        check_number(self.rope_base, "model.rope_base", 1, MAX_ROPE_BASE, lo_open=True,
                     hint="rotary frequencies are rope_base ** (-2i / head_dim); 10000 is the usual value")
        softcap = self.logit_softcap
        if softcap is not None and (isinstance(softcap, bool) or not isinstance(softcap, numbers.Real)
                                    or softcap != 0):
            check_number(softcap, "model.logit_softcap", 1, MAX_SOFTCAP,
                         hint="0 or null disables the cap; 15 is the default")
        check_number(self.dropout, "model.dropout", 0, 1, hi_open=True)
        check_number(self.embedding_init_std, "model.embedding_init_std", 0, MAX_INIT_STD, lo_open=True)
        if self.init_std is not None:
            check_number(self.init_std, "model.init_std", 0, MAX_INIT_STD, lo_open=True,
                         hint="null picks 1/sqrt(fan_in) per matrix")
        check_bool(self.zero_init_proj, "model.zero_init_proj")
        check_bool(self.zero_init_head, "model.zero_init_head")
        check_bool(self.calendar, "model.calendar")
        check_bool(self.side, "model.side")
        check_bool(self.symbol_embedding, "model.symbol_embedding")
        check_int(self.vol_bars, "model.vol_bars", 0, 4096, "0 builds no volatility head")
        check_int(self.shock_bins, "model.shock_bins", 0, 64, "0 builds no shock head; 2 to 64 bins")
        if self.shock_bins == 1:
            raise ConfigError("model.shock_bins=1 is one class, nothing to predict; use 0 (no head) or 2 to 64 bins")
        if self.side_edges is not None:
            if not self.side:  # a run's config.yaml reused with model.side=false: the edges mean nothing then
                self.side_edges = None
            else:
                check_side_edges(self.side_edges, "model.side_edges")
        if self.symbols is not None:
            if not self.symbol_embedding:  # as side_edges: a reused config.yaml of a symbol model
                self.symbols = None
            else:
                check_symbols(self.symbols, "model.symbols")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def num_params(self) -> int:
        """Parameters of the GPT this config builds (computed, nothing allocated): embeddings, blocks, head."""
        E, D = self.n_embd, self.head_dim
        attention = E * (self.n_head + 2 * self.n_kv_head) * D + E * E
        mlp = 2 * self.mlp_ratio * E * E
        calendar = CALENDAR_ROWS * E if self.calendar else 0
        side = SIDE_CHANNELS * (SIDE_BINS + 1) * E if self.side else 0
        vol = E if self.vol_bars else 0
        shock = E * self.shock_bins
        symbol = self.symbol_rows * E if self.symbol_embedding else 0
        return 2 * self.vocab_size * E + calendar + side + symbol + vol + shock + self.n_layer * (attention + mlp)

    @property
    def symbol_rows(self) -> int:
        """Rows of the symbol embedding: one per training symbol and a last "unknown" row."""
        return len(self.symbols or ()) + 1

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, where: str = "model config", require: tuple[str, ...] = ()) -> GPTConfig:
        """A config from a mapping (e.g. a saved config.json); unknown keys, and missing keys among `require`,
        are ConfigErrors."""
        if not isinstance(d, dict):
            raise ConfigError(f"{where} must be a mapping of field -> value, got {type(d).__name__}")
        known = [f.name for f in fields(cls)]
        unknown = sorted(str(k) for k in set(d) - set(known))
        if unknown:
            raise ConfigError(f"unknown model config keys {unknown} in {where}; valid keys are {sorted(known)}")
        missing = [k for k in require if k not in d]
        if missing:
            raise ConfigError(f"{where} lacks the model config key(s) {missing}")
        return cls(**d)


MAX_SYMBOLS = 100_000  # rows of a symbol embedding


def check_symbols(symbols, where: str) -> None:
    """ConfigError unless `symbols` is a list of distinct non-empty strings, at most MAX_SYMBOLS of them."""
    if not isinstance(symbols, (list, tuple)) or not all(isinstance(s, str) and s for s in symbols):
        raise ConfigError(f"{where} must be a list of symbol names (the trainer copies them from the token store), "
                          f"got {show(symbols)}")
    if len(symbols) > MAX_SYMBOLS:
        raise ConfigError(f"{where} lists {len(symbols):,} symbols, more than {MAX_SYMBOLS:,}; train a pooled model "
                          "(model.symbol_embedding=false) on so many series")
    if len(set(symbols)) != len(symbols):
        raise ConfigError(f"{where} lists a symbol twice; each symbol has one row")


def check_side_edges(edges, where: str) -> None:
    """ConfigError unless `edges` is SIDE_CHANNELS lists of strictly increasing finite numbers, each shorter than
    SIDE_BINS."""
    ok = isinstance(edges, list) and len(edges) == SIDE_CHANNELS and all(
        isinstance(e, list) and len(e) < SIDE_BINS
        and all(isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x) for x in e)
        and all(a < b for a, b in zip(e, e[1:])) for e in edges)
    if not ok:
        raise ConfigError(f"{where} must be {SIDE_CHANNELS} lists of at most {SIDE_BINS - 1} increasing finite "
                          "numbers (the bin edges the trainer copies from the token store); it is not a setting")


# ------------------------------------------------------------------------------------------------------- train
@dataclass
class TrainConfig:
    # optimisation
    optimizer: str = "adamw"  # "adamw" | "muon" (Muon for the blocks' matrices, AdamW for embedding and head)
    lr: float = 1e-3  # peak AdamW learning rate
    min_lr_frac: float = 0.1  # the cosine decays to lr * min_lr_frac at max_steps
    warmup_steps: int = 100  # linear warm-up from 0 to lr
    max_steps: int = 5000  # optimizer steps
    batch_size: int = 32  # windows per forward pass on one process (the micro-batch)
    global_batch_size: int = 0  # windows per optimizer step over all processes; 0: batch_size * world size
    weight_decay: float = 0.1  # decoupled, on 2-D weight matrices only
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping
    beta1: float = 0.9
    beta2: float = 0.95
    muon_lr: float = 0.02  # peak Muon learning rate (optimizer = "muon")
    muon_momentum: float = 0.95
    # evaluation, checkpoints, early stopping (regularisation: model.dropout and weight_decay)
    eval_every: int = 100  # steps between validation evaluations (and best-model saves)
    eval_batches: int = 10  # validation micro-batches per evaluation
    save_every: int = 200  # steps between checkpoints in RUN/checkpoints/step-N (LATEST names the newest)
    early_stopping_patience: int = 0  # stop after this many evaluations without a better val loss; 0: never
    log_every: int = 10  # steps between progress-bar / metrics.csv updates (the only host syncs)
    # machine
    dtype: str = "fp32"  # "fp32" | "bf16" (autocast with fp32 master weights)
    compile: bool = False  # torch.compile the model
    seed: int = 1337
    num_threads: int = 0  # torch intra-op threads; 0: torch's default
    device: str = "auto"  # "auto" | "cpu" | "cuda"
    peak_flops: float = 0.0  # hardware peak FLOP/s for MFU; 0: a known GPU's bf16 peak, else MFU is left empty
    tensorboard: bool = False  # also log to RUN/tensorboard (needs `pip install 'pricegpt[tensorboard]'`)
    # also log to MLflow (params, metrics, the model's config; needs `pip install 'pricegpt[mlflow]'`), at the
    # tracking URI of the MLFLOW_TRACKING_URI environment variable
    mlflow: bool = False
    # fraction of training windows whose calendar is hidden (model.calendar): the model then also forecasts well
    # without timestamps (the seed's generate --seed-tokens)
    calendar_dropout: float = 0.1
    # fraction of training tokens whose side channels are hidden (model.side): generated positions have none, so
    # the model must forecast well both ways
    side_dropout: float = 0.5
    # the side channels' tables (and the symbol embedding's) learn at train.lr times this: they start at zero and
    # AdamW moves them about lr a step
    # (10 had the lowest mean paired CRPS of 1, 10 and 30 on five validation sets, none significant; MODEL_README)
    side_lr_scale: float = 10.0
    # weight of the volatility head's QLIKE loss (model.vol_bars) next to the next-token cross-entropy
    vol_loss_weight: float = 0.1
    # weight of the shock head's cross-entropy (model.shock_bins) next to the next-token cross-entropy
    shock_loss_weight: float = 0.1
    # fraction of training windows whose symbol is hidden (model.symbol_embedding): they read the "unknown" row,
    # which then forecasts symbols the model never saw
    symbol_dropout: float = 0.1

    def __post_init__(self):
        check_choice(self.optimizer, "train.optimizer", OPTIMIZERS)
        check_choice(self.dtype, "train.dtype", DTYPES)
        check_choice(self.device, "train.device", DEVICES)
        for name, lo, hi in (("max_steps", 1, MAX_STEPS), ("warmup_steps", 0, MAX_STEPS),
                             ("eval_every", 1, MAX_STEPS), ("save_every", 1, MAX_STEPS), ("log_every", 1, MAX_STEPS),
                             ("eval_batches", 1, 10**6), ("early_stopping_patience", 0, 10**6),
                             ("batch_size", 1, 2**16), ("global_batch_size", 0, 2**24)):
            check_int(getattr(self, name), f"train.{name}", lo, hi)
        # an infinite or huge learning rate turns every weight into NaN at the first step
        check_number(self.lr, "train.lr", 0, 10, lo_open=True, hint="typical values are 1e-4 to 3e-3")
        check_number(self.muon_lr, "train.muon_lr", 0, 10, lo_open=True, hint="typical values are 0.005 to 0.05")
        check_number(self.min_lr_frac, "train.min_lr_frac", 0, 1)
        check_number(self.weight_decay, "train.weight_decay", 0, 100)
        check_number(self.grad_clip, "train.grad_clip", 0, 1e6, hint="0 disables clipping")
        # Adam divides by 1 - beta ** step: a beta of 1 divides by zero
        check_number(self.beta1, "train.beta1", 0, 1, hi_open=True)
        check_number(self.beta2, "train.beta2", 0, 1, hi_open=True)
        check_number(self.muon_momentum, "train.muon_momentum", 0, 1)
        check_bool(self.compile, "train.compile")
        check_bool(self.tensorboard, "train.tensorboard")
        check_bool(self.mlflow, "train.mlflow")
        check_seed(self.seed, "train.seed")
        check_int(self.num_threads, "train.num_threads", 0, MAX_THREADS,
                  f"0 uses torch's default; this machine has {os.cpu_count() or 1} cores")
        check_number(self.peak_flops, "train.peak_flops", 0, 1e18, hint="FLOP/s of one device, 0 when unknown")
        check_number(self.calendar_dropout, "train.calendar_dropout", 0, 1, hi_open=True,
                     hint="the fraction of training windows whose calendar is hidden; 0.1 is the default")
        check_number(self.symbol_dropout, "train.symbol_dropout", 0, 1, hi_open=True,
                     hint="the fraction of training windows whose symbol is hidden; 0.1 is the default")
        check_number(self.side_dropout, "train.side_dropout", 0, 1, hi_open=True,
                     hint="the fraction of training tokens whose side channels are hidden; 0.5 is the default")
        check_number(self.side_lr_scale, "train.side_lr_scale", 0, 1000, lo_open=True,
                     hint="the side channels' learning rate over train.lr")
        check_number(self.vol_loss_weight, "train.vol_loss_weight", 0, 100,
                     hint="the volatility head's loss weight; 0.1 is the default")
        check_number(self.shock_loss_weight, "train.shock_loss_weight", 0, 100,
                     hint="the shock head's loss weight; 0.1 is the default")

    def grad_accum_steps(self, world_size: int) -> int:
        """Micro-batches each process runs per optimizer step so that the step sees global_batch_size windows."""
        per_pass = self.batch_size * world_size
        global_batch = self.global_batch_size or per_pass
        if global_batch % per_pass:
            raise ConfigError(
                f"train.global_batch_size={global_batch} must be a multiple of train.batch_size * processes = "
                f"{self.batch_size} * {world_size} = {per_pass}; change one of them"
            )
        return global_batch // per_pass


@dataclass
class RunConfig:
    """Everything a run needs, one section per component. Add a section by adding a dataclass field."""

    model: GPTConfig = field(default_factory=GPTConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return {f.name: dataclasses.asdict(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: dict, base: RunConfig | None = None, where: str = "config") -> RunConfig:
        """Sections of `d` replace the matching keys of `base` (default: all defaults); unknown keys are errors."""
        if not isinstance(d, dict):
            raise ConfigError(f"{where} must be a mapping of section -> settings, got {type(d).__name__}")
        base = base or cls()
        sections = {f.name: f for f in fields(cls)}
        unknown = sorted(repr(str(k)[:60]) for k in set(d) - set(sections))
        if unknown:
            raise ConfigError(f"unknown config section(s) {', '.join(unknown)} in {where}; valid sections are "
                              f"{', '.join(sorted(sections))}")
        values = {}
        for name in sections:
            current = getattr(base, name)
            given = d.get(name)
            if given is None:
                values[name] = dataclasses.replace(current)
                continue
            if not isinstance(given, dict):
                raise ConfigError(f"section '{name}' in {where} must be a mapping of key -> value, got {show(given)}")
            merged = dataclasses.asdict(current)
            for key, value in given.items():
                merged[key] = coerce(type(current), name, key, value)
            values[name] = type(current)(**merged)
        return cls(**values)



def training_memory_bytes(config: RunConfig, world_size: int = 1) -> int:
    """A rough peak of one training process: fp32 weights, gradients and two optimizer moments, plus the
    activations of one micro-batch (per layer and position: ~16 n_embd-wide tensors and the attention scores)."""
    m, t = config.model, config.train
    weights = 16 * m.num_params()
    per_position = m.n_layer * (m.n_embd * (12 + 3 * m.mlp_ratio) + m.n_head * m.sequence_len) + 3 * m.vocab_size
    return weights + 4 * t.batch_size * m.sequence_len * per_position


# ----------------------------------------------------------------------------------------------------- types
_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")
_NULL = ("null", "none", "~", "")


def coerce(cls: type, section: str, key: str, value):
    """`value` (from YAML or a `--set` string) as the type of field `key` of dataclass `cls`, or ConfigError."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    if key not in names:
        raise ConfigError(f"unknown key '{section}.{str(key)[:60]}'; valid keys in '{section}' are "
                          f"{', '.join(names)}")
    if key in DERIVED_KEYS:
        if value is None or isinstance(value, list):  # as saved in RUN/config.yaml; __post_init__ checks it
            return value
        raise ConfigError(f"{section}.{key} is not a setting: {DERIVED_KEYS[key]}")
    hint = hints[key]
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union \
        else (hint,)
    allow_none = type(None) in options
    kinds = [t for t in options if t is not type(None)]
    if value is None or (isinstance(value, str) and allow_none and value.strip().lower() in _NULL):
        if allow_none:
            return None
        raise ConfigError(f"{section}.{key} cannot be null; it takes a {_type_name(kinds)}")
    for kind in kinds:
        converted = _convert(kind, value)
        if converted is not _FAIL:
            return converted
    raise ConfigError(f"{section}.{key} must be a {_type_name(kinds)}{' or null' if allow_none else ''}, "
                      f"got {show(value)}")


_FAIL = object()
DERIVED_KEYS = {"side_edges": "the trainer copies the side channels' bin edges from the token store",
                "symbols": "the trainer copies the training symbols from the token store"}


def _convert(kind: type, value):
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
            return value.strip().lower() in _TRUE
        return _FAIL
    if isinstance(value, bool):  # True is an int in Python, never in a config
        return _FAIL
    if kind is int:
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str) and len(value) <= 100:
            try:
                return int(value.strip().replace("_", ""))
            except ValueError:
                pass
            try:  # "1e6": a whole number written as a float (the bound check then names its range)
                number = float(value.strip())
            except ValueError:
                return _FAIL
            return int(number) if math.isfinite(number) and number.is_integer() else _FAIL
        return _FAIL
    if kind is float:
        if isinstance(value, (int, float)):
            try:
                return float(value)
            except OverflowError:  # an int beyond the float range: the bound check names it
                return math.inf
        if isinstance(value, str):  # YAML reads 1e-3 (no dot) as a string
            try:
                return float(value.strip())
            except ValueError:
                return _FAIL
        return _FAIL
    if kind is str:
        return value if isinstance(value, str) else _FAIL
    raise TypeError(f"config fields of type {kind} are not supported")


def _type_name(kinds: list[type]) -> str:
    words = {bool: "boolean (true/false)", int: "whole number", float: "number", str: "string"}
    return " or ".join(words.get(k, k.__name__) for k in kinds)
