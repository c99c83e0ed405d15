"""Pretraining on the price corpus: one tokenizer and one model for every series of `pricegpt data corpus build`,
pooled, so that a new series can be forecast with no training (`Forecaster.from_pretrained("pricegpt-small")`).

    pretrain(corpus="data/corpus", out="runs/pretrain", preset="small")   # pricegpt pretrain --corpus ... --out ...

Stages, each skipped when its output is complete (rerunning the same call finishes an interrupted one):
1. the corpus's series split by time for every series alike: train up to `train_end` (default 2011-12-31),
   validation up to `val_end` (default: the corpus cutoff, 2015-12-31). There is no test split: the test data of a
   pretrained model is everything after its cutoff, in files it never saw. The undated sets (price relatives whose
   documented periods all end before 2011) carry placeholder business days from 1970, so all of their bars are
   train bars: they add return sequences, never a calendar (the model has no calendar input by default).
2. the tokenizer fit on the train split of all series pooled (the preset's options: EWMA-standardised shocks, so a
   token means the same move relative to the running volatility for every asset; unseen symbols start their
   running scale from the median scale, see tokenizer/scaling.py);
3. the token store and the model trained on all symbols pooled, checkpoint chosen by validation loss;
4. the sampling temperature calibrated on the validation split (`calibrate_max_origins` origins per symbol);
5. the forecaster folder `OUT/forecaster` (Forecaster.save_pretrained, weights in bf16 when `bf16`), with
   `pretrain.json`: the corpus manifest's digest and sources, the cutoffs and the data cutoff every later
   evaluation must stay after.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from pathlib import Path

import pandas as pd

from .config import preset_tokenizer_options
from .config.files import resolve_config
from .data import iso, parse_time
from .data.corpus import load_corpus, read_manifest
from .data.frame import Splits
from .errors import ConfigError, DataError, OutputExistsError
from .fileio import OUTPUT_MARKER, make_dirs, mark_output, write_json
from .forecast import Forecaster, calibrate_temperature
from .runs import load_run
from .tokenizer import fit_to_dir, load_tokenizer, write_token_store
from .train import train_run

log = logging.getLogger("pricegpt")

DEFAULT_TRAIN_END = "2011-12-31"
PRETRAIN_FILE = "pretrain.json"
CALIBRATION_HORIZON = 4


def _check_out(out: Path, corpus: Path) -> None:
    """OUT may be new, empty, or a pretrain folder pricegpt wrote (to finish): never a user's folder, never the
    corpus or a folder holding it (the stages write tokenizer/, tokens/, model/ ... into OUT)."""
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"--out {out} exists and is not a folder; choose another --out")
    resolved, corpus = out.resolve(), corpus.resolve()
    if resolved == corpus or resolved in corpus.parents or corpus in resolved.parents:
        raise OutputExistsError(f"--out {out} is, holds or lies inside the corpus {corpus}; choose an --out "
                                "outside it")
    ours = (out / OUTPUT_MARKER).is_file() or (out / PRETRAIN_FILE).is_file() \
        or (out / "tokenizer" / OUTPUT_MARKER).is_file()
    if out.is_dir() and any(out.iterdir()) and not ours:
        raise OutputExistsError(f"--out {out} exists and was not written by pricegpt (no {OUTPUT_MARKER} marker); "
                                "choose another --out (a new or empty folder)")


def pretrain(corpus, out, preset: str = "tiny", *, train_end=None, val_end=None, max_steps: int | None = None,
             overrides: list[str] | None = None, seed: int = 0, calibrate_max_origins: int = 4,
             num_samples: int = 128, sources=None, include_undated: bool = True) -> dict:
    """Run (or finish) the stages of the module docstring; returns the pretrain.json content."""
    out = Path(out)
    manifest = read_manifest(corpus)
    cutoff = manifest.get("cutoff")
    t_end = parse_time(train_end or DEFAULT_TRAIN_END, "--train-end")
    v_end = parse_time(val_end or cutoff, "--val-end")
    if not t_end < v_end:
        raise ConfigError(f"--train-end {iso(t_end)} must be before --val-end {iso(v_end)} (the corpus cutoff "
                          f"is {cutoff})")
    tokenizer_options = preset_tokenizer_options(preset)  # an unknown preset fails before any work
    resolve_config(preset, None, list(overrides or []), max_steps)  # so does a bad --set or --max-steps
    _check_out(out, Path(corpus))
    frame = load_corpus(corpus, sources=sources, include_undated=include_undated)
    if frame.empty:
        raise DataError(f"the corpus {corpus} holds no dated series; build it with `pricegpt data corpus build`")
    first = pd.Timestamp(frame["timestamp"].min())
    if t_end < first:
        raise ConfigError(f"--train-end {iso(t_end)} is before the corpus's first bar ({iso(first)}); the train "
                          "split would be empty: choose a later --train-end")
    frame = frame[frame["timestamp"] <= v_end]
    splits = Splits(t_end, v_end)
    created = not out.exists()
    make_dirs(out)
    mark_output(out)
    try:
        return _run_stages(out, corpus, manifest, cutoff, preset, frame, t_end, v_end, splits, tokenizer_options,
                           max_steps, overrides, seed, num_samples, calibrate_max_origins)
    except BaseException:
        if created and [p.name for p in out.iterdir()] == [OUTPUT_MARKER]:  # nothing written: leave no folder
            shutil.rmtree(out, ignore_errors=True)
        raise


def _run_stages(out, corpus, manifest, cutoff, preset, frame, t_end, v_end, splits, tokenizer_options, max_steps,
                overrides, seed, num_samples, calibrate_max_origins) -> dict:
    timings: dict[str, float] = {}

    def stage(name: str, done: bool, work) -> None:
        if done:
            log.info(f"[{name}] already complete, skipped")
            return
        log.info(f"[{name}] ...")
        start = time.perf_counter()
        work()
        timings[name] = round(time.perf_counter() - start, 2)
        log.info(f"[{name}] done in {timings[name]:.1f}s")

    stage("tokenizer", (out / "tokenizer" / "report.json").is_file(),
          lambda: fit_to_dir(frame, out / "tokenizer", kind="vqvae", train_end=t_end, val_end=v_end, seed=seed,
                             overwrite=(out / "tokenizer").exists(), **tokenizer_options))
    stage("tokenize", (out / "tokens" / "index.json").is_file(),
          lambda: write_token_store(load_tokenizer(out / "tokenizer"), frame, out / "tokens", splits,
                                    overwrite=(out / "tokens").exists()))
    meta = out / "model" / "meta.json"
    finished = meta.is_file() and json.loads(meta.read_text()).get("finished", True)
    stage("train", finished,
          lambda: train_run(tokens=out / "tokens", out=out, preset=preset, max_steps=max_steps,
                            overrides=list(overrides or []), allow_existing=True,
                            resume=(out / "checkpoints").exists()))
    stage("calibrate", (out / "calibration.json").is_file(),
          lambda: calibrate_temperature(load_run(out), frame, splits, horizon=CALIBRATION_HORIZON,
                                        num_samples=num_samples, max_origins=calibrate_max_origins, seed=seed))
    record = {"kind": "pricegpt.pretrain", "corpus": str(corpus), "corpus_cutoff": cutoff,
              "manifest_sha256": hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest(),
              "sources": sorted({e.get("package", "?") for e in manifest.get("files", [])}),
              "train_end": iso(t_end), "val_end": iso(v_end), "data_cutoff": iso(v_end), "preset": preset,
              "n_symbols": int(frame["symbol"].nunique()), "n_bars": int(len(frame)),
              "undated_symbols": len(frame.attrs.get("undated_symbols", [])),
              "first": iso(pd.Timestamp(frame["timestamp"].min())), "last": iso(pd.Timestamp(frame["timestamp"].max())),
              "timings": timings}
    def save_forecaster() -> None:
        forecaster = Forecaster.from_run(out)
        forecaster.run.meta["horizon"] = CALIBRATION_HORIZON  # the default horizon of zero-shot evaluations
        forecaster.save_pretrained(out / "forecaster", overwrite=True)

    stage("forecaster", (out / "forecaster" / "config.json").is_file(), save_forecaster)
    write_json(out / PRETRAIN_FILE, record)
    return record
