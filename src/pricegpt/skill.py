"""`pricegpt skill`: the whole pipeline on a suite of datasets, and one table of what it shows about skill.

    result = run_skill("runs/skill", suite="embedded", settings=PipelineSettings(preset="tiny"))
    print(result.to_markdown())          # also written as runs/skill/skill.md and skill.json

Each dataset runs `pipeline.run_pipeline` into OUT/<name>/ (a sample's name, or a file's stem), so a rerun with the
same settings finishes what is missing and skips every complete stage: an interrupted suite resumes. The table has
one row per dataset: its size, the horizon, the best baseline, the model's CRPS ratio to it with the 95% interval
of the date-block bootstrap and the verdict (evaluate/significance.py), the coverage of the model's 50% and 90%
intervals, and how often the realised H-bar return fell below the model's 5% VaR. Its header says when and on
what machine it was made, and with which settings, so that a table quoted in a README can be reproduced.

Three modes, one table (its `mode` column says which):
- from scratch (the default): the pipeline fits a tokenizer and trains a model on each dataset's train split;
- fine-tuned (`settings.init`, `pricegpt skill --init NAME`): the same pipeline starting from a pretrained model's
  weights and tokenizer (pipeline.py, "Fine-tuning");
- zero-shot (`model=`, `pricegpt skill --model NAME`): no training; per dataset `evaluate.evaluate_model` into
  OUT/<name>/eval/ and `backtest.backtest_model` into OUT/<name>/backtest/ (the backtest reuses the temperature
  the evaluation chose on the dataset's validation split), recorded in OUT/<name>/zero_shot.json so that a rerun
  with the same settings skips what is done.
With a pretrained model (fine-tuned or zero-shot), a dataset whose test split would score bars at or before the
model's data cutoff (bars it trained on) is not run: its row says so and carries no verdict.

Everything a user can get wrong (an unknown suite or preset, a missing file, an output folder that pricegpt did not
write) is refused before the first pipeline starts.

Under `torchrun --nproc-per-node=N -m pricegpt -- skill ...` (not zero-shot, which runs in one process) every
process runs every dataset's pipeline (which shares training's batches and the forecast origins of calibration,
evaluation and backtest over the processes) and rank 0 alone writes OUT's own files and returns the table; the
other processes return None.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import re
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from .backtest import BacktestConfig, backtest_model, plan_decisions
from .config import preset_tokenizer_options
from .data import iso, load_prices, time_splits
from .data.windows import resolve_cutoffs, run_cutoffs
from .errors import ConfigError, LeakageError, OutputExistsError
from .evaluate import evaluate_model
from .evaluate.render import markdown_text
from .fileio import OUTPUT_MARKER, make_dirs, mark_output, remove_output, safe_file_names, write_json, write_text
from .forecast import Forecaster
from .forecast.forecaster import resolve_model
from .pipeline import DEFAULT_HORIZON, PipelineSettings, run_pipeline
from .pipeline import _source_id as source_id  # how a run records its data source; zero_shot.json alike
from .rundir import RunDir
from .train.checkpoint import load_init
from .train.dist import dist_env

log = logging.getLogger("pricegpt")

SUITES: dict[str, tuple[str, ...]] = {"embedded": ("sample:stocks-daily", "sample:eurusd-hourly")}
MODES = ("from scratch", "fine-tuned", "zero-shot")
ZERO_SHOT_FILE = "zero_shot.json"  # OUT/<name>/zero_shot.json: what a zero-shot dataset was run with
VAR_LEVEL = "5%"  # the model's VaR whose exceedance rate the table shows (calibrated: 5%)
LEGEND = ("CRPS ratio: the model's mean CRPS of the H-bar return over the best baseline's on the same test origins "
          "(below 1 favours the model), with the 95% interval of a block bootstrap over dates; verdict: better / "
          "worse when the interval of the CRPS difference excludes 0. Coverage: of the model's central 50% and 90% "
          "intervals. VaR 5% exceedances: share of origins whose return fell below the model's 5% quantile "
          "(calibrated: 5%).")


@dataclass
class SkillRow:
    """One dataset's line of the table (None where the evaluation could not compute a value)."""

    dataset: str
    source: str
    run: str
    bars: int
    symbols: int
    horizon: int | None
    n_origins: int | None
    best_baseline: str | None
    crps_ratio: float | None
    crps_ratio_ci: list[float] | None
    verdict: str | None
    coverage_50: float | None
    coverage_90: float | None
    var_5_exceedance: float | None
    sharpe: float | None = None
    pipeline_seconds: float | None = None
    note: str | None = None              # why there is no verdict, when there is none
    mode: str = "from scratch"           # MODES: how the model was made


@dataclass
class SkillResult:
    date: str
    machine: dict
    settings: dict
    rows: list[SkillRow] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"date": self.date, "machine": self.machine, "settings": self.settings,
                "rows": [asdict(row) for row in self.rows]}

    def to_markdown(self) -> str:
        """The table as Markdown, with the date, the machine and the settings above it."""
        m = self.machine
        lines = ["# pricegpt skill suite", "",
                 markdown_text(f"{self.date}; {m['platform']}, {m['cpu']}, {m['cpu_count']} cores, torch "
                               f"{m['torch']} ({m['threads']} threads), load average {m['load_average']}; pricegpt "
                               f"{m['pricegpt']}."),
                 "",
                 markdown_text(settings_line(self.settings)),
                 "",
                 "| dataset | mode | bars | symbols | horizon | origins | best baseline | CRPS ratio [95% CI] | "
                 "verdict | cov 50% | cov 90% | VaR 5% exceedances |",
                 "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for row in self.rows:
            cells = [row.dataset, row.mode, f"{row.bars:,}", row.symbols, _text(row.horizon), _text(row.n_origins),
                     _text(row.best_baseline), _ratio(row.crps_ratio, row.crps_ratio_ci), _text(row.verdict),
                     _pct(row.coverage_50), _pct(row.coverage_90), _pct(row.var_5_exceedance)]
            lines.append("| " + " | ".join(markdown_text(c) for c in cells) + " |")
        notes = [markdown_text(f"{row.dataset}: {row.note}") + "  " for row in self.rows if row.note]
        lines += ["", *notes, *([""] if notes else []), markdown_text(LEGEND), ""]
        return "\n".join(lines)


def settings_line(s: dict) -> str:
    """The line above the table that says how its models were made (and forecast)."""
    mode = s.get("mode", "from scratch")
    sampling = (f"{_text(s['num_samples'], '256 (default)')} sampled paths per origin, horizon "
                f"{_text(s['horizon'], f'{DEFAULT_HORIZON} bars (default)')}, seed {s['seed']}")
    if mode == "zero-shot":
        temperature = ("the sampling temperature chosen on each dataset's validation split" if s.get("calibrate", True)
                       else "the model's own sampling temperature")
        return (f"Zero-shot: {s['model']} (data cutoff {_text(s.get('data_cutoff'))[:10]}), no training; "
                f"{temperature}; {sampling}.")
    start = (f"Pipeline, fine-tuned from {s['model']}: preset {s['preset']}, its tokenizer" if mode == "fine-tuned"
             else f"Pipeline: preset {s['preset']}, tokenizer {s['tokenizer_kind']}")
    return (f"{start}, max steps {_text(s['max_steps'], 'preset default')}, {sampling}"
            + (f", overrides {' '.join(s['overrides'])}" if s["overrides"] else "") + ".")


def _text(value, missing: str = "n/a") -> str:
    return missing if value is None else str(value)


def _pct(value) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def _ratio(value, interval) -> str:
    if value is None:
        return "n/a"
    if not interval or any(v is None for v in interval):
        return f"{value:.3f}"
    return f"{value:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]"


# --------------------------------------------------------------------------------------------------- running
def skill_datasets(suite: str | None = None, data=()) -> dict[str, str]:
    """{name: source} of the suite's datasets, then of `data` (paths or sample:NAME); names are unique file names
    (a sample's name, a file's stem). Neither given: the embedded suite."""
    data = [str(d) for d in data]
    if suite is None and not data:
        suite = "embedded"
    if suite is not None and suite not in SUITES:
        raise ConfigError(f"--suite must be one of {', '.join(SUITES)}, got {suite!r}")
    sources = [*(SUITES[suite] if suite else ()), *data]
    sources = list(dict.fromkeys(sources))
    stems = [_stem(source) for source in sources]
    names = safe_file_names(stems) if len(set(stems)) == len(stems) else None
    if names is None:  # two files with the same stem: number them in order
        stems = [f"{stem}-{k + 1}" for k, stem in enumerate(stems)]
        names = safe_file_names(stems)
    return {names[stem]: source for stem, source in zip(stems, sources)}


def _stem(source: str) -> str:
    if source.startswith("sample:"):
        return source.removeprefix("sample:")
    name = Path(source.rstrip("/\\")).name
    return re.sub(r"(\.csv|\.parquet|\.pq|\.txt)?(\.gz|\.bz2|\.xz|\.zip)?$", "", name, flags=re.I) or "data"


def machine_info() -> dict:
    """What the suite ran on: platform, CPU model and count, torch and its threads, the load, pricegpt's version."""
    import torch  # the pipeline imports it anyway; here only for its version and thread count

    from . import __version__

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError, StopIteration):
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {"platform": platform.platform(), "cpu": cpu, "cpu_count": os.cpu_count() or 1,
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "load_average": " ".join(f"{v:.1f}" for v in load), "python": platform.python_version(),
            "pricegpt": __version__}


def _check_out(out: Path) -> None:
    """OUT may be new, empty, or a folder pricegpt wrote (a suite to resume): never a user's folder."""
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"--out {out} exists and is not a folder; choose another --out")
    if out.is_dir() and any(out.iterdir()) and not (out / OUTPUT_MARKER).is_file():
        raise OutputExistsError(f"--out {out} exists and was not written by pricegpt (no {OUTPUT_MARKER} marker); "
                                "choose another --out")


def run_skill(out, suite: str | None = None, data=(), settings: PipelineSettings | None = None, *,
              model=None, calibrate: bool = True) -> SkillResult | None:
    """Run every dataset of `suite` and `data` (skill_datasets) into OUT/<name>/ and write OUT/skill.json and
    OUT/skill.md. Returns the table (None on the processes of a torchrun launch other than rank 0, which writes).
    A rerun resumes: complete stages are skipped.

    Mode (module docstring): the pipeline with `settings` (from scratch; fine-tuned when settings.init names a
    pretrained model), or, with `model` (a forecaster folder or a built-in name), zero-shot: no training, the
    settings' horizon, num_samples, seed, cost_bps, train_end / val_end and force apply; `calibrate` chooses the
    temperature on each dataset's validation split (else the model's own)."""
    settings = settings or PipelineSettings()
    if model is not None and settings.init is not None:
        raise ConfigError("give a model to run zero-shot (--model) or one to fine-tune (--init), not both")
    mode = "zero-shot" if model is not None else "fine-tuned" if settings.init is not None else "from scratch"
    if mode == "zero-shot" and dist_env().enabled:
        raise ConfigError("skill --model runs in one process; launch it without torchrun")
    writes = dist_env().is_main
    out = Path(out)
    datasets = skill_datasets(suite, data)
    preset_tokenizer_options(settings.preset)  # an unknown preset, a missing file, a foreign --out: refused first
    _check_out(out)
    frames = {name: load_prices(source, date_format=settings.date_format) for name, source in datasets.items()}
    sizes = {name: (len(frame), int(frame["symbol"].nunique())) for name, frame in frames.items()}
    pretrained, cutoff, seen = None, None, {}
    if mode != "from scratch":
        pretrained = model if model is not None else settings.init
        cutoff, seen = _seen_datasets(mode, pretrained, frames, settings)
        if datasets and len(seen) == len(datasets):  # nothing could be scored: a mistake, not an empty table
            name = next(iter(seen))
            raise LeakageError(f"no dataset can be scored with {pretrained}: {name} ({datasets[name]}): "
                               f"{seen[name]}; give data after the data cutoff {str(cutoff)[:10]}")
    if settings.date_format is None:  # each stage reads its path itself: no frames held while the suite runs
        frames.clear()
    if writes:
        make_dirs(out)
        mark_output(out)
    result = SkillResult(date=datetime.now(timezone.utc).isoformat(timespec="seconds"), machine=machine_info(),
                         settings={"mode": mode, "model": None if pretrained is None else str(pretrained),
                                   "data_cutoff": cutoff,
                                   "calibrate": bool(calibrate) if mode == "zero-shot" else None,
                                   "preset": settings.preset, "tokenizer_kind": settings.tokenizer_kind,
                                   "max_steps": settings.max_steps, "num_samples": settings.num_samples,
                                   "horizon": settings.horizon, "seed": settings.seed,
                                   "overrides": list(settings.overrides), "suite": suite,
                                   "datasets": dict(datasets)})
    for k, (name, source) in enumerate(datasets.items(), 1):
        if name in seen:
            log.warning(f"skill: [{k}/{len(datasets)}] {name} ({source}) not run: {seen[name]}")
            result.rows.append(SkillRow(dataset=name, source=source, run=str(out / name), bars=sizes[name][0],
                                        symbols=sizes[name][1], horizon=None, n_origins=None, best_baseline=None,
                                        crps_ratio=None, crps_ratio_ci=None, verdict=None, coverage_50=None,
                                        coverage_90=None, var_5_exceedance=None, note=f"not run: {seen[name]}",
                                        mode=mode))
            continue
        log.info(f"skill: [{k}/{len(datasets)}] {name} ({source}, {mode}) -> {out / name}")
        # a path is passed on as a path (metrics.json names it); one read with a --date-format as its frame
        given = source if settings.date_format is None else frames[name]
        if mode == "zero-shot":
            evaluation, backtest = zero_shot_dataset(out / name, given, model, settings, calibrate=calibrate)
            run_dir = out / name
        else:
            run = run_pipeline(given, out / name, settings)
            if not writes:
                continue
            evaluation, backtest, run_dir = run.evaluation, run.backtest, run.run
        if writes:
            result.rows.append(skill_row(name, source, run_dir, evaluation, backtest, *sizes[name], mode=mode))
    if not writes:
        return None
    write_json(out / "skill.json", result.to_dict())
    write_text(out / "skill.md", result.to_markdown())
    return result


def _seen_datasets(mode: str, model, frames: dict, settings: PipelineSettings) -> tuple[str | None, dict[str, str]]:
    """(the pretrained model's data cutoff, {name: why} of the datasets it cannot be scored on honestly): those
    whose test split holds bars at or before the cutoff, i.e. bars the model trained on. Zero-shot: the backtest's
    decisions under the leakage rule (data.windows), which evaluation shares; fine-tuned: the pipeline's val_end
    before the cutoff. A dataset too short for the horizon is refused here (DataError), before anything runs."""
    seen = {}
    if mode == "zero-shot":
        forecaster = Forecaster.from_pretrained(model)
        cutoff = run_cutoffs(forecaster.run)[1]
        config = BacktestConfig(horizon=settings.horizon or DEFAULT_HORIZON, num_samples=settings.num_samples or 256,
                                seed=settings.seed, cost_bps=settings.cost_bps)
        for name, frame in frames.items():
            cutoffs = resolve_cutoffs(frame, "backtest", forecaster.run, train_end=settings.train_end,
                                      val_end=settings.val_end)
            try:
                plan_decisions(frame, forecaster, cutoffs, config)
            except LeakageError:
                seen[name] = (f"its test split (after {iso(cutoffs.splits.val_end)[:10]}) is not after the model's "
                              f"data cutoff {iso(cutoff)[:10]}: the model trained on such bars, so no zero-shot score")
        return None if cutoff is None else iso(cutoff), seen
    init = load_init(model)
    cutoff = init.data_cutoff
    if cutoff is None:
        return None, seen
    cutoff_time = pd.Timestamp(cutoff)
    cutoff_time = cutoff_time.tz_localize("UTC") if cutoff_time.tzinfo is None else cutoff_time
    for name, frame in frames.items():
        val_end = time_splits(frame, train_end=settings.train_end, val_end=settings.val_end).val_end
        if val_end < cutoff_time:
            seen[name] = (f"its test split (after {iso(val_end)[:10]}) is not after the data cutoff "
                          f"{str(cutoff)[:10]} of {model}: it trained on such bars, so no fine-tuned score")
    return cutoff, seen


def zero_shot_dataset(folder, source, model, settings: PipelineSettings, calibrate: bool = True
                      ) -> tuple[dict, dict]:
    """Zero-shot evaluation (FOLDER/eval/) and backtest (FOLDER/backtest/) of `model` on one dataset, with the
    settings' horizon (and 1), num_samples, seed, cost_bps and cutoffs; the backtest trades with the temperature
    the evaluation chose. Resumable: FOLDER/zero_shot.json records the settings, and a rerun with the same ones
    skips what exists; other settings are refused unless settings.force (then FOLDER is replaced). Returns
    (eval metrics.json, backtest metrics.json)."""
    folder = RunDir(folder)
    horizon = settings.horizon or DEFAULT_HORIZON
    record = {"mode": "zero-shot", "model": str(resolve_model(model)), "data": source_id(source),
              "train_end": settings.train_end, "val_end": settings.val_end, "horizon": horizon,
              "num_samples": settings.num_samples, "seed": settings.seed, "cost_bps": settings.cost_bps,
              "calibrate": bool(calibrate)}
    marker = folder.root / ZERO_SHOT_FILE
    if folder.root.is_dir() and any(folder.root.iterdir()) and _read_json(marker) != record:
        if not settings.force:
            what = "was run with other settings" if marker.is_file() else "is not a zero-shot run"
            raise OutputExistsError(f"{folder.root} {what}; choose another --out, or pass --force to replace it")
        remove_output(folder.root)
    make_dirs(folder.root)
    mark_output(folder.root)
    write_json(marker, record)
    timings = _read_json(folder.timings)
    num_samples = settings.num_samples or 256
    if not folder.eval_metrics.is_file():
        start = time.perf_counter()
        evaluate_model(model, source, folder.eval, train_end=settings.train_end, val_end=settings.val_end,
                       calibrate=calibrate, num_samples=num_samples, horizons=[horizon, 1], seed=settings.seed)
        timings["evaluate"] = round(time.perf_counter() - start, 2)
    evaluation = json.loads(folder.eval_metrics.read_text())
    if not folder.backtest_metrics.is_file():
        start = time.perf_counter()
        zero = evaluation.get("zero_shot") or {}
        backtest_model(model, source, folder.backtest, train_end=settings.train_end, val_end=settings.val_end,
                       horizon=horizon, num_samples=num_samples, seed=settings.seed, cost_bps=settings.cost_bps,
                       temperature=zero.get("temperature"),
                       temperature_from=f"the zero-shot evaluation's, from {zero.get('temperature_from')}")
        timings["backtest"] = round(time.perf_counter() - start, 2)
    write_json(folder.timings, timings)
    return evaluation, json.loads(folder.backtest_metrics.read_text())


def skill_row(name: str, source: str, run_dir, evaluation: dict, backtest: dict | None, bars: int,
              symbols: int, mode: str = "from scratch") -> SkillRow:
    """One table row from a finished run's metrics.json (evaluation) and backtest metrics."""
    fc = evaluation.get("forecast") or {}
    verdict = fc.get("verdict") or {}
    model = fc.get("model") or {}
    timings = _read_json(RunDir(run_dir).timings)
    return SkillRow(dataset=name, source=source, run=str(run_dir), bars=bars, symbols=symbols,
                    horizon=fc.get("horizon_bars"), n_origins=fc.get("n_origins"),
                    best_baseline=verdict.get("best_baseline"), crps_ratio=verdict.get("crps_ratio"),
                    crps_ratio_ci=verdict.get("crps_ratio_ci"), verdict=verdict.get("verdict"),
                    coverage_50=model.get("coverage_50"), coverage_90=model.get("coverage_90"),
                    var_5_exceedance=var_exceedance(fc.get("var_tests"), "model", VAR_LEVEL),
                    sharpe=((backtest or {}).get("strategy") or {}).get("sharpe"),
                    pipeline_seconds=round(sum(v for v in timings.values() if isinstance(v, (int, float))), 1)
                    if timings else None,
                    note=None if verdict.get("verdict") else
                    f"no verdict: {(fc.get('notes') or {}).get('verdict', 'the evaluation has no paired comparison')}",
                    mode=mode)


def var_exceedance(var_tests, name: str = "model", level: str = VAR_LEVEL) -> float | None:
    """metrics.json's forecast.var_tests[name][level]["rate"] (the exceedance rate), None when absent."""
    entry = ((var_tests or {}).get(name) or {}).get(level) or {}
    rate = entry.get("rate", entry.get("exceedance_rate"))
    return float(rate) if isinstance(rate, (int, float)) else None


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


__all__ = ["MODES", "SUITES", "SkillResult", "SkillRow", "machine_info", "run_skill", "settings_line",
           "skill_datasets", "skill_row", "var_exceedance", "zero_shot_dataset"]
