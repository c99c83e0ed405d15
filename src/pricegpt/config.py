"""Run configuration: one flat dataclass per component, presets, YAML load/save and `--set a.b=c` overrides.

A run's configuration is a `RunConfig` with one section per component: `model` (the model's own `GPTConfig`)
and `train` (`TrainConfig`). A section is added by giving `RunConfig` another dataclass field; loading,
saving, overrides and error messages follow from the field types.

Resolution order: preset -> YAML file -> `--set section.key=value` overrides (-> `--max-steps`).
Every mistake is a ConfigError naming the key and the valid choices: an unknown section, an unknown key inside a
section, a value of the wrong type, an unknown preset. YAML is read with `yaml.safe_load` only.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

from .errors import ConfigError
from .fileio import write_text
from .model.gpt import PRESETS as MODEL_PRESETS
from .model.gpt import GPTConfig

OPTIMIZERS = ("adamw", "muon")
DTYPES = ("fp32", "bf16")
DEVICES = ("auto", "cpu", "cuda")


def _choice(key: str, value, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(choices)}; got {value!r}")


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
        _choice("train.optimizer", self.optimizer, OPTIMIZERS)
        _choice("train.dtype", self.dtype, DTYPES)
        _choice("train.device", self.device, DEVICES)
        for name in ("max_steps", "batch_size", "eval_every", "eval_batches", "save_every", "log_every"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"train.{name} must be a positive integer, got {getattr(self, name)!r}")
        for name in ("warmup_steps", "global_batch_size", "early_stopping_patience", "num_threads"):
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name} must be >= 0, got {getattr(self, name)!r}")
        for name in ("lr", "muon_lr"):  # an infinite learning rate turns every weight into NaN
            if not 0 < getattr(self, name) < float("inf"):
                raise ConfigError(f"train.{name} must be a finite number > 0, got {getattr(self, name)!r}")
        for name in ("weight_decay", "grad_clip", "peak_flops"):
            if not 0 <= getattr(self, name) < float("inf"):
                raise ConfigError(f"train.{name} must be a finite number >= 0, got {getattr(self, name)!r}")
        for name in ("min_lr_frac", "beta1", "beta2", "muon_momentum"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"train.{name} must be in [0, 1], got {getattr(self, name)!r}")

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
        unknown = sorted(set(d) - set(sections))
        if unknown:
            raise ConfigError(f"unknown config section(s) {unknown} in {where}; valid sections are {sorted(sections)}")
        values = {}
        for name in sections:
            current = getattr(base, name)
            given = d.get(name)
            if given is None:
                values[name] = dataclasses.replace(current)
                continue
            if not isinstance(given, dict):
                raise ConfigError(f"section '{name}' in {where} must be a mapping of key -> value, got {given!r}")
            merged = dataclasses.asdict(current)
            for key, value in given.items():
                merged[key] = coerce(type(current), name, key, value)
            values[name] = type(current)(**merged)
        return cls(**values)


# ---------------------------------------------------------------------------------------------------- presets
# Financial token datasets are small (the embedded stocks sample has ~2,000 train tokens), so every preset
# regularises: dropout, weight decay, and early stopping on the validation loss, evaluated often.
# tiny: ~0.4M parameters, trains in well under a minute on 2 CPU cores. seed: the reference 19M-parameter model
# (a GPU, or patience). large: 85M parameters, for a GPU. The model shapes are the model's own presets.
TRAIN_PRESETS: dict[str, TrainConfig] = {
    "tiny": TrainConfig(lr=3e-4, warmup_steps=20, max_steps=400, batch_size=16, weight_decay=0.2, eval_every=20,
                        eval_batches=8, save_every=100, early_stopping_patience=8),
    "seed": TrainConfig(lr=3e-4, warmup_steps=100, max_steps=3000, batch_size=32, weight_decay=0.2,
                        eval_every=50, eval_batches=10, save_every=250, early_stopping_patience=10),
    "large": TrainConfig(lr=2e-4, warmup_steps=200, max_steps=10000, batch_size=32, global_batch_size=128,
                         weight_decay=0.2, eval_every=100, eval_batches=20, save_every=500,
                         early_stopping_patience=10, dtype="bf16"),
}
PRESET_DROPOUT = {"tiny": 0.2, "seed": 0.1, "large": 0.1}
PRESET_NAMES = tuple(TRAIN_PRESETS)
assert set(PRESET_NAMES) <= set(MODEL_PRESETS), "every run preset needs a model preset of the same name"


def preset(name: str) -> RunConfig:
    """A fresh RunConfig for preset `name` (tiny | seed | large)."""
    if name not in TRAIN_PRESETS:
        raise ConfigError(f"unknown preset {name!r}; valid presets are {', '.join(PRESET_NAMES)}")
    return RunConfig(model=dataclasses.replace(MODEL_PRESETS[name], dropout=PRESET_DROPOUT[name]),
                     train=dataclasses.replace(TRAIN_PRESETS[name]))


# ------------------------------------------------------------------------------------------------- load / save
def load_yaml(path: str | os.PathLike) -> dict:
    """The mapping in a YAML file (empty file -> {}); unreadable or malformed files are ConfigErrors."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read config file {path}: {err}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {' '.join(str(err).split())}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of section -> settings, got {type(data).__name__}")
    return data


def load_config(path: str | os.PathLike, base: RunConfig | None = None) -> RunConfig:
    return RunConfig.from_dict(load_yaml(path), base=base, where=str(path))


def save_config(config: RunConfig, path: str | os.PathLike) -> None:
    write_text(path, yaml.safe_dump(config.to_dict(), sort_keys=False))


def parse_override(text: str) -> tuple[str, str, str]:
    """'train.lr=1e-3' -> ('train', 'lr', '1e-3')."""
    key, sep, value = text.partition("=")
    section, dot, name = key.strip().partition(".")
    if not sep or not dot or not section or not name:
        raise ConfigError(f"--set {text!r} must look like section.key=value, e.g. train.lr=1e-3")
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
        config.train = dataclasses.replace(config.train, max_steps=max_steps)
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


# ----------------------------------------------------------------------------------------------------- types
_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")
_NULL = ("null", "none", "~", "")


def coerce(cls: type, section: str, key: str, value):
    """`value` (from YAML or a `--set` string) as the type of field `key` of dataclass `cls`, or ConfigError."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    if key not in names:
        raise ConfigError(f"unknown key '{section}.{key}'; valid keys in '{section}' are {', '.join(names)}")
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
                      f"got {value!r}")


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
        if isinstance(value, str):
            try:
                return int(value.strip().replace("_", ""))
            except ValueError:
                return _FAIL
        return _FAIL
    if kind is float:
        if isinstance(value, (int, float)):
            return float(value)
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
