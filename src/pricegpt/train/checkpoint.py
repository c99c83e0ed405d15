"""What a run directory keeps so that no work is lost: the resume checkpoint, the best model, the tokenizer copy.

RUN/checkpoints/last/{model.safetensors, trainer_state.pt, meta.json}: written every `train.save_every` steps and
on Ctrl-C / SIGTERM. The directory is built under a temporary sibling and renamed over the previous one only when
complete (fileio.atomic_dir); a kill between the two renames leaves the previous checkpoint as `.last.old`, which
`find_checkpoint` picks up. trainer_state.pt holds tensors and plain values only and is read with
`torch.load(..., weights_only=True)`.

RUN/model/{config.json, model.safetensors, meta.json, tokenizer/}: the best model by validation loss, replaced
atomically as a whole. meta.json records the step, losses and the data source (path, train_end, val_end,
tokenizer hash).
"""

from __future__ import annotations

import json
import pickle
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from ..errors import CheckpointError
from ..fileio import atomic_dir, atomic_path, write_json

CHECKPOINT_DIR = Path("checkpoints") / "last"
MODEL_DIR = "model"
TOKENIZER_DIR = "tokenizer"
WEIGHTS_FILE = "model.safetensors"
STATE_FILE = "trainer_state.pt"
META_FILE = "meta.json"
STATE_KEYS = ("step", "optimizers", "best_val_loss", "best_step", "evals_since_best", "global_batch_size", "rng")


# ------------------------------------------------------------------------------------------------ RNG states
def rng_state() -> dict:
    """Every global random number generator's state, as tensors and plain values."""
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": np_kind, "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "cached_gaussian": float(np_gauss)},
        "python": {"version": py_version, "internal": torch.tensor(py_internal, dtype=torch.int64),
                   "gauss_next": py_gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["internal"].tolist()), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ------------------------------------------------------------------------------------------------ checkpoint
def _save_weights(model: torch.nn.Module, path: Path) -> None:
    from safetensors.torch import save_file

    weights = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(weights, str(tmp), metadata={"format": "pt"})


def save_checkpoint(run_dir: Path, model: torch.nn.Module, trainer_state: dict, meta: dict) -> Path:
    """Replace RUN/checkpoints/last with the current weights, trainer state and meta, atomically as a whole."""
    path = Path(run_dir) / CHECKPOINT_DIR
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left behind by a kill during an earlier save
        shutil.rmtree(stale, ignore_errors=True)
    with atomic_dir(path, overwrite=True) as tmp:
        _save_weights(model, tmp / WEIGHTS_FILE)
        with atomic_path(tmp / STATE_FILE) as state_tmp:
            torch.save(trainer_state, state_tmp)
        write_json(tmp / META_FILE, meta)
    return path


def find_checkpoint(run_dir: Path) -> Path | None:
    """RUN/checkpoints/last, or the previous one a kill left as `.last.old` mid-replacement, or None."""
    path = Path(run_dir) / CHECKPOINT_DIR
    if (path / META_FILE).is_file():
        return path
    old = path.with_name(f".{path.name}.old")
    if not path.exists() and (old / META_FILE).is_file():
        old.rename(path)
        return path
    return None


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict, dict]:
    """(weights, trainer_state, meta) of a checkpoint directory; a damaged one is a CheckpointError."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    try:
        meta = json.loads((path / META_FILE).read_text())
        weights = load_file(str(path / WEIGHTS_FILE), device="cpu")
        trainer_state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(f"checkpoint {path}: {STATE_FILE} holds objects other than tensors and plain values; "
                              "it was refused unread (loading it could run code). Start a new run with another --out "
                              "or restore the checkpoint from a trusted copy") from err
    except (OSError, ValueError, RuntimeError, EOFError, SafetensorError) as err:
        raise CheckpointError(f"checkpoint {path} is incomplete or corrupted ({str(err) or type(err).__name__}); "
                              f"start a new run with another --out") from err
    if not isinstance(meta, dict) or not isinstance(trainer_state, dict) or not set(STATE_KEYS) <= set(trainer_state):
        raise CheckpointError(f"checkpoint {path} is incomplete or corrupted ({META_FILE} or {STATE_FILE} lacks "
                              "entries); start a new run with another --out")
    return weights, trainer_state, meta


# ------------------------------------------------------------------------------------------------ best model
def save_best_model(run_dir: Path, model, meta: dict, tokenizer_dir: Path | None) -> Path:
    """Replace RUN/model with `model` (save_pretrained), meta.json and a copy of the tokenizer, as a whole."""
    path = Path(run_dir) / MODEL_DIR
    with atomic_dir(path, overwrite=True) as tmp:
        model.save_pretrained(tmp)
        write_json(tmp / META_FILE, meta)
        if tokenizer_dir is not None:
            shutil.copytree(tokenizer_dir, tmp / TOKENIZER_DIR)
    return path


def copy_tokenizer(run_dir: Path, tokenizer_dir: Path | None) -> None:
    """RUN/tokenizer gets a copy of the data's tokenizer when the run directory has none yet."""
    target = Path(run_dir) / TOKENIZER_DIR
    if tokenizer_dir is None or target.exists():
        return
    with atomic_dir(target) as tmp:
        shutil.copytree(tokenizer_dir, tmp, dirs_exist_ok=True)
