"""`pricegpt skill`: the whole pipeline on a suite of datasets, and one table of what it shows about skill.

    result = run_skill("runs/skill", suite="embedded", settings=PipelineSettings(preset="tiny"))
    print(result.to_markdown())          # also written as runs/skill/skill.md and skill.json

Each dataset runs `pipeline.run_pipeline` into OUT/<name>/ (a sample's name, or a file's stem), so a rerun with the
same settings finishes what is missing and skips every complete stage: an interrupted suite resumes. The table has
one row per dataset: its size, the horizon, the best baseline, the model's CRPS ratio to it with the 95% interval
of the date-block bootstrap and the verdict (evaluate/significance.py), the coverage of the model's 50% and 90%
intervals, and how often the realised H-bar return fell below the model's 5% VaR. Its header says when and on
what machine it was made, and with which settings, so that a table quoted in a README can be reproduced.

Everything a user can get wrong (an unknown suite or preset, a missing file, an output folder that pricegpt did not
write) is refused before the first pipeline starts.

Under `torchrun --nproc-per-node=N -m pricegpt -- skill ...` every process runs every dataset's pipeline (which
shares training's batches and the forecast origins of calibration, evaluation and backtest over the processes) and
rank 0 alone writes OUT's own files and returns the table; the other processes return None.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import re
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from .config import preset_tokenizer_options
from .data import load_prices
from .errors import ConfigError, OutputExistsError
from .evaluate.report import markdown_text
from .fileio import OUTPUT_MARKER, make_dirs, mark_output, safe_file_names, write_json, write_text
from .pipeline import DEFAULT_HORIZON, PipelineSettings, run_pipeline
from .rundir import RunDir
from .train.dist import dist_env

log = logging.getLogger("pricegpt")

SUITES: dict[str, tuple[str, ...]] = {"embedded": ("sample:stocks-daily", "sample:eurusd-hourly")}
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
        m, s = self.machine, self.settings
        lines = ["# pricegpt skill suite", "",
                 markdown_text(f"{self.date}; {m['platform']}, {m['cpu']}, {m['cpu_count']} cores, torch "
                               f"{m['torch']} ({m['threads']} threads), load average {m['load_average']}; pricegpt "
                               f"{m['pricegpt']}."),
                 "",
                 markdown_text(f"Pipeline: preset {s['preset']}, tokenizer {s['tokenizer_kind']}, max steps "
                               f"{_text(s['max_steps'], 'preset default')}, "
                               f"{_text(s['num_samples'], '256 (default)')} sampled paths per origin, horizon "
                               f"{_text(s['horizon'], f'{DEFAULT_HORIZON} bars (default)')}, seed {s['seed']}"
                               + (f", overrides {' '.join(s['overrides'])}" if s["overrides"] else "") + "."),
                 "",
                 "| dataset | bars | symbols | horizon | origins | best baseline | CRPS ratio [95% CI] | verdict | "
                 "cov 50% | cov 90% | VaR 5% exceedances |",
                 "|---|---|---|---|---|---|---|---|---|---|---|"]
        for row in self.rows:
            cells = [row.dataset, f"{row.bars:,}", row.symbols, _text(row.horizon), _text(row.n_origins),
                     _text(row.best_baseline), _ratio(row.crps_ratio, row.crps_ratio_ci), _text(row.verdict),
                     _pct(row.coverage_50), _pct(row.coverage_90), _pct(row.var_5_exceedance)]
            lines.append("| " + " | ".join(markdown_text(c) for c in cells) + " |")
        notes = [markdown_text(f"{row.dataset}: {row.note}") + "  " for row in self.rows if row.note]
        lines += ["", *notes, *([""] if notes else []), markdown_text(LEGEND), ""]
        return "\n".join(lines)


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


def run_skill(out, suite: str | None = None, data=(), settings: PipelineSettings | None = None
              ) -> SkillResult | None:
    """Run the pipeline with `settings` on every dataset of `suite` and `data` (skill_datasets) into OUT/<name>/,
    and write OUT/skill.json and OUT/skill.md. Returns the table (None on the processes of a torchrun launch other
    than rank 0, which writes). A rerun resumes: complete stages are skipped."""
    settings = settings or PipelineSettings()
    writes = dist_env().is_main
    out = Path(out)
    datasets = skill_datasets(suite, data)
    preset_tokenizer_options(settings.preset)  # an unknown preset, a missing file, a foreign --out: refused first
    _check_out(out)
    sizes = {}
    for name, source in datasets.items():
        frame = load_prices(source, date_format=settings.date_format)
        sizes[name] = (len(frame), int(frame["symbol"].nunique()))
    if writes:
        make_dirs(out)
        mark_output(out)
    result = SkillResult(date=datetime.now(timezone.utc).isoformat(timespec="seconds"), machine=machine_info(),
                         settings={"preset": settings.preset, "tokenizer_kind": settings.tokenizer_kind,
                                   "max_steps": settings.max_steps, "num_samples": settings.num_samples,
                                   "horizon": settings.horizon, "seed": settings.seed,
                                   "overrides": list(settings.overrides), "suite": suite,
                                   "datasets": dict(datasets)})
    for k, (name, source) in enumerate(datasets.items(), 1):
        log.info(f"skill: [{k}/{len(datasets)}] {name} ({source}) -> {out / name}")
        run = run_pipeline(source, out / name, settings)
        if writes:
            result.rows.append(skill_row(name, source, run.run, run.evaluation, run.backtest, *sizes[name]))
    if not writes:
        return None
    write_json(out / "skill.json", result.to_dict())
    write_text(out / "skill.md", result.to_markdown())
    return result


def skill_row(name: str, source: str, run_dir, evaluation: dict, backtest: dict | None, bars: int,
              symbols: int) -> SkillRow:
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
                    f"no verdict: {(fc.get('notes') or {}).get('verdict', 'the evaluation has no paired comparison')}")


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


__all__ = ["SUITES", "SkillResult", "SkillRow", "machine_info", "run_skill", "skill_datasets", "skill_row",
           "var_exceedance"]
