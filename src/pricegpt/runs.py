"""Run directories: loading a trained run (model + tokenizer + metadata), finding the latest run, token ids.

A run directory (see ARCHITECTURE.md) holds `model/` (best weights, config.json, meta.json), `tokenizer/`,
`config.yaml`, `metrics.csv` and, after evaluation, `calibration.json` and `eval/`. `run.json`, written by the
pipeline, records the price source the run was built from.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from .config import show
from .config.checks import MAX_TEMPERATURE, MIN_TEMPERATURE
from .errors import CheckpointError, DataError
from .fileio import write_json
from .model import GPT
from .tokenizer import load_tokenizer

RUNS_ROOT = Path("runs")


@dataclass
class Run:
    """A trained run: the model in eval mode, its tokenizer (None for a bare token-file run) and metadata."""

    dir: Path
    model: object
    tokenizer: object | None
    meta: dict = field(default_factory=dict)
    calibration: dict = field(default_factory=dict)
    pretrained: bool = False  # loaded from a forecaster folder (not a run directory: nothing is written into it)

    def save_calibration(self, calibration: dict) -> None:
        write_json(self.dir / "calibration.json", calibration)
        self.calibration = dict(calibration)

    @property
    def train_end(self) -> str | None:
        return self.meta.get("train_end")


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        value = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError, RecursionError) as err:
        reason = "nested too deeply" if isinstance(err, RecursionError) else str(err)
        raise CheckpointError(f"{path} is not valid JSON ({reason}); the run directory is damaged: restore the "
                              "file from a backup or rerun the stage that wrote it") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{path} should hold a JSON object; the run directory is damaged")
    return value


def find_tokenizer_dir(run_dir: Path) -> Path | None:
    for candidate in (run_dir / "model" / "tokenizer", run_dir / "tokenizer"):
        if (candidate / "config.json").is_file():
            return candidate
    return None


def load_run(run_dir: str | os.PathLike, device: str = "cpu", *, need_tokenizer: bool = False) -> Run:
    """Load RUN/model (best weights) and the run's tokenizer. Every problem is a CheckpointError naming the file."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"run directory {run_dir} not found; train one with `pricegpt train` or "
                              "`pricegpt pipeline`")
    model_dir = run_dir / "model"
    if not model_dir.is_dir():
        raise CheckpointError(f"{run_dir} has no model/ directory: training has not saved a best model yet "
                              "(or this is not a run directory)")
    model = GPT.from_pretrained(model_dir, map_location=device)
    model.eval()
    meta = {**_read_json(run_dir / "run.json"), **_read_json(model_dir / "meta.json")}
    _check_version(meta, model_dir / "meta.json")
    _check_meta_types(meta, run_dir)
    tokenizer = None
    tok_dir = find_tokenizer_dir(run_dir)
    if tok_dir is not None:
        tokenizer = load_tokenizer(tok_dir)
        if tokenizer.vocab_size != model.config.vocab_size:
            raise CheckpointError(
                f"{tok_dir} has {tokenizer.vocab_size} codes but the model in {model_dir} has a vocabulary of "
                f"{model.config.vocab_size}; they come from different runs — retrain or restore the tokenizer")
        expected = meta.get("tokenizer_hash")
        if expected and getattr(tokenizer, "hash", expected) != expected:
            raise CheckpointError(f"{tok_dir} is not the tokenizer the model in {model_dir} was trained with "
                                  "(hash differs); restore the run's tokenizer")
    elif need_tokenizer:
        raise CheckpointError(f"{run_dir} has no tokenizer (expected {run_dir}/tokenizer/config.json); it was "
                              "trained on a bare token file, so its tokens cannot be decoded to returns")
    return Run(dir=run_dir, model=model, tokenizer=tokenizer, meta=meta,
               calibration=_read_calibration(run_dir / "calibration.json"))


def _check_version(meta: dict, path: Path) -> None:
    version = meta.get("format_version")
    if version is None:
        return
    if isinstance(version, bool) or not isinstance(version, (int, float)) or version != version:
        raise CheckpointError(f"{path}: format_version {version!r} is not a number; the run directory is damaged")
    if version > 1:
        raise CheckpointError(f"{path} was written by a newer pricegpt (format {version}); upgrade pricegpt")


# what later stages take from a run's metadata (run.json + model/meta.json), with the types they need
_META_TYPES = {"data": str, "tokens": str, "train_end": str, "val_end": str, "tokenizer_hash": str, "horizon": int,
              "date_format": str}


def _check_meta_types(meta: dict, run_dir: Path) -> None:
    for key, kind in _META_TYPES.items():
        value = meta.get(key)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool)
                                  or (kind is int and value <= 0)):
            raise CheckpointError(f"{run_dir}: '{key}' in run.json / model/meta.json is {value!r}, not a "
                                  f"{'positive whole number' if kind is int else 'string'}; the run directory is "
                                  "damaged")


def _read_calibration(path: Path) -> dict:
    """RUN/calibration.json; its temperature must be a finite number > 0 (it scales every forecast's logits)."""
    calibration = _read_json(path)
    if not path.is_file():
        return calibration
    fix = "delete the file to forecast uncalibrated, or calibrate again with `pricegpt calibrate --run RUN`"
    if "temperature" not in calibration:
        raise CheckpointError(f"{path} has no temperature; {fix}")
    temperature = calibration["temperature"]
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
            or not MIN_TEMPERATURE <= temperature <= MAX_TEMPERATURE:
        raise CheckpointError(f"{path}: temperature {show(temperature)} is not a number in [{MIN_TEMPERATURE:g}, "
                              f"{MAX_TEMPERATURE:g}]; {fix}")
    return calibration


def latest_run(root: str | os.PathLike = RUNS_ROOT) -> Path:
    """The most recently trained run under `root` (by the time its best model was written)."""
    root = Path(root)
    candidates = [p for p in root.glob("*") if (p / "model" / "model.safetensors").is_file()] if root.is_dir() else []
    if not candidates:
        raise CheckpointError(f"no trained run found under {root}/; run ./quickstart.sh or `pricegpt train` first, "
                              "or pass --run")
    return max(candidates, key=lambda p: (p / "model" / "model.safetensors").stat().st_mtime)


def parse_token_ids(text: str, vocab_size: int, flag: str = "--seed-tokens") -> list[int]:
    """Parse space/comma separated ids and check them against the vocabulary (DataError otherwise)."""
    parts = text.replace(",", " ").split()
    if not parts:
        raise DataError(f"{flag} is empty; give token ids such as \"80 81 83 89 66\"")
    ids = []
    for part in parts:
        try:
            ids.append(int(part))
        except ValueError:
            raise DataError(f"{flag}: {show(part)} is not a token id; ids are whole numbers in [0, {vocab_size})") \
                from None
    bad = [show(i) for i in ids if not 0 <= i < vocab_size]
    if bad:
        raise DataError(f"{flag}: token id(s) {', '.join(bad[:5])} outside the vocabulary [0, {vocab_size}) of this "
                        "model")
    return ids
