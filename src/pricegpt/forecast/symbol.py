"""One symbol's forecast as `pricegpt forecast` gives it: quantiles, risk numbers and a fan chart PNG.

    result = forecast_symbol("runs/x", "prices.csv", "AAPL", horizon=20)   # SymbolForecast; chart in runs/x/forecast/

The chart goes to `chart_path` (a new .png file; an existing file only when it is a chart in RUN/forecast/) or
RUN/forecast/SYMBOL.png. Every value and the chart path are checked before the run is loaded.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .. import plots
from ..data import iso, load_prices
from ..data.windows import run_cutoffs
from ..errors import ConfigError, OutputExistsError
from ..fileio import safe_file_names
from ..rundir import RunDir
from .forecaster import Forecaster, ForecastPaths
from .risk import quantile_table, risk
from .sampling import check_sampling, check_symbols

log = logging.getLogger("pricegpt")

HISTORY_BARS = 60  # bars of history the fan chart shows at least (4 horizons when that is more)


@dataclass
class SymbolForecast:
    """What `forecast_symbol` found: the quantile table (one row per step, `quantile_table`'s columns), the risk
    summary (`risk` of the paths), the sampled paths, and where the fan chart went (None: not drawn)."""

    symbol: str
    horizon: int
    num_samples: int
    seed: int
    temperature: float
    table: pd.DataFrame
    risk: dict
    paths: ForecastPaths | None = None
    chart_path: Path | None = None


def forecast_symbol(source, data, symbol: str, horizon: int, num_samples: int = 512, seed: int = 0,
                    chart_path: str | os.PathLike | None = None, *, date_format: str | None = None) -> SymbolForecast:
    """Quantiles and risk of the next `horizon` bars of `symbol` after the last bar of `data` (anything
    `load_prices` reads, with `date_format` if given), and a fan chart of the price paths.

    source: a run directory (loaded after the checks) or a Forecaster. A pretrained forecaster (from a folder or a
    built-in name, no run directory) writes a chart only to a given `chart_path`, and never over an existing file.
    Checked first, in this order: horizon, num_samples and seed; the chart path (`check_chart_path`); then the
    forecaster is loaded, the data read and the symbol looked up (DataError naming the symbols the data has)."""
    horizon, num_samples, seed = check_sampling(horizon, num_samples, seed)
    pretrained = isinstance(source, Forecaster) and source.run.pretrained
    out = None
    if pretrained:
        if chart_path is not None:
            out = Path(chart_path)
            check_chart_path(out, None, flag="--out")
    else:
        forecast_dir = RunDir(source.run.dir if isinstance(source, Forecaster) else source).forecast
        out = Path(chart_path) if chart_path is not None else forecast_dir / f"{symbol_file_name(symbol)}.png"
        check_chart_path(out, forecast_dir, flag="--out" if chart_path is not None else "the default chart path")
    forecaster = source if isinstance(source, Forecaster) else Forecaster.from_run(source)
    frame = load_prices(data, date_format=date_format)
    check_symbols([symbol], frame["symbol"].unique().tolist())
    frame = frame[frame["symbol"] == symbol]
    if pretrained:
        cutoff = run_cutoffs(forecaster.run)[1]
        if cutoff is not None and frame["timestamp"].max() <= cutoff:
            log.warning(f"the data ends {iso(frame['timestamp'].max())}, on or before the pretrained model's data "
                        f"cutoff {iso(cutoff)}: it was trained on the bars that follow, so this forecast is not out "
                        "of sample")
    fc = forecaster.sample_paths(frame, horizon, num_samples, seed=seed, symbols=[symbol])
    history = frame["close"].to_numpy(dtype=np.float64)[-max(4 * horizon, HISTORY_BARS):]
    if out is not None:
        plots.fan_chart(out, history, fc.last_close[0] * np.exp(fc.cumulative[0]), ylabel="price",
                        title=f"{symbol}: next {horizon} bars ({num_samples} paths)")
    return SymbolForecast(symbol=symbol, horizon=horizon, num_samples=num_samples, seed=seed,
                          temperature=forecaster.temperature, table=quantile_table(fc), risk=risk(fc.paths[0]),
                          paths=fc, chart_path=out)


def symbol_file_name(symbol: str) -> str:
    """A symbol as a file name stem: the symbol when it is a plain short name, else a cleaned, shortened name
    with a hash suffix (no path separators, never too long): fileio's one rule for naming files by symbol."""
    return safe_file_names([str(symbol)])[str(symbol)]


def check_chart_path(out: Path, forecast_dir: Path | None, flag: str = "--out") -> None:
    """Refuse a chart path that is not a .png name, or that exists and is not a chart in the run's forecast folder
    (`forecast_dir`, RUN/forecast/, where pricegpt writes them): a user's file is never replaced."""
    if out.suffix.lower() != ".png":
        raise ConfigError(f"{flag} {out}: the fan chart is a PNG image; give a file name ending in .png")
    if not (out.exists() or out.is_symlink()):
        return
    ours = (forecast_dir is not None and out.is_file() and not out.is_symlink() and _is_png(out)
            and out.parent.resolve() == forecast_dir.resolve())
    if not ours:
        raise OutputExistsError(f"{flag} {out} already exists and is not one of pricegpt's charts in "
                                f"{forecast_dir}; it is never replaced: choose another --out")


def _is_png(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(8) == b"\x89PNG\r\n\x1a\n"
    except OSError:
        return False
