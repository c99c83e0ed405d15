"""`train_run(tokens=, out=, ...)`: what `pricegpt train` calls. It checks the run directory, resolves the config
and the data, writes RUN/config.yaml and the tokenizer, then runs the `Trainer` (loop.py).

Resuming. Every check (config, data, the checkpoint's files, --max-steps not below the run's step) happens before
any file is written. A run already at max_steps, or stopped early (saved in the trainer state), has nothing left
to train and says so. A run killed before its first checkpoint restarts from step 0 with its config.yaml.

Fine-tuning (`init`: a forecaster folder, a built-in pretrained model's name or a run directory). The model takes
the init model's architecture (the preset's / config's model section is ignored, except model.dropout when given
explicitly) and its weights before step 0. The tokens must come from the init's tokenizer: a token store whose
tokenizer_hash differs (or a .txt without one) is refused before any file is written. RUN/init.json and every
meta.json record the init (checkpoint.InitModel.record); a resumed run continues from its checkpoint whatever the
init (only step 0 reads it), and one restarted before its first checkpoint starts from the recorded init again.

Callbacks (`callbacks=[...]`, callbacks.py) see the training on rank 0; `train.mlflow=true` adds an MlflowCallback
(tracking.py), whose missing package or unreachable store is a ConfigError before any file is written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from pathlib import Path

import pandas as pd

from ..config import (
    ARCHITECTURE_KEYS,
    GPTConfig,
    RunConfig,
    apply_overrides,
    explicit_keys,
    load_config,
    parse_override,
    resolve_config,
    save_config,
)
from ..errors import CheckpointError, ConfigError, OutputExistsError
from ..fileio import make_dirs, write_json
from . import dist
from .callbacks import check_callbacks
from .checkpoint import (
    CHECKPOINTS_DIR,
    INIT_FILE,
    META_FILE,
    MODEL_DIR,
    InitModel,
    best_model_dir,
    copy_tokenizer,
    latest_checkpoint,
    load_init,
    read_init_record,
    read_meta,
    resolve_init,
    restart_hint,
    restore_best_model,
)
from .data import TokenData, read_token_source
from .loop import Trainer
from .metrics import METRICS_FILE
from .tracking import MlflowCallback, require_mlflow

log = logging.getLogger("pricegpt")

CONFIG_FILE = "config.yaml"
# source-record keys that must match for a resumed run to continue the same run on the same data
RESUME_KEYS = ("tokenizer_hash", "train_end", "val_end", "train_tokens", "val_tokens", "symbols")


def train_run(tokens: str | os.PathLike, out: str | os.PathLike, preset: str | None = None,
              config_file: str | os.PathLike | None = None, overrides: list[str] | None = None,
              max_steps: int | None = None, resume: bool = False, allow_existing: bool = False,
              init: str | os.PathLike | None = None, callbacks: list | None = None) -> dict:
    """Train on a token store directory or .txt token file into run directory `out`; see the module docstring.

    A fresh run refuses an existing non-empty `out` (OutputExistsError) unless `allow_existing` (the pipeline's
    run directory, which already holds the tokenizer and tokens) and `out` holds no checkpoint nor finished
    model; what a run killed before its first checkpoint left is trained over from step 0.
    `resume` continues the latest checkpoint with RUN/config.yaml (plus `overrides` / `max_steps`; the model
    section cannot change; `preset` / `config_file` are ignored) and reproduces the uninterrupted run exactly; a
    run with a config.yaml but no checkpoint yet restarts from step 0 with a warning.
    `init` (a forecaster folder, a built-in model name or a run directory) fine-tunes that model: its
    architecture and weights, tokens of its tokenizer only. With `resume` it may be left out (RUN/init.json
    knows it) or must name the same model.
    `callbacks`: objects with any of on_start, on_step, on_evaluation, on_checkpoint, on_end (subclass
    pricegpt.train.Callback), called on rank 0 with plain dicts (callbacks.py); one that raises stops training
    with a CallbackError. train.mlflow=true adds an MlflowCallback unless `callbacks` holds one.
    Every check happens before the first file is written.
    Returns {"best_val_loss", "best_step", "steps", "out", "model_dir", "stopped_early", ...}.
    """
    out = Path(out)
    info = dist.dist_env()
    owns_process_group = not dist.is_initialized()
    try:
        if resume:
            record = read_init_record(out)
            if record is not None:  # as at its start, the init fixes the network: only model.dropout is the run's
                overrides = [o for o in overrides or [] if not _sets_network(o)]
            config, checkpoint = _resume_config(out, preset, config_file, overrides, max_steps)
            explicit = {"model.vocab_size"}
            _check_resume_init(out, init, record)
            init = record["path"] if record else None
        else:
            _check_fresh_out(out, allow_existing)
            config = resolve_config(preset, config_file, overrides, max_steps)
            explicit, checkpoint, record = explicit_keys(config_file, overrides), None, None
        callbacks = _run_callbacks(callbacks, config, info.is_main)
        # only step 0 reads the init model: a resumed checkpoint has its own weights
        start = load_init(init) if init is not None and checkpoint is None else None
        if start is not None:
            config.model = _init_model_config(start, config.model, explicit, restarted=resume)
            record = start.record()
        # a calendar model reads each token's timestamp, a side model its side channels: a source without them
        # fails here, before any file
        series, source, tokenizer_dir = read_token_source(tokens, calendar=config.model.calendar,
                                                          side=config.model.side)
        if config.model.side:
            config.model = _with_side_edges(config.model, source["side_edges"], tokens,
                                            fixed_by=str(out) if checkpoint is not None else
                                            (str(start.path) if start is not None else None))
        if config.model.symbol_embedding and checkpoint is None and start is None:
            # a fresh run's rows are its store's symbols (a config.yaml reused from another run brings its own)
            config.model = dataclasses.replace(config.model, symbols=[str(s) for s in series])
        if start is not None:
            _check_init_tokens(start, source, tokens)
        elif "model.vocab_size" not in explicit and source.get("vocab_size"):
            config.model = dataclasses.replace(config.model, vocab_size=int(source["vocab_size"]))
        if record is not None:
            source["init"] = record
        data = TokenData.from_series(series, config.model.sequence_len, config.model.vocab_size, source=source,
                                     tokenizer_dir=tokenizer_dir, where=str(tokens), calendar=config.model.calendar,
                                     side=config.model.side)
        if checkpoint is not None:
            _check_same_data(checkpoint, data.source, out)
        trainer = Trainer(config, data, out, dist_info=info, init_model=start.model if start else None,
                          callbacks=callbacks)
        if checkpoint is not None:
            trainer.load_checkpoint(checkpoint)
        dist.barrier(info)  # every process has checked `out` before rank 0 writes to it
        if info.is_main:
            if not trainer.nothing_to_train:
                make_dirs(out)
                save_config(config, out / CONFIG_FILE)
                if record is not None:
                    write_json(out / INIT_FILE, record)
                copy_tokenizer(out, data.tokenizer_dir)
            restore_best_model(out)
        return trainer.train()
    finally:
        if owns_process_group:
            dist.shutdown()


def _with_side_edges(model: GPTConfig, edges: list, tokens, fixed_by: str | None) -> GPTConfig:
    """The model config with the token store's side-channel bin edges. Edges a config file brought along (a run's
    config.yaml reused) are replaced; those of a model whose weights already read them (`fixed_by`: a resumed run
    or an --init model) must match, since the store holds binned ids, not the values."""
    if fixed_by is not None and model.side_edges is not None and model.side_edges != edges:
        raise ConfigError(f"the side channels of --tokens {tokens} are binned differently from those {fixed_by} "
                          "was trained on (its store came from other training data): a side model reads only ids "
                          "binned its own way, so it cannot continue or be fine-tuned on this store; train a new "
                          "side model on it")
    return dataclasses.replace(model, side_edges=edges)


def _run_callbacks(callbacks, config: RunConfig, is_main: bool) -> list:
    """The user's callbacks, plus an MlflowCallback (rank 0 only) for train.mlflow=true."""
    callbacks = check_callbacks(callbacks)
    if config.train.mlflow:
        require_mlflow("train.mlflow=true")
        if is_main and not any(isinstance(callback, MlflowCallback) for callback in callbacks):
            callbacks.append(MlflowCallback())
    return callbacks


def _init_model_config(start: InitModel, model: GPTConfig, explicit: set[str], restarted: bool) -> GPTConfig:
    """The init model's config, with model.dropout from the run's config when set explicitly (a restarted run's
    config.yaml already holds the choice: it must describe the init model's network)."""
    theirs = start.model.config
    if restarted:
        differ = [key for key in (*ARCHITECTURE_KEYS, "calendar", "side", "symbol_embedding", "symbols")
                  if getattr(model, key) != getattr(theirs, key)]
        if differ:
            raise CheckpointError(f"the init model {start.path} is no longer the network this run was started "
                                  f"with ({', '.join(f'model.{k}' for k in differ)} differ): restore it, or start "
                                  "a new run")
        return model
    ignored = sorted(key for key in explicit if key.startswith("model.") and key != "model.dropout")
    log.info(f"fine-tuning {start.path}: its network is kept ({theirs.n_layer} layers, n_embd {theirs.n_embd}, "
             f"vocabulary {theirs.vocab_size}, sequence_len {theirs.sequence_len}); the preset's model section is "
             "not used (model.dropout is, when set with --set or --config)")
    if ignored:
        log.warning(f"--init fixes the network: {', '.join(ignored)} ignored")
    dropout = model.dropout if "model.dropout" in explicit else theirs.dropout
    return dataclasses.replace(theirs, dropout=dropout)


def _check_init_tokens(start: InitModel, source: dict, tokens) -> None:
    """The tokens were made with the init's tokenizer (else its embeddings would read other codes)."""
    made_with = source.get("tokenizer_hash")
    if made_with != start.tokenizer.hash:
        what = (f"were made with another tokenizer (hash {made_with[:12]}, the init's is "
                f"{start.tokenizer.hash[:12]})" if made_with else "do not record their tokenizer (a .txt file)")
        raise ConfigError(f"--tokens {tokens} {what}: a fine-tune of --init {start.path} reads tokens of its "
                          f"tokenizer. Tokenize the prices with it (pricegpt tokenize --tokenizer "
                          f"{start.tokenizer_dir} --data PRICES --out TOKENS), or use pricegpt pipeline --init, "
                          "which does")
    cutoff, val_end = start.data_cutoff, source.get("val_end")
    with contextlib.suppress(ValueError, TypeError):
        if cutoff and val_end and pd.Timestamp(val_end) < pd.Timestamp(cutoff):
            log.warning(f"--init {start.path} was trained on data up to {cutoff}, after these tokens' val_end "
                        f"{val_end}: bars of the validation and test splits may be ones it has seen")


def _sets_network(override: str) -> bool:
    section, key, _ = parse_override(override)
    return section == "model" and key != "dropout"


def _check_resume_init(out: Path, init, record: dict | None) -> None:
    """A resumed run's `init`, when given, is the one it started from (RUN/init.json)."""
    if init is None:
        return
    if record is None:
        raise ConfigError(f"{out} was not started from a trained model: resume it without --init, or start a new "
                          "run with --init (and another --out)")
    wanted = str(resolve_init(init))
    if record["path"] != wanted:
        raise ConfigError(f"{out} was started from {record['path']}, not {wanted}: resume it without --init (the "
                          "checkpoint holds the weights), or start a new run with --init (and another --out)")


def _check_fresh_out(out: Path, allow_existing: bool) -> None:
    if not out.exists():
        return
    if not out.is_dir():
        raise OutputExistsError(f"--out {out} exists and is not a directory; choose another --out")
    if not allow_existing:
        if any(out.iterdir()):
            raise OutputExistsError(f"run directory {out} already exists and is not empty; choose another --out, "
                                    f"remove it, or continue it with --resume")
        return
    if latest_checkpoint(out) is not None:
        raise OutputExistsError(f"{out} already holds a training checkpoint; resume it with --resume or choose "
                                "another --out")
    _refuse_finished_model(out)
    left = [name for name in (MODEL_DIR, CHECKPOINTS_DIR, METRICS_FILE) if (out / name).exists()]
    if left:
        log.warning(f"{out} holds {', '.join(left)} of a training run stopped before its first checkpoint; "
                    "training restarts from step 0")


def _refuse_finished_model(out: Path) -> None:
    """A finished best model without a checkpoint is never trained over (nothing could bring it back)."""
    found = best_model_dir(out)
    if found is None:
        return
    try:
        finished = read_meta(found / META_FILE, "").get("finished", True) is not False
    except CheckpointError:
        return  # damaged: not a finished model anyone can use
    if finished:
        raise OutputExistsError(f"{out / MODEL_DIR} holds a finished model and {out} has no checkpoint to continue "
                                f"from; choose another --out (or move {out / MODEL_DIR} away to train again)")


def _resume_config(out: Path, preset, config_file, overrides, max_steps) -> tuple[RunConfig, Path | None]:
    """The run's config.yaml with `overrides` and `max_steps`, and its latest checkpoint (None: restart)."""
    if preset or config_file:
        log.info(f"--resume continues with {out / CONFIG_FILE}; --preset/--config are ignored "
                 f"(--set and --max-steps still apply)")
    checkpoint = latest_checkpoint(out)
    if not (out / CONFIG_FILE).is_file():
        if checkpoint is None:
            raise CheckpointError(f"cannot resume {out}: it has no checkpoint and no {CONFIG_FILE}; start a new run "
                                  "without --resume (with another --out, or after removing it)")
        raise CheckpointError(f"cannot resume {out}: {out / CONFIG_FILE} is missing; restore it, or start a new "
                              "run without --resume")
    saved = load_config(out / CONFIG_FILE)
    config = apply_overrides(saved, overrides or [])
    if config.model != saved.model:
        raise ConfigError("--resume cannot change the model section (the checkpoint's weights fix its shape); "
                          "drop the model.* overrides")
    if max_steps is not None:
        config.train = dataclasses.replace(config.train, max_steps=max_steps)
    if checkpoint is None:
        _refuse_finished_model(out)
        log.warning(f"{out} has no checkpoint yet (its training stopped before the first one); training restarts "
                    f"from step 0 with {out / CONFIG_FILE}")
    return config, checkpoint


def _check_same_data(checkpoint: Path, source: dict, run_dir: Path) -> None:
    meta = read_meta(checkpoint / META_FILE, restart_hint(run_dir))
    changed = [key for key in RESUME_KEYS if key in meta and meta[key] != source.get(key)]
    if changed:
        details = "; ".join(f"{k}: checkpoint {meta[k]!r}, now {source.get(k)!r}" for k in changed)
        raise CheckpointError(f"--tokens is not the data checkpoint {checkpoint} was trained on ({details}); "
                              f"resume with the same tokens ({meta.get('tokens')})")
