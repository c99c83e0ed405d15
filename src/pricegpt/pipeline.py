"""`pricegpt pipeline`: prices -> tokenizer -> tokens -> GPT -> calibration -> evaluation -> backtest -> report.

Every stage writes its own part of the run directory atomically and is skipped when its output is already
complete, so a pipeline that was killed (or a quickstart run twice) picks up where it stopped. `RUN/run.json`
records the settings; rerunning into the same RUN with different settings is an error unless --force.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from .errors import OutputExistsError
from .fileio import make_dirs, mark_output, remove_output, write_json

log = logging.getLogger("pricegpt")

FORMAT_VERSION = 1
DEFAULT_HORIZON = 4  # bars: a week of daily bars, half a trading day of hourly FX
# Tokenizer settings per model preset. The tiny preset is for small CPU-sized datasets (a few thousand bars per
# symbol): one bar per token gives the GPT 4x the training tokens of 4-bar patches, and with ~2k tokens a
# 4-bar-patch model overfits before it beats the unigram baseline. Larger presets use the tokenizer's defaults.
PRESET_TOKENIZER = {"tiny": {"patch_len": 1}}


def _source_id(source: str) -> str:
    return source if source.startswith("sample:") else str(Path(source).resolve())


def run_pipeline(args) -> dict:
    """Run (or finish) every stage for args.data into args.out. Returns the evaluation and backtest metrics."""
    from .config import PRESET_NAMES, resolve_config
    from .data import load_prices, time_splits
    from .errors import ConfigError

    if args.preset not in PRESET_NAMES:
        raise ConfigError(f"unknown preset {args.preset!r}; valid presets are {', '.join(PRESET_NAMES)}")
    out = Path(args.out)
    date_format = getattr(args, "date_format", None)
    frame = load_prices(args.data, date_format=date_format)
    splits = time_splits(frame, train_end=args.train_end, val_end=args.val_end)
    # a bad --config/--set fails here, not after the tokenizer has been fitted into a new run directory
    resolve_config(args.preset, args.config, list(args.set or []), args.max_steps)
    _check_splits_hold_the_horizon(frame, splits, args)
    tokenizer_options = dict(PRESET_TOKENIZER.get(args.preset, {}))
    tokenizer_options.update({k: v for k, v in (("patch_len", args.patch_len),
                                                 ("codebook_size", args.codebook_size)) if v})
    settings = {"format_version": FORMAT_VERSION, "data": _source_id(args.data), **splits.to_dict(),
                "preset": args.preset, "tokenizer_kind": args.tokenizer_kind, "tokenizer": tokenizer_options,
                "horizon": args.horizon or DEFAULT_HORIZON, "num_samples": args.num_samples,
                "cost_bps": args.cost_bps,
                "max_steps": args.max_steps, "config": args.config, "set": list(args.set or []),
                "seed": args.seed, "ablation": bool(getattr(args, "ablation", False))}
    if date_format is not None:  # only when given, so that runs made before the flag existed still match
        settings["date_format"] = date_format
    created = not out.exists()
    try:
        _prepare_run_dir(out, settings, force=args.force)
        return _run_stages(args, out, frame, splits, settings)
    except BaseException:
        # a run directory this call created and no stage completed in holds at most run.json: remove it, so that
        # the user's next attempt (with other settings) does not trip over it
        if created and out.is_dir() and {p.name for p in out.iterdir()} <= {"run.json"}:
            shutil.rmtree(out, ignore_errors=True)
        raise


# What each stage reads (besides the settings): a stage is complete only when its output exists AND the fingerprint
# of these inputs matches the one recorded when it finished. A resumed model therefore redoes calibration,
# evaluation and backtest, and an interrupted stage is never taken for a finished one.
_STAGE_INPUTS = {
    "tokenizer": (),
    "tokenize": ("tokenizer/config.json", "tokenizer/model.safetensors"),
    "train": ("tokens/index.json",),
    "calibrate": ("model/model.safetensors", "model/config.json"),
    "evaluate": ("model/model.safetensors", "model/config.json", "calibration.json"),
    "backtest": ("model/model.safetensors", "model/config.json", "calibration.json"),
}
STAGES_FILE = "stages.json"


def _fingerprint(out: Path, stage: str, settings: dict, inputs: tuple[str, ...]) -> str:
    import hashlib
    import json

    digest = hashlib.sha256(json.dumps([stage, settings], sort_keys=True, default=str).encode())
    for name in inputs:
        path = out / name
        digest.update(name.encode())
        if path.is_file():
            with open(path, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
        else:
            digest.update(b"<missing>")
    return digest.hexdigest()


# the file whose presence says a stage finished; its time is compared with the inputs' for runs written before
# stages.json existed
_STAGE_OUTPUT = {"tokenizer": "tokenizer/report.json", "tokenize": "tokens/index.json", "train": "model/meta.json",
                 "calibrate": "calibration.json", "evaluate": "eval/metrics.json", "backtest": "backtest/metrics.json"}


def _check_splits_hold_the_horizon(frame, splits, args) -> None:
    """Before any stage: the later stages' values in bounds, and the validation and test splits long enough for
    the horizon (calibration, evaluation and backtest would otherwise refuse after training)."""
    from .backtest import MIN_DECISIONS, BacktestConfig
    from .data.windows import (
        decision_origins,
        require_origins,
        resolve_cutoffs,
        return_features,
        select_origins,
        symbol_series,
    )

    horizon = args.horizon or DEFAULT_HORIZON
    BacktestConfig(cost_bps=args.cost_bps, horizon=horizon, num_samples=args.num_samples or 256, seed=args.seed)
    series = symbol_series(return_features(frame), splits)
    for stage, split in (("calibrate", "val"), ("test", "test")):
        cutoffs = resolve_cutoffs(frame, stage, train_end=splits.train_end, val_end=splits.val_end)
        require_origins(select_origins(series, split, horizon), series, cutoffs, horizon)
    cutoffs = resolve_cutoffs(frame, "backtest", train_end=splits.train_end, val_end=splits.val_end)
    require_origins(decision_origins(series, horizon), series, cutoffs, horizon, minimum=MIN_DECISIONS)


def _newer_than_inputs(root: Path, name: str, inputs: tuple[str, ...]) -> bool:
    output = root / _STAGE_OUTPUT[name.replace("ablation ", "")]
    try:
        written = output.stat().st_mtime
        return all((root / p).stat().st_mtime <= written for p in inputs if (root / p).exists())
    except OSError:
        return False


def _read_stages(out: Path) -> dict:
    import json

    try:
        stages = json.loads((out / STAGES_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return stages if isinstance(stages, dict) else {}


def _run_stages(args, out: Path, frame, splits, settings: dict) -> dict:
    tokenizer_options = settings["tokenizer"]
    timings: dict[str, float] = {}
    recorded = _read_stages(out)

    def stage(name: str, output_done: bool, fn, inputs: tuple[str, ...] | None = None, root: Path = out):
        key = name if root == out else f"{root.name}/{name}"
        needs = _STAGE_INPUTS.get(name.replace("ablation ", ""), ()) if inputs is None else inputs
        before = _fingerprint(root, key, settings, needs)
        if output_done and (recorded.get(key) == before
                            or (key not in recorded and _newer_than_inputs(root, name, needs))):
            log.info(f"[{name}] already complete, skipped")
            return
        if output_done:
            log.info(f"[{name}] its inputs changed (or it did not finish): redoing it")
        log.info(f"[{name}] ...")
        start = time.perf_counter()
        fn()
        timings[name] = time.perf_counter() - start
        log.info(f"[{name}] done in {timings[name]:.1f}s")
        # the fingerprint of the inputs as they were when the stage ran; a stage that rewrote its own inputs
        # (none does) would be redone next time, which is the safe side
        recorded[key] = before
        write_json(out / STAGES_FILE, recorded)

    from .tokenizer import fit_to_dir, load_tokenizer, write_token_store

    tok_dir = out / "tokenizer"
    stage("tokenizer", (tok_dir / "report.json").is_file(),
          lambda: fit_to_dir(frame, tok_dir, kind=args.tokenizer_kind, train_end=splits.train_end,
                             val_end=splits.val_end, seed=args.seed, overwrite=tok_dir.exists(),
                             **tokenizer_options))
    tokens_dir = out / "tokens"
    stage("tokenize", (tokens_dir / "index.json").is_file(),
          lambda: write_token_store(load_tokenizer(tok_dir), frame, tokens_dir, splits,
                                    overwrite=tokens_dir.exists()))

    from .train import latest_checkpoint, train_run

    def train(root: Path, tokens: Path):
        train_run(tokens=tokens, out=root, preset=args.preset, config_file=args.config,
                  overrides=list(args.set or []), max_steps=args.max_steps,
                  resume=latest_checkpoint(root) is not None, allow_existing=True)

    stage("train", (out / "model" / "meta.json").is_file() and _training_finished(out),
          lambda: train(out, tokens_dir))

    from .evaluate import evaluate_run
    from .forecast import calibrate_temperature
    from .runs import load_run

    horizon = settings["horizon"]
    stage("calibrate", (out / "calibration.json").is_file(),
          lambda: calibrate_temperature(load_run(out), frame, splits, horizon=horizon,
                                        num_samples=args.num_samples or 256))
    ablation_runs = None
    if settings["ablation"]:
        # The same pipeline with the quantile tokenizer, scored on the same origins in the report.
        ablation = out / "ablation-quantile"
        make_dirs(ablation)
        stage("ablation tokenizer", (ablation / "tokenizer" / "report.json").is_file(),
              lambda: fit_to_dir(frame, ablation / "tokenizer", kind="quantile", train_end=splits.train_end,
                                 val_end=splits.val_end, seed=args.seed, overwrite=(ablation / "tokenizer").exists(),
                                 **tokenizer_options), root=ablation)
        stage("ablation tokenize", (ablation / "tokens" / "index.json").is_file(),
              lambda: write_token_store(load_tokenizer(ablation / "tokenizer"), frame, ablation / "tokens", splits,
                                        overwrite=(ablation / "tokens").exists()), root=ablation)
        stage("ablation train", (ablation / "model" / "meta.json").is_file() and _training_finished(ablation),
              lambda: train(ablation, ablation / "tokens"), root=ablation)
        ablation_runs = {"quantile": ablation}
    evaluate_inputs = _STAGE_INPUTS["evaluate"] + (
        ("ablation-quantile/model/model.safetensors",) if ablation_runs else ())
    stage("evaluate", (out / "eval" / "metrics.json").is_file(),
          lambda: evaluate_run(out, data=args.data, split="test", horizon=horizon, num_samples=args.num_samples,
                               seed=args.seed, ablation_runs=ablation_runs), inputs=evaluate_inputs)

    from .backtest import run_backtest

    stage("backtest", (out / "backtest" / "metrics.json").is_file(),
          lambda: run_backtest(out, data=args.data, cost_bps=args.cost_bps, horizon=horizon, seed=args.seed,
                               num_samples=args.num_samples or 256))
    if timings:
        write_json(out / "timings.json", {**_read_timings(out), **{k: round(v, 2) for k, v in timings.items()}})
    return print_headline(out)


def _training_finished(out: Path) -> bool:
    import json

    try:
        meta = json.loads((out / "model" / "meta.json").read_text())
    except (OSError, ValueError):
        return False
    return bool(meta.get("finished", True))


def _read_timings(out: Path) -> dict:
    import json

    try:
        return json.loads((out / "timings.json").read_text())
    except (OSError, ValueError):
        return {}


def _prepare_run_dir(out: Path, settings: dict, *, force: bool) -> None:
    import json

    marker = out / "run.json"
    if out.exists():
        previous = None
        if marker.is_file():
            try:
                previous = json.loads(marker.read_text())
            except (OSError, ValueError):
                previous = None
        if previous == settings:
            log.info(f"{out} exists with the same settings: finishing any incomplete stage")
            return
        if not force:
            what = "was made with different settings" if previous is not None else "exists and is not a pipeline run"
            raise OutputExistsError(f"{out} {what}; choose another --out, or pass --force to replace it")
        if isinstance(previous, dict) and "format_version" in previous:
            mark_output(out)  # a pipeline run from before the marker existed
        remove_output(out)
    make_dirs(out)
    mark_output(out)
    write_json(marker, settings)


def print_headline(out: Path) -> dict:
    """Print the model-vs-baselines table and the backtest line; return both metrics dicts."""
    import json

    evaluation = json.loads((out / "eval" / "metrics.json").read_text())
    backtest = json.loads((out / "backtest" / "metrics.json").read_text())
    print(headline_table(evaluation))
    from .backtest import headline

    print(headline(backtest))
    print(f"report: {out / 'eval' / 'report.html'}")
    return {"eval": evaluation, "backtest": backtest}


def headline_table(evaluation: dict) -> str:
    tokens, forecast = evaluation["tokens"], evaluation["forecast"]
    lines = [f"tokens ({evaluation['split']} split, {evaluation['n_tokens']} tokens): perplexity "
             + ", ".join(f"{name} {tokens[name]['perplexity']:.2f}" for name in ("model", "unigram", "bigram")),
             f"forecast of the {forecast['horizon_bars']}-bar log return over {forecast['n_origins']} origins:",
             f"  {'':<12} {'CRPS':>10} {'cov50':>6} {'cov90':>6} {'dir.acc':>7}"]
    for name in ("model", "random_walk", "histvol20", "ewma", "bootstrap", "garch"):
        m = forecast.get(name)
        if m is None:
            lines.append(f"  {name:<12} {'n/a':>10}")
            continue
        lines.append(f"  {name:<12} {m['crps']:>10.5f} {m['coverage_50']:>6.1%} {m['coverage_90']:>6.1%} "
                     f"{m['directional_accuracy']:>7.1%}")
    return "\n".join(lines)
