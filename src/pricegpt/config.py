"""Run configuration: one flat dataclass per component, presets, YAML load/save, `--set a.b=c` overrides, and the
bound checks every layer uses for the values a user can pass.

A run's configuration is a `RunConfig` with one section per component: `model` (`GPTConfig`, the shape of the
GPT; the model is built from it alone) and `train` (`TrainConfig`). A section is added by giving `RunConfig`
another dataclass field; loading, saving, overrides and error messages follow from the field types.

Resolution order: preset -> YAML file -> `--set section.key=value` overrides (-> `--max-steps`).
Every mistake is a ConfigError naming the key, the value, the valid range and what to do: an unknown section or
key, a value of the wrong type, a number outside its bound (every number is finite and bounded by what a machine
can do), an unknown preset. YAML is read with `yaml.safe_load` only.

Bound checks for other layers (flags, API arguments): `check_int`, `check_number`, `check_seed`, `derive_seed`,
`check_temperature`, `check_top_k`, `check_top_p`, `check_num_samples`, `check_num_generate`, and the memory
budget `available_memory_bytes` / `memory_budget_bytes` / `check_memory`.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
import reprlib
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import yaml

from .errors import ConfigError
from .fileio import write_text

OPTIMIZERS = ("adamw", "muon")
DTYPES = ("fp32", "bf16")
DEVICES = ("auto", "cpu", "cuda")


# ------------------------------------------------------------------------------------------------ bound checks
MAX_SEED = 2**32 - 1  # a user's seed: numpy's and torch's common range, so one seed means the same everywhere
MAX_GENERATOR_SEED = 2**64 - 1  # what torch.Generator.manual_seed takes (derived, per-call seeds)
MAX_THREADS = 1024  # torch.set_num_threads(100000) crashes the interpreter
MAX_STEPS = 10**9
MAX_NUM_SAMPLES = 1_000_000  # sample paths per call; memory bounds it further (check_memory)
MAX_NUM_GENERATE = 100_000  # tokens generated per call: one decode step each (minutes for the seed model)
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

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def num_params(self) -> int:
        """Parameters of the GPT this config builds (computed, nothing allocated): embedding, blocks, head."""
        E, D = self.n_embd, self.head_dim
        attention = E * (self.n_head + 2 * self.n_kv_head) * D + E * E
        mlp = 2 * self.mlp_ratio * E * E
        return 2 * self.vocab_size * E + self.n_layer * (attention + mlp)

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
    save_every: int = 200  # steps between checkpoints in RUN/checkpoints/last
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
        check_seed(self.seed, "train.seed")
        check_int(self.num_threads, "train.num_threads", 0, MAX_THREADS,
                  f"0 uses torch's default; this machine has {os.cpu_count() or 1} cores")
        check_number(self.peak_flops, "train.peak_flops", 0, 1e18, hint="FLOP/s of one device, 0 when unknown")

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


# ---------------------------------------------------------------------------------------------------- presets
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
# seed: the reference shape, exactly 19,005,440 parameters (a GPU, or patience).
# large: 85,131,264 parameters, for a GPU.
PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        model=GPTConfig(sequence_len=64, n_layer=2, n_head=4, n_kv_head=2, n_embd=128), dropout=0.2,
        train=TrainConfig(lr=3e-4, warmup_steps=20, max_steps=400, batch_size=16, weight_decay=0.2, eval_every=20,
                          eval_batches=8, save_every=100, early_stopping_patience=8),
        tokenizer={"patch_len": 1}),
    "seed": Preset(
        model=GPTConfig(), dropout=0.1,
        train=TrainConfig(lr=3e-4, warmup_steps=100, max_steps=3000, batch_size=32, weight_decay=0.2,
                          eval_every=50, eval_batches=10, save_every=250, early_stopping_patience=10)),
    "large": Preset(
        model=GPTConfig(sequence_len=256, n_layer=12, n_head=12, n_kv_head=12, n_embd=768), dropout=0.1,
        train=TrainConfig(lr=2e-4, warmup_steps=200, max_steps=10000, batch_size=32, global_batch_size=128,
                          weight_decay=0.2, eval_every=100, eval_batches=20, save_every=500,
                          early_stopping_patience=10, dtype="bf16")),
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


# ------------------------------------------------------------------------------------------------- load / save
MAX_CONFIG_BYTES = 1_000_000  # a config file is a few hundred bytes


def load_yaml(path: str | os.PathLike) -> dict:
    """The mapping in a YAML file (empty file -> {}); unreadable or malformed files are ConfigErrors."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ConfigError(f"config file {path} is {size:,} bytes; a config is a short YAML mapping of "
                              "section -> settings (is it the right file?)")
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text; save it as UTF-8") from None
    except OSError as err:
        raise ConfigError(f"cannot read config file {path}: {err.strerror or err}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {' '.join(str(err).split())}") from None
    except RecursionError:
        raise ConfigError(f"config file {path} is nested too deeply; a config is a mapping of section -> "
                          "settings, e.g. 'train:\\n  lr: 0.001'") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of section -> settings, got {type(data).__name__}")
    return data


def load_config(path: str | os.PathLike, base: RunConfig | None = None) -> RunConfig:
    data = load_yaml(path)
    try:
        return RunConfig.from_dict(data, base=base, where=str(path))
    except ConfigError as err:
        if str(path) in str(err):
            raise
        raise ConfigError(f"config file {path}: {err}") from None


def save_config(config: RunConfig, path: str | os.PathLike) -> None:
    write_text(path, yaml.safe_dump(config.to_dict(), sort_keys=False))


def parse_override(text: str) -> tuple[str, str, str]:
    """'train.lr=1e-3' -> ('train', 'lr', '1e-3')."""
    key, sep, value = text.partition("=")
    section, dot, name = key.strip().partition(".")
    if not sep or not dot or not section or not name:
        raise ConfigError(f"--set {show(text)} must look like section.key=value, e.g. train.lr=1e-3")
    return section, name, value.strip()


def apply_overrides(config: RunConfig, overrides: list[str]) -> RunConfig:
    """Apply `--set section.key=value` strings in order; values are coerced to the field's type."""
    updates: dict[str, dict] = {}
    for text in overrides:
        section, name, value = parse_override(text)
        updates.setdefault(section, {})[name] = value
    return RunConfig.from_dict(updates, base=config, where="--set") if updates else config


def resolve_config(preset_name: str | None = None, config_file: str | os.PathLike | None = None,
                   overrides: list[str] | None = None, max_steps: int | None = None,
                   default_preset: str = "seed") -> RunConfig:
    """preset (default `default_preset`) -> config file -> overrides -> max_steps."""
    config = preset(preset_name or default_preset)
    if config_file is not None:
        config = load_config(config_file, base=config)
    config = apply_overrides(config, overrides or [])
    if max_steps is not None:
        config.train = dataclasses.replace(config.train, max_steps=check_int(max_steps, "--max-steps", 1, MAX_STEPS))
    return config


def explicit_keys(config_file: str | os.PathLike | None, overrides: list[str] | None) -> set[str]:
    """The 'section.key' names a config file or the overrides set (to tell user choices from defaults)."""
    keys = set()
    if config_file is not None:
        for section, values in load_yaml(config_file).items():
            if isinstance(values, dict):
                keys.update(f"{section}.{key}" for key in values)
    for text in overrides or []:
        section, name, _ = parse_override(text)
        keys.add(f"{section}.{name}")
    return keys


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
