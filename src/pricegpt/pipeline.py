"""`pricegpt pipeline`: prices -> tokenizer -> tokens -> GPT -> calibration -> evaluation -> backtest -> report.

`run_pipeline(data, out, settings)` is a plain function (callable from a notebook) that runs or finishes every
stage. Every stage writes its own part of the run directory atomically and is complete only when its output
exists AND the fingerprint of its inputs matches the one recorded in RUN/stages.json when it finished: a killed
or interrupted stage is redone, and a stage whose inputs changed (a resumed model) is redone with everything
after it. `RUN/run.json` records the settings; rerunning into the same RUN with other settings is an error unless
`force`, which only ever replaces a folder pricegpt wrote.

Fine-tuning (`init`: a forecaster folder, a built-in pretrained model's name or a run directory): the tokenizer
stage copies the init's tokenizer into RUN/tokenizer (its report.json measured on this data) instead of fitting
one, and training starts from the init's weights (train_run's `init`); the other stages are the same. The init is
part of the record, so another init is another run.

An ensemble (`ensemble` K > 1, `--ensemble K`): the run's model is member 1; members 2..K are trained on the run's
tokens with the next K - 1 training seeds (train.seed + k - 1) into RUN/members/member-k/, listed in
RUN/ensemble.json; calibration, evaluation and backtest then use their pool (forecast.EnsembleForecaster: paths
split equally, one temperature calibrated on the pool), and so does every command given `--run RUN` afterwards.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from .backtest import MIN_DECISIONS, BacktestConfig, run_backtest
from .config import (
    check_bool,
    check_choice,
    check_int,
    check_num_samples,
    check_number,
    check_path,
    check_seed,
    explicit_keys,
    load_config,
    preset_tokenizer_options,
    resolve_config,
)
from .config.checks import MAX_ENSEMBLE
from .data import iso, load_prices, time_splits
from .data.windows import (
    decision_origins,
    require_origins,
    resolve_cutoffs,
    return_features,
    select_origins,
    symbol_series,
)
from .errors import ConfigError, DataError, OutputExistsError
from .evaluate import evaluate_run
from .evaluate.report import refresh_report
from .fileio import OUTPUT_MARKER, atomic_dir, make_dirs, mark_output, remove_output, write_json
from .forecast import MAX_HORIZON_BARS, Forecaster, calibrate_temperature
from .forecast.sampling import check_scored_samples
from .rundir import RunDir
from .tokenizer import DEFAULT_PATCH_LEN, fit_to_dir, load_tokenizer, tokenizer_report, write_token_store
from .tokenizer.side import has_side_columns
from .train import dist, latest_checkpoint, log_evaluation, train_run
from .train.checkpoint import InitModel, load_init
from .train.data import shortest_window
from .train.device import pick_device

log = logging.getLogger("pricegpt")

FORMAT_VERSION = 1
DEFAULT_HORIZON = 4  # bars: a week of daily bars, half a trading day of hourly FX
TOKENIZER_KINDS = ("vqvae", "quantile", "uniform")
# Under torchrun the processes wait at a barrier while rank 0 alone fits the tokenizer and tokenizes: generous.
PIPELINE_TIMEOUT = timedelta(hours=2)
# Stages every process of a torchrun launch runs together (training's batches, the forecasts' origins are shared);
# the others (tokenizer, tokenize) run on rank 0 while the rest wait.
COLLECTIVE_STAGES = ("train", "calibrate", "evaluate", "backtest")


@dataclass
class PipelineSettings:
    """What a pipeline run is made of (the `pricegpt pipeline` flags); `None` means the preset's default."""

    preset: str = "tiny"
    config: str | None = None            # YAML file of model/train overrides
    overrides: list[str] = field(default_factory=list)  # "section.key=value", as --set
    train_end: str | None = None
    val_end: str | None = None
    max_steps: int | None = None
    tokenizer_kind: str = "vqvae"
    patch_len: int | None = None         # bars per token (default: the preset's)
    codebook_size: int | None = None
    scaling: str | None = None           # tokenizer scaling: static | ewma | garch (default: the preset's)
    halflife: float | None = None        # bars, of the ewma scaling
    decode: str | None = None            # how sampled tokens become returns: centroid | within
    seasonal: bool | None = None         # intraday returns deseasonalised before scaling (default: the preset's)
    horizon: int | None = None           # forecast horizon in bars (default DEFAULT_HORIZON)
    num_samples: int | None = None       # sample paths per origin (default 256)
    cost_bps: float = 1.0
    seed: int = 0
    ablation: bool = False               # also train with the quantile tokenizer and compare in the report
    force: bool = False                  # replace `out` if it was made with other settings
    date_format: str | None = None       # strptime format of the data's timestamps (default: inferred)
    init: str | None = None              # fine-tune this model (forecaster folder, built-in name or run directory)
    ensemble: int = 1                    # models trained with consecutive seeds and forecasting as their pool
    calibration_max_origins: int | None = None  # validation origins per symbol for the temperature (calibrate.py)


@dataclass
class PipelineResult:
    run: Path
    evaluation: dict                     # RUN/eval/metrics.json
    backtest: dict                       # RUN/backtest/metrics.json
    timings: dict[str, float]            # seconds per stage run in this call (skipped stages are absent)


def _source_id(source) -> str:
    if isinstance(source, pd.DataFrame):  # the content decides whether a rerun is the same run
        digest = hashlib.sha256(pd.util.hash_pandas_object(source, index=True).values.tobytes()).hexdigest()
        return f"DataFrame:{digest[:16]}"
    return source if str(source).startswith("sample:") else str(Path(source).resolve())


def run_pipeline(data, out, settings: PipelineSettings | None = None, **overrides) -> PipelineResult | None:
    """Run (or finish) every stage for the prices `data` (a path, folder, sample:NAME or DataFrame) into the run
    directory `out`. `settings` (or keyword overrides of its fields) as in PipelineSettings."""
    if settings is not None and not isinstance(settings, PipelineSettings):
        raise ConfigError(f"settings must be a PipelineSettings (or None), got {type(settings).__name__}; give the "
                          "fields as keywords, e.g. run_pipeline(data, out, preset=\"tiny\")")
    unknown = sorted(set(overrides) - {f.name for f in fields(PipelineSettings)})
    if unknown:
        raise ConfigError(f"unknown pipeline setting(s) {', '.join(unknown)}; the settings are "
                          f"{', '.join(f.name for f in fields(PipelineSettings))}")
    check_path(out, "out (the run directory)")
    settings = PipelineSettings(**{**(asdict(settings) if settings else {}), **overrides})
    tokenizer_options = preset_tokenizer_options(settings.preset)  # an unknown preset fails first
    check_choice(settings.tokenizer_kind, "--tokenizer-kind", TOKENIZER_KINDS)
    _check_settings(settings)
    out = RunDir(out)
    frame = load_prices(data, date_format=settings.date_format)
    splits = time_splits(frame, train_end=settings.train_end, val_end=settings.val_end)
    # a bad --config/--set fails here, not after the tokenizer has been fitted into a new run directory
    config = resolve_config(settings.preset, settings.config, list(settings.overrides), settings.max_steps)
    series = symbol_series(return_features(frame), splits)  # the pre-checks' view of the bars of each split
    _check_splits_hold_the_horizon(frame, splits, series, settings)
    if config.model.side and not has_side_columns(frame):
        raise ConfigError("model.side=true needs open, high and low columns (each bar's range and gap); the data has "
                          f"{', '.join(c for c in frame.columns if c not in ('timestamp', 'symbol'))}: drop "
                          "--set model.side=true")
    tokenizer_options.update({k: v for k, v in (("patch_len", settings.patch_len),
                                                 ("codebook_size", settings.codebook_size),
                                                 ("scaling", settings.scaling), ("halflife", settings.halflife),
                                                 ("decode", settings.decode)) if v})
    if settings.seasonal is not None:
        if not isinstance(settings.seasonal, bool):
            raise ConfigError(f"seasonal must be True, False or None (the preset's), got {settings.seasonal!r}")
        tokenizer_options["seasonal"] = settings.seasonal
    record = {"format_version": FORMAT_VERSION, "data": _source_id(data), **splits.to_dict(),
              "preset": settings.preset, "tokenizer_kind": settings.tokenizer_kind, "tokenizer": tokenizer_options,
              "horizon": settings.horizon or DEFAULT_HORIZON, "num_samples": settings.num_samples,
              "cost_bps": settings.cost_bps, "max_steps": settings.max_steps, "config": settings.config,
              "set": list(settings.overrides), "seed": settings.seed, "ablation": bool(settings.ablation)}
    if settings.date_format is not None:  # only when given, so that runs made before the flag existed still match
        record["date_format"] = settings.date_format
    if settings.ensemble > 1:  # likewise
        record["ensemble"] = settings.ensemble
    if settings.calibration_max_origins is not None:  # likewise
        record["calibration_max_origins"] = settings.calibration_max_origins
    init = _check_init(settings, splits) if settings.init is not None else None
    if init is not None:  # the tokenizer is the init's, whatever the preset's options
        c = init.tokenizer.config
        record.update(init=init.record(), tokenizer_kind=init.tokenizer.kind,
                      tokenizer={"patch_len": c.patch_len, "codebook_size": init.tokenizer.vocab_size,
                                 "scaling": c.scaling})
    _check_windows(series, (config.model if init is None else init.model.config).sequence_len,
                   record["tokenizer"].get("patch_len") or DEFAULT_PATCH_LEN)
    info = dist.dist_env()
    owns_process_group = info.enabled and not dist.is_initialized()
    if owns_process_group:  # under torchrun: one group for training, the sharded forecasts and the stage barriers
        dist.init(info, pick_device(config.train.device, info), timeout=PIPELINE_TIMEOUT)
    created = not out.root.exists()
    dist.barrier(info)  # every process has looked at `out` before rank 0 writes to it
    try:
        if info.is_main:
            _prepare_run_dir(out, record, force=settings.force)
        dist.barrier(info)
        timings = _run_stages(settings, data, out, frame, splits, record, info, init, config)
    except BaseException:
        # a run directory this call created and no stage completed in holds at most run.json: remove it, so that
        # the user's next attempt (with other settings) does not trip over it
        if info.is_main and created and out.root.is_dir() \
                and {p.name for p in out.root.iterdir()} <= {"run.json", OUTPUT_MARKER}:
            shutil.rmtree(out.root, ignore_errors=True)
        if owns_process_group:
            dist.leave()
        raise
    if owns_process_group:
        dist.shutdown()
    if not info.is_main:  # rank 0 wrote the run and reports it
        return None
    return PipelineResult(run=out.root, evaluation=json.loads(out.eval_metrics.read_text()),
                          backtest=json.loads(out.backtest_metrics.read_text()), timings=timings)


def _check_settings(settings: PipelineSettings) -> None:
    """Every numeric setting that is given, checked before any work (0 is a value, not "the default")."""
    settings.ensemble = check_int(settings.ensemble, "--ensemble", 1, MAX_ENSEMBLE)
    if settings.calibration_max_origins is not None:
        settings.calibration_max_origins = check_int(settings.calibration_max_origins, "--calibration-max-origins",
                                                     1, 2**31 - 1)
    for name, flag, lo, hi in (("horizon", "--horizon", 1, MAX_HORIZON_BARS), ("patch_len", "--patch-len", 1, 4096),
                               ("codebook_size", "--codebook-size", 2, 65536), ("max_steps", "--max-steps", 1, 10**9)):
        if getattr(settings, name) is not None:
            setattr(settings, name, check_int(getattr(settings, name), flag, lo, hi))
    if settings.num_samples is not None:
        settings.num_samples = check_num_samples(settings.num_samples, "--num-samples")
        check_scored_samples(settings.num_samples)
    if settings.halflife is not None:
        check_number(settings.halflife, "--halflife", 0, 1e6, lo_open=True)
    settings.seed = check_seed(settings.seed, "--seed")
    for name in ("ablation", "force"):
        check_bool(getattr(settings, name), name)
    if not isinstance(settings.overrides, (list, tuple)) or not all(isinstance(o, str) for o in settings.overrides):
        raise ConfigError(f"overrides must be a list of \"section.key=value\" strings, got {settings.overrides!r}")


def _check_splits_hold_the_horizon(frame, splits, series, settings: PipelineSettings) -> None:
    """Before any stage: the later stages' values in bounds, and the validation and test splits long enough for
    the horizon (calibration, evaluation and backtest would otherwise refuse after training)."""
    horizon = settings.horizon or DEFAULT_HORIZON
    BacktestConfig(cost_bps=settings.cost_bps, horizon=horizon, num_samples=settings.num_samples or 256,
                   seed=settings.seed)
    if settings.ensemble > (settings.num_samples or 256):
        raise ConfigError(f"--ensemble {settings.ensemble} is more members than --num-samples "
                          f"{settings.num_samples or 256} paths per origin; each member needs at least one path")
    for stage, split in (("calibrate", "val"), ("test", "test")):
        cutoffs = resolve_cutoffs(frame, stage, train_end=splits.train_end, val_end=splits.val_end)
        require_origins(select_origins(series, split, horizon), series, cutoffs, horizon)
    cutoffs = resolve_cutoffs(frame, "backtest", train_end=splits.train_end, val_end=splits.val_end)
    require_origins(decision_origins(series, horizon), series, cutoffs, horizon, minimum=MIN_DECISIONS)


def _check_windows(series, sequence_len: int, patch_len: int) -> None:
    """Before any stage: some symbol has a training window in the train and in the validation split (the train
    stage's rule, train.data.window_length), so that a split too short fails here and not after the tokenizer has
    been fitted into the run directory."""
    needed = shortest_window(sequence_len + 1)
    for label, split in ((0, "train"), (1, "val")):
        longest = max((int(np.sum(s.labels == label)) // patch_len for s in series.values()), default=0)
        if longest < needed:
            raise DataError(f"the {split} split is too short: a {split} window needs {needed} consecutive tokens "
                            f"of one symbol (model.sequence_len={sequence_len}, {patch_len} bar(s) per token), the "
                            f"longest {split} series has {longest}; use more data, a longer {split} split "
                            "(--train-end / --val-end), or a smaller model.sequence_len")


# the settings that shape the tokenizer a pipeline fits; with an init its tokenizer is used as it is
_TOKENIZER_FLAGS = (("patch_len", "--patch-len"), ("codebook_size", "--codebook-size"), ("scaling", "--scaling"),
                    ("halflife", "--halflife"), ("decode", "--decode"), ("seasonal", "--seasonal"))


def _check_init(settings: PipelineSettings, splits) -> InitModel:
    """The init model, loaded (a missing or damaged folder fails here, before the run directory exists), and the
    settings that cannot go with it refused."""
    given = [flag for name, flag in _TOKENIZER_FLAGS if getattr(settings, name) is not None]
    if given:
        raise ConfigError(f"{', '.join(given)} shape a tokenizer fitted on this data; with --init the tokenizer is "
                          "the pretrained model's own: drop them")
    if settings.ablation:
        raise ConfigError("--ablation compares tokenizers fitted on this data; with --init the tokenizer is the "
                          "pretrained model's own: drop one of the two")
    init = load_init(settings.init)
    fitted_to = init.tokenizer.train_end
    if fitted_to is not None and splits.train_end < fitted_to:
        raise ConfigError(f"the tokenizer of --init {init.path} was fitted on data up to {iso(fitted_to)}, after "
                          f"this run's train_end {iso(splits.train_end)} (its tokens would count those bars as "
                          f"unseen); pass --train-end {iso(fitted_to)} or later")
    return init


def _copy_init_tokenizer(init: InitModel, target: Path, frame, splits) -> None:
    """RUN/tokenizer of a fine-tune: the init's tokenizer as it is (the same hash, so its codes mean what the
    model learned) with a report.json measured on this data."""
    report, _ = tokenizer_report(init.tokenizer, frame, splits)
    with atomic_dir(target, overwrite=target.exists()) as tmp:
        init.tokenizer.save_pretrained(tmp)
        write_json(tmp / "report.json", {**report, "init": init.record()})
    log.info(f"tokenizer of {init.path} copied to {target} ({report['codes_used']}/{report['codebook_size']} "
             "codes used on this data's train split)")


# ------------------------------------------------------------------------------------------------------ stages
# What each stage reads (besides the settings), relative to its run directory.
_STAGE_INPUTS = {
    "tokenizer": (),
    "tokenize": ("tokenizer/config.json", "tokenizer/model.safetensors"),
    "train": ("tokens/index.json",),
    "calibrate": ("model/model.safetensors", "model/config.json"),
    "evaluate": ("model/model.safetensors", "model/config.json", "calibration.json"),
    "backtest": ("model/model.safetensors", "model/config.json", "calibration.json"),
}
# the file whose presence says a stage finished; its time is compared with the inputs' for runs written before
# stages.json existed
_STAGE_OUTPUT = {"tokenizer": "tokenizer/report.json", "tokenize": "tokens/index.json", "train": "model/meta.json",
                 "calibrate": "calibration.json", "evaluate": "eval/metrics.json", "backtest": "backtest/metrics.json"}


def _fingerprint(root: Path, stage: str, record: dict, inputs: tuple[str, ...]) -> str:
    digest = hashlib.sha256(json.dumps([stage, record], sort_keys=True, default=str).encode())
    for name in inputs:
        path = root / name
        digest.update(name.encode())
        if path.is_file():
            with open(path, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
        else:
            digest.update(b"<missing>")
    return digest.hexdigest()


def _newer_than_inputs(root: Path, name: str, inputs: tuple[str, ...]) -> bool:
    output = root / _STAGE_OUTPUT[name]
    try:
        written = output.stat().st_mtime
        return all((root / p).stat().st_mtime <= written for p in inputs if (root / p).exists())
    except OSError:
        return False


def _read_json_dict(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        return {}
    return value if isinstance(value, dict) else {}


def _run_stages(settings: PipelineSettings, data, out: RunDir, frame, splits, record: dict,
                info: dist.DistInfo, init: InitModel | None, config) -> dict[str, float]:
    timings: dict[str, float] = {}
    recorded = _read_json_dict(out.stages)

    def stage(name: str, run: RunDir, done: Callable[[], bool], work: Callable[[], object],
              extra_inputs: tuple[str, ...] = (), kind: str | None = None) -> None:
        kind = kind or name.removeprefix("ablation ")
        key = name if run == out else f"{run.root.name}/{kind}"
        inputs = _STAGE_INPUTS[kind] + extra_inputs
        before = _fingerprint(run.root, key, record, inputs)
        finished = done()
        if finished and (recorded.get(key) == before
                         or (key not in recorded and _newer_than_inputs(run.root, kind, inputs))):
            log.info(f"[{name}] already complete, skipped")
            return
        if finished:
            log.info(f"[{name}] its inputs changed (or it did not finish): redoing it")
        log.info(f"[{name}] ...")
        start = time.perf_counter()
        if kind in COLLECTIVE_STAGES or info.is_main:
            work()
        dist.barrier(info)  # the stage's files are in place before any process looks at the next stage
        timings[name] = time.perf_counter() - start
        log.info(f"[{name}] done in {timings[name]:.1f}s")
        recorded[key] = before  # the inputs as they were when the stage ran
        if info.is_main:
            write_json(out.stages, recorded)

    def model_stages(run: RunDir, kind: str, prefix: str = "") -> None:
        tokenizer_options = record["tokenizer"]

        def tokenizer() -> None:
            if init is not None:  # a fine-tune reads tokens of the pretrained tokenizer
                _copy_init_tokenizer(init, run.tokenizer, frame, splits)
                return
            fit_to_dir(frame, run.tokenizer, kind=kind, train_end=splits.train_end, val_end=splits.val_end,
                       seed=settings.seed, overwrite=run.tokenizer.exists(), **tokenizer_options)

        stage(f"{prefix}tokenizer", run, lambda: (run.tokenizer / "report.json").is_file(), tokenizer)
        stage(f"{prefix}tokenize", run, lambda: (run.tokens / "index.json").is_file(),
              lambda: write_token_store(load_tokenizer(run.tokenizer), frame, run.tokens, splits,
                                        overwrite=run.tokens.exists()))
        stage(f"{prefix}train", run, lambda: run.model_meta.is_file() and _training_finished(run),
              lambda: train(run, run.tokens))

    def train(run: RunDir, tokens: Path, seed_overrides: tuple[str, ...] = ()) -> None:
        """The pipeline's training of `run` on `tokens` (resumed from its latest checkpoint when it has one)."""
        resume = latest_checkpoint(run.root) is not None
        train_run(tokens=tokens, out=run.root, preset=settings.preset, config_file=settings.config,
                  overrides=train_overrides(resume) + list(seed_overrides), max_steps=settings.max_steps,
                  resume=resume, allow_existing=True, init=None if init is None else init.path)

    horizon = record["horizon"]
    # A volatility head for the run's horizon unless the config or --set chose (MODEL_README, "Side channels and
    # the volatility head": neutral for the paths' CRPS, a better variance forecast than the paths' own)
    # (a resumed training keeps the network its RUN/config.yaml records)
    vol_head = init is None and "model.vol_bars" not in explicit_keys(settings.config, settings.overrides)

    def train_overrides(resume: bool) -> list[str]:
        # at most half a window of tokens ahead (VolTargets' bound), so that every head the pipeline adds can learn
        bound = (config.model.sequence_len // 2) * (record["tokenizer"].get("patch_len") or DEFAULT_PATCH_LEN)
        head = [f"model.vol_bars={min(horizon, bound)}"] if vol_head and not resume and bound >= 1 else []
        return head + list(settings.overrides)

    model_stages(out, settings.tokenizer_kind)
    members = [out.member(k) for k in range(2, settings.ensemble + 1)]
    for k, member in enumerate(members, start=2):
        if info.is_main:
            make_dirs(member.root)
        # the run's tokens, the next training seed; everything else as the run's own training
        stage(f"member {k} train", member, lambda m=member: m.model_meta.is_file() and _training_finished(m),
              lambda m=member, k=k: train(m, out.tokens, (f"train.seed={config.train.seed + k - 1}",)),
              extra_inputs=(f"../../{out.relative(out.tokens / 'index.json')}",), kind="train")
    if info.is_main and members:
        write_json(out.ensemble, {"members": [out.relative(m.root) for m in members],
                                  "train_seeds": [config.train.seed + k for k in range(len(members) + 1)]})
    pooled = tuple(out.relative(m.model_weights) for m in members)  # the pool's other weights: inputs of the rest
    num_samples = settings.num_samples or 256
    stage("calibrate", out, out.calibration.is_file,
          lambda: calibrate_temperature(Forecaster.from_run(out.root), frame, splits, horizon=horizon,
                                        num_samples=num_samples, max_origins=settings.calibration_max_origins),
          extra_inputs=pooled)
    ablation_runs, extra = None, ()
    if settings.ablation:
        # The same pipeline with the quantile tokenizer, scored on the same origins in the report.
        ablation = out.ablation("quantile")
        if info.is_main:
            make_dirs(ablation.root)
            mark_output(ablation.root)
        model_stages(ablation, "quantile", prefix="ablation ")
        ablation_runs = {"quantile": ablation.root}
        extra = (out.relative(ablation.model_weights),)
    extra += pooled
    # a path is passed on as a path (metrics.json names it); a frame, or a path read with a --date-format, as
    # the frame already read and validated
    source = str(data) if not isinstance(data, pd.DataFrame) and settings.date_format is None else frame
    stage("evaluate", out, out.eval_metrics.is_file,
          lambda: evaluate_run(out.root, data=source, split="test", horizons=[horizon, 1],
                               num_samples=settings.num_samples, seed=settings.seed, ablation_runs=ablation_runs),
          extra_inputs=extra)
    stage("backtest", out, out.backtest_metrics.is_file,
          lambda: run_backtest(out.root, data=source, cost_bps=settings.cost_bps, horizon=horizon,
                               seed=settings.seed, num_samples=num_samples), extra_inputs=pooled)
    if info.is_main and ({"evaluate", "backtest"} & set(timings) or _report_stale(out)):
        refresh_report(out.root)  # the report shows the backtest, which runs after the evaluation
        if "evaluate" in timings and load_config(out.config).train.mlflow:
            log_evaluation(out.root)  # the verdicts and the report on the training's MLflow run
    if info.is_main and timings:
        write_json(out.timings, {**_read_json_dict(out.timings), **{k: round(v, 2) for k, v in timings.items()}})
    dist.barrier(info)
    return timings


def _report_stale(out: RunDir) -> bool:
    """Whether RUN/eval/report.html is missing or older than the evaluation or backtest it shows (a refresh that
    was interrupted): a rerun of the pipeline renders it again."""
    if not out.report_html.is_file():
        return True
    shown = out.report_html.stat().st_mtime
    return any(path.is_file() and path.stat().st_mtime > shown for path in (out.eval_metrics, out.backtest_metrics))


def _training_finished(run: RunDir) -> bool:
    return bool(_read_json_dict(run.model_meta).get("finished", True))


def _prepare_run_dir(out: RunDir, record: dict, *, force: bool) -> None:
    if out.root.exists():
        previous = _read_json_dict(out.settings) if out.settings.is_file() else None
        if previous == record:
            log.info(f"{out.root} exists with the same settings: finishing any incomplete stage")
            return
        if not force:
            what = "was made with different settings" if previous is not None else "exists and is not a pipeline run"
            raise OutputExistsError(f"{out.root} {what}; choose another --out, or pass --force to replace it")
        if previous and "format_version" in previous:
            mark_output(out.root)  # a pipeline run from before the marker existed
        remove_output(out.root)
    make_dirs(out.root)
    mark_output(out.root)
    write_json(out.settings, record)


__all__ = ["DEFAULT_HORIZON", "PipelineResult", "PipelineSettings", "run_pipeline"]
