"""What a run directory keeps so that no work is lost: the resume checkpoint, the best model, the tokenizer copy.

RUN/checkpoints/step-000120/{model.safetensors, trainer_state.pt, meta.json}: written every `train.save_every`
steps, at the end and on Ctrl-C / SIGTERM. A checkpoint is never replaced in place: the new step folder is built
under a temporary name and renamed into place (fileio.atomic_dir), then the pointer RUN/checkpoints/LATEST (one
line, the folder's name) is replaced atomically, and only then are older step folders deleted. At every instant of
a save some complete checkpoint exists and `latest_checkpoint` finds it: the one LATEST names, else (LATEST missing
or damaged) the newest complete step folder, else a checkpoint of the earlier layout (`last`, or `.last.old` that
a kill between its two renames left). Finding a checkpoint never writes anything.

trainer_state.pt holds tensors and plain values only; it is read with `torch.load(..., weights_only=True)` and
checked entry by entry (`check_trainer_state`) before anything of it is used, so a damaged file is an error
naming it, never a crash halfway through a resume.

RUN/model/{config.json, model.safetensors, meta.json, tokenizer/}: the best model by validation loss, replaced
as a whole (fileio.atomic_dir). A kill between that replacement's two renames leaves no RUN/model but the previous
one complete as RUN/.model.old: `best_model_dir` finds it and `restore_best_model` puts it back, so a kill leaves
a loadable best model or (before the first evaluation) none, never a half-written one. meta.json records the
step, losses and the data source (path, train_end, val_end, tokenizer hash).

RUN/init.json (fine-tuning only): the model the run started from, {path, tokenizer_hash, model_hash,
data_cutoff}, written with config.yaml before step 0 so that a run resumed (or restarted before its first
checkpoint) knows it. `load_init` reads such a model: a forecaster folder (Forecaster.save_pretrained), a built-in
pretrained model by name, or a run directory (its best model).

A full disk while writing any of these is the usual "no space left" PriceGPTError (safetensors reports it as its
own exception, turned back into the OSError here); the previous checkpoint and model stay as they were.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import pickle
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..errors import CheckpointError, ConfigError
from ..fileio import OUTPUT_MARKER, atomic_dir, mark_output, write_json, write_text
from ..model.gpt import GPT
from ..tokenizer import Tokenizer, load_tokenizer

log = logging.getLogger("pricegpt")

CHECKPOINTS_DIR = "checkpoints"
POINTER_FILE = "LATEST"
LEGACY_DIRS = ("last", ".last.old")  # the earlier layout: one folder replaced by two renames
MODEL_DIR = "model"
TOKENIZER_DIR = "tokenizer"
WEIGHTS_FILE = "model.safetensors"
STATE_FILE = "trainer_state.pt"
META_FILE = "meta.json"
INIT_FILE = "init.json"
# pretrained forecasters shipped in the package: the same names and folder as forecast.resolve_model's (the
# forecast layer sits above training, so the rule is repeated here)
PRETRAINED_ROOT = Path(__file__).resolve().parents[1] / "pretrained"
BUILTIN_MODELS = ("pricegpt-small",)
CHECKPOINT_FILES = (WEIGHTS_FILE, STATE_FILE, META_FILE)
STATE_KEYS = ("step", "optimizers", "best_val_loss", "best_step", "evals_since_best", "global_batch_size", "rng")
# step-000120, or step-000120-1 when a checkpoint of that step already exists (a save at the same step again)
_STEP_DIR = re.compile(r"step-(\d{6,})(?:-(\d+))?")
_OS_ERROR = re.compile(r"os error (\d+)")


def step_dir_name(step: int, attempt: int = 0) -> str:
    return f"step-{step:06d}" + (f"-{attempt}" if attempt else "")


def _step_key(name: str) -> tuple[int, int] | None:
    match = _STEP_DIR.fullmatch(name)
    return (int(match[1]), int(match[2] or 0)) if match else None


def restart_hint(run_dir: Path) -> str:
    """What to do about a damaged checkpoint: start training over with the run's own config."""
    return (f"remove {Path(run_dir) / CHECKPOINTS_DIR} and rerun with --resume to restart training from step 0 "
            "with the run's config.yaml")


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
    """Restore rng_state()'s result (checked by check_trainer_state first)."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["internal"].tolist()), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _rng_problem(rng) -> str | None:
    """Why `rng` is not a state rng_state() wrote, or None when it is one."""
    if not isinstance(rng, dict) or not {"torch", "numpy", "python"} <= rng.keys():
        return "the RNG state lacks its torch, numpy or python part"
    torch_state = rng["torch"]
    expected = torch.get_rng_state()
    if not (isinstance(torch_state, torch.Tensor) and torch_state.dtype == torch.uint8
            and torch_state.shape == expected.shape):
        shape = tuple(torch_state.shape) if isinstance(torch_state, torch.Tensor) else type(torch_state).__name__
        return f"the torch RNG state has the wrong size ({shape}, expected {tuple(expected.shape)})"
    n, p = rng["numpy"], rng["python"]
    if not (isinstance(n, dict) and n.get("kind") == "MT19937" and isinstance(n.get("keys"), torch.Tensor)
            and n["keys"].shape == (624,) and _is_int(n.get("pos")) and 0 <= n["pos"] <= 624
            and _is_int(n.get("has_gauss")) and isinstance(n.get("cached_gaussian"), float)):
        return "the numpy RNG state is damaged"
    if not (isinstance(p, dict) and _is_int(p.get("version")) and isinstance(p.get("internal"), torch.Tensor)
            and p["internal"].shape == (625,) and (p.get("gauss_next") is None or isinstance(p["gauss_next"], float))):
        return "the python RNG state is damaged"
    cuda = rng.get("cuda", [])
    if not (isinstance(cuda, list) and all(isinstance(s, torch.Tensor) and s.dtype == torch.uint8 for s in cuda)):
        return "the CUDA RNG state is damaged"
    return None


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_loss(value) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value))


def check_trainer_state(state, where: Path, run_dir: Path) -> dict:
    """`state` when it is a trainer state the trainer wrote, else a CheckpointError naming `where` and what to do."""
    def damaged(what: str) -> CheckpointError:
        return CheckpointError(f"{where} is damaged ({what}); {restart_hint(run_dir)}")

    if not isinstance(state, dict):
        raise damaged(f"it holds a {type(state).__name__}, not the trainer's dictionary")
    missing = [key for key in STATE_KEYS if key not in state]
    if missing:
        raise damaged(f"it lacks {', '.join(missing)}")
    for key in ("step", "evals_since_best"):
        if not _is_int(state[key]) or state[key] < 0:
            raise damaged(f"{key} is {state[key]!r}, not a whole number >= 0")
    if not _is_int(state["global_batch_size"]) or state["global_batch_size"] <= 0:
        raise damaged(f"global_batch_size is {state['global_batch_size']!r}, not a whole number > 0")
    if state["best_step"] is not None and not (_is_int(state["best_step"]) and 0 <= state["best_step"]
                                                <= state["step"]):
        raise damaged(f"best_step is {state['best_step']!r}, not a step in [0, {state['step']}]")
    for key in ("best_val_loss", "last_val_loss"):
        if not _is_loss(state.get(key)):
            raise damaged(f"{key} is {state[key]!r}, not a finite loss")
    if not isinstance(state["optimizers"], list) or not all(isinstance(o, dict) for o in state["optimizers"]):
        raise damaged("the optimizer states are not a list of dictionaries")
    if not isinstance(state.get("stopped_early", False), bool):
        raise damaged(f"stopped_early is {state['stopped_early']!r}, not true or false")
    problem = _rng_problem(state["rng"])
    if problem:
        raise damaged(problem)
    return state


# ------------------------------------------------------------------------------------------------ writing
@contextlib.contextmanager
def _safetensors_os_errors():
    """safetensors reports a failed write as SafetensorError("... (os error 28)"): raise the OSError it wraps,
    which fileio turns into its usual message ("no space left on the device while writing PATH; ...")."""
    from safetensors import SafetensorError

    try:
        yield
    except SafetensorError as err:
        code = _OS_ERROR.search(str(err))
        if code is None:
            raise
        raise OSError(int(code[1]), os.strerror(int(code[1]))) from err


def _write_synced(path: Path, write) -> None:
    """write(file) into a new file and flush it to the disk (the folder around it is renamed into place after)."""
    with open(path, "wb") as fh:
        write(fh)
        fh.flush()
        os.fsync(fh.fileno())


def _save_weights(model: torch.nn.Module, path: Path) -> None:
    from safetensors.torch import save

    # serialised in memory and written by Python: a full disk is a plain OSError, and the file gets the usual
    # permissions (safetensors' own save_file leaves 0600)
    weights = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    _write_synced(path, lambda fh: fh.write(save(weights, metadata={"format": "pt"})))


def save_checkpoint(run_dir: Path, model: torch.nn.Module, trainer_state: dict, meta: dict) -> Path:
    """Write RUN/checkpoints/step-NNNNNN, point LATEST at it, then delete the older ones; return its path.

    A failure (a full disk) leaves the previous checkpoint and LATEST untouched and raises a PriceGPTError.
    """
    root = Path(run_dir) / CHECKPOINTS_DIR
    step = int(trainer_state["step"])
    attempt = 0
    while (root / step_dir_name(step, attempt)).exists():
        attempt += 1
    path = root / step_dir_name(step, attempt)
    with atomic_dir(path) as tmp:
        _save_weights(model, tmp / WEIGHTS_FILE)
        _write_synced(tmp / STATE_FILE, lambda fh: torch.save(trainer_state, fh))
        write_json(tmp / META_FILE, meta)
    write_text(root / POINTER_FILE, path.name + "\n")
    # only now that LATEST names the new folder may the older ones (and any a kill left half-built) go
    for entry in root.iterdir():
        stale = _step_key(entry.name) or entry.name in LEGACY_DIRS or (entry.name[:1] == "." and
                                                                       entry.name.endswith(".tmp"))
        if stale and entry.name != path.name:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    entry.unlink()
    return path


# ------------------------------------------------------------------------------------------------ finding
def _complete(path: Path) -> bool:
    return all((path / name).is_file() for name in CHECKPOINT_FILES)


def _pointer(root: Path) -> str | None:
    """The folder name LATEST holds, or None when it is missing, unreadable or not a step folder's name."""
    try:
        name = (root / POINTER_FILE).read_text(encoding="utf-8").strip()
    except (OSError, ValueError):
        return None
    return name if _step_key(name) else None


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The checkpoint `--resume` continues from: the folder LATEST names, else the newest complete step folder,
    else an earlier layout's `last` / `.last.old`; None when the run has no complete checkpoint. Reads only."""
    root = Path(run_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return None
    name = _pointer(root)
    if name and _complete(root / name):
        return root / name
    steps = sorted((key, entry) for entry in root.iterdir() if (key := _step_key(entry.name)) and _complete(entry))
    if steps:
        if (root / POINTER_FILE).exists():
            log.warning(f"{root / POINTER_FILE} is damaged or names a missing checkpoint; using the newest complete "
                        f"one, {steps[-1][1].name}")
        return steps[-1][1]
    return next((root / legacy for legacy in LEGACY_DIRS if _complete(root / legacy)), None)


def load_checkpoint(path: Path, run_dir: Path | None = None) -> tuple[dict[str, torch.Tensor], dict, dict]:
    """(weights, trainer_state, meta) of a checkpoint folder; a damaged one is a CheckpointError naming the file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    run_dir = Path(run_dir) if run_dir is not None else path.parent.parent
    hint = restart_hint(run_dir)
    meta = read_meta(path / META_FILE, hint)
    try:
        weights = load_file(str(path / WEIGHTS_FILE), device="cpu")
    except (OSError, SafetensorError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{path / WEIGHTS_FILE} is damaged ({str(err) or type(err).__name__}); {hint}") from err
    try:
        state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(f"{path / STATE_FILE} holds objects other than tensors and plain values; it was "
                              f"refused unread (loading it could run code). Restore it from a trusted copy, or "
                              f"{hint}") from err
    except Exception as err:  # noqa: BLE001 - torch.load on arbitrary bytes raises KeyError, EOFError, RuntimeError...
        raise CheckpointError(f"{path / STATE_FILE} is damaged or not a trainer state ({type(err).__name__}: "
                              f"{str(err)[:200]}); {hint}") from err
    return weights, check_trainer_state(state, path / STATE_FILE, run_dir), meta


def read_meta(path: Path, hint: str) -> dict:
    """A meta.json as a dictionary; a missing or damaged one is a CheckpointError naming it."""
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as err:
        raise CheckpointError(f"{path} cannot be read ({str(err)[:200] or type(err).__name__}); {hint}") from err
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path} should hold a JSON object; {hint}")
    return meta


# ------------------------------------------------------------------------------------------------ best model
def save_best_model(run_dir: Path, model, meta: dict, tokenizer_dir: Path | None) -> Path:
    """Replace RUN/model with `model` (save_pretrained), meta.json and a copy of the tokenizer, as a whole."""
    path = Path(run_dir) / MODEL_DIR
    if best_model_dir(run_dir) == path and not (path / OUTPUT_MARKER).is_file():
        mark_output(path)  # a best model written before output markers existed is still this run's to replace
    with atomic_dir(path, overwrite=True) as tmp:
        with _safetensors_os_errors():
            model.save_pretrained(tmp)
        write_json(tmp / META_FILE, meta)
        if tokenizer_dir is not None:
            _copy_folder(Path(tokenizer_dir), tmp / TOKENIZER_DIR)
    return path


def best_model_dir(run_dir: str | os.PathLike) -> Path | None:
    """RUN/model when complete, else the previous best model a kill mid-replacement left as RUN/.model.old, else
    None. Reads only (restore_best_model puts `.model.old` back)."""
    path = Path(run_dir) / MODEL_DIR
    for candidate in (path, path.with_name(f".{MODEL_DIR}.old")):
        if all((candidate / name).is_file() for name in ("config.json", WEIGHTS_FILE, META_FILE)):
            return candidate
        if candidate.exists():
            return None  # a RUN/model that is there but incomplete is not silently replaced by an older one
    return None


def restore_best_model(run_dir: Path) -> None:
    """Put back the best model a kill between atomic_dir's two renames left as RUN/.model.old."""
    path = Path(run_dir) / MODEL_DIR
    old = path.with_name(f".{MODEL_DIR}.old")
    if not path.exists() and best_model_dir(run_dir) == old:
        os.replace(old, path)
        log.warning(f"restored the best model {path} that an interrupted save left as {old.name}")


def copy_tokenizer(run_dir: Path, tokenizer_dir: Path | None) -> None:
    """RUN/tokenizer gets a copy of the data's tokenizer when the run directory has none yet."""
    target = Path(run_dir) / TOKENIZER_DIR
    if tokenizer_dir is None or target.exists():
        return
    with atomic_dir(target) as tmp:
        _copy_folder(Path(tokenizer_dir), tmp)


def _copy_folder(source: Path, target: Path) -> None:
    """shutil.copytree, except that an OSError (a full disk) propagates as itself, not inside a shutil.Error."""
    target.mkdir(parents=True, exist_ok=True)
    for entry in sorted(source.iterdir()):
        if entry.is_dir():
            _copy_folder(entry, target / entry.name)
        else:
            shutil.copy2(entry, target / entry.name)


# ------------------------------------------------------------------------------------------------ init (fine-tuning)
@dataclass
class InitModel:
    """A trained model a fine-tune starts from, with the tokenizer its tokens must come from."""

    path: Path                  # the folder, resolved
    model: GPT                  # its weights in fp32, whatever dtype they were stored in
    tokenizer: Tokenizer
    tokenizer_dir: Path
    model_hash: str             # sha256 of its model.safetensors
    data_cutoff: str | None     # the last time its training data reached (its val_end), when it records one

    def record(self) -> dict:
        """What RUN/init.json, the checkpoints' and the best model's meta.json and a pipeline's run.json keep."""
        return {"path": str(self.path), "tokenizer_hash": self.tokenizer.hash, "model_hash": self.model_hash,
                "data_cutoff": self.data_cutoff}


HUB_PREFIX = "hf://"


def resolve_hub(spec: str) -> Path:
    """The local folder of a forecaster on the Hugging Face Hub, `hf://OWNER/NAME[@REVISION]`, downloaded (or
    found in the local cache; HF_HUB_OFFLINE=1 uses the cache only) by the optional `huggingface_hub` package."""
    repo, _, revision = spec[len(HUB_PREFIX):].partition("@")
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise ConfigError(f"a Hub model is hf://OWNER/NAME[@REVISION], got {spec!r}")
    try:
        from huggingface_hub import snapshot_download  # optional (the `hub` extra): only hf:// names need it
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
    except ImportError:
        raise ConfigError(f"{spec} is on the Hugging Face Hub, which needs the optional huggingface_hub package: "
                          "pip install 'pricegpt[hub]'") from None
    try:
        return Path(snapshot_download(repo_id=repo, revision=revision or None))
    except LocalEntryNotFoundError:
        raise CheckpointError(f"{spec} is not in the local Hugging Face cache and the Hub cannot be reached "
                              "(offline, or HF_HUB_OFFLINE=1); download it once with network, or pass a "
                              "folder") from None
    except (HfHubHTTPError, OSError, ValueError) as err:
        raise CheckpointError(f"cannot fetch {spec} from the Hugging Face Hub: {err}") from None


def resolve_init(name_or_path: str | os.PathLike) -> Path:
    """The absolute folder of `--init`: a path, the name of a built-in pretrained model (a path that exists wins
    over a name), or a Hub model hf://OWNER/NAME[@REVISION] (`resolve_hub`)."""
    if str(name_or_path).startswith(HUB_PREFIX):
        return resolve_hub(str(name_or_path)).resolve()
    path = Path(name_or_path)
    if not path.exists() and str(name_or_path) in BUILTIN_MODELS:
        path = PRETRAINED_ROOT / str(name_or_path)
    return path.resolve()


def load_init(name_or_path: str | os.PathLike) -> InitModel:
    """The model and tokenizer of a forecaster folder, a built-in pretrained model, a run directory (its best
    model) or a run's model folder; a missing folder is a ConfigError, a damaged one a CheckpointError (or
    TokenizerError) naming the file."""
    path = resolve_init(name_or_path)
    if not path.is_dir():
        raise ConfigError(f"--init {name_or_path}: no such folder ({path}); give a forecaster folder "
                          f"(Forecaster.save_pretrained), a run directory or a built-in model "
                          f"({', '.join(BUILTIN_MODELS)})")
    # a model folder itself (RUN/model), a run directory's best model (also one an interrupted save left as
    # .model.old), else a forecaster folder's
    model_dir = path if (path / WEIGHTS_FILE).is_file() else best_model_dir(path) or path / MODEL_DIR
    tokenizer_dir = next((d for d in (model_dir / TOKENIZER_DIR, path / TOKENIZER_DIR) if d.is_dir()), None)
    if tokenizer_dir is None:
        raise ConfigError(f"--init {path} has no tokenizer ({path / TOKENIZER_DIR}): a fine-tune reads tokens of the "
                          "pretrained tokenizer; give a forecaster folder or a run trained on a token store")
    model = GPT.from_pretrained(model_dir)
    tokenizer = load_tokenizer(tokenizer_dir)
    if tokenizer.vocab_size != model.config.vocab_size:
        raise CheckpointError(f"{tokenizer_dir} has {tokenizer.vocab_size} codes but the model in {model_dir} has a "
                              f"vocabulary of {model.config.vocab_size}; --init {path} mixes two models")
    digest = hashlib.sha256()
    with open(model_dir / WEIGHTS_FILE, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return InitModel(path=path, model=model, tokenizer=tokenizer, tokenizer_dir=tokenizer_dir,
                     model_hash=digest.hexdigest(), data_cutoff=_data_cutoff(path, model_dir))


def _data_cutoff(path: Path, model_dir: Path) -> str | None:
    """The latest val_end of the model (RUN/model/meta.json, or a forecaster's config.json) and of the model it
    was itself fine-tuned from: the bars after it are unseen."""
    times = []
    for file in (model_dir / META_FILE, path / "config.json"):
        with contextlib.suppress(CheckpointError):
            meta = read_meta(file, "")
            init = meta.get("init")
            times += [meta.get("val_end"), init.get("data_cutoff") if isinstance(init, dict) else None]
    times = [t for t in times if isinstance(t, str)]
    try:
        return max(times, key=pd.Timestamp) if times else None
    except (ValueError, TypeError):  # an unreadable time: the cutoff is unknown
        return None


def read_init_record(run_dir: Path) -> dict | None:
    """RUN/init.json (None: the run did not start from a trained model); damaged: a CheckpointError."""
    path = Path(run_dir) / INIT_FILE
    if not path.exists():
        return None
    record = read_meta(path, "restore it, or start the run again with --init (and another --out)")
    if not isinstance(record.get("path"), str) or not isinstance(record.get("tokenizer_hash"), str):
        raise CheckpointError(f"{path} lacks the init model's path or tokenizer_hash; restore it, or start the run "
                              "again with --init (and another --out)")
    return record
