"""Config files and overrides: YAML load/save and `--set section.key=value`, resolved in one order.

Resolution order: preset -> YAML file -> `--set section.key=value` overrides (-> `--max-steps`). Every mistake is a
ConfigError naming the file or key and what to do. YAML is read with `yaml.safe_load` only.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import yaml

from ..errors import ConfigError
from ..fileio import write_text
from .checks import MAX_STEPS, check_int, show
from .presets import preset
from .schema import RunConfig

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

