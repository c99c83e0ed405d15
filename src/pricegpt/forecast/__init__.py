"""Forecasts from a trained model: sampled paths (forecaster.py), what they say (risk.py), the same as frames with
the future bars' timestamps (frames.py), the sampling temperature chosen on validation (calibrate.py), one
symbol's forecast with its fan chart (symbol.py), and several runs pooled as one forecaster (ensemble.py)."""

from .calibrate import TEMPERATURE_GRID, calibrate_temperature, crps_samples
from .ensemble import EnsembleForecaster
from .forecaster import Forecaster, ForecastPaths, forecaster_of
from .frames import DF_QUANTILE_LEVELS, paths_frame, quantile_frame
from .risk import BARRIERS, QUANTILE_LEVELS, VAR_LEVELS, quantile_table, risk
from .sampling import (
    MAX_HORIZON_BARS,
    check_paths_memory,
    check_sampling,
    check_symbols,
    origin_seed,
    paths_bytes,
)
from .symbol import SymbolForecast, check_chart_path, forecast_symbol, symbol_file_name

__all__ = ["BARRIERS", "DF_QUANTILE_LEVELS", "MAX_HORIZON_BARS", "QUANTILE_LEVELS", "TEMPERATURE_GRID",
           "VAR_LEVELS", "EnsembleForecaster", "ForecastPaths", "Forecaster", "SymbolForecast", "calibrate_temperature",
           "check_chart_path", "check_paths_memory", "check_sampling", "check_symbols", "crps_samples",
           "forecast_symbol", "forecaster_of", "origin_seed", "paths_bytes", "paths_frame", "quantile_frame",
           "quantile_table", "risk", "symbol_file_name"]
