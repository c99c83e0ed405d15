"""Evaluation of a trained run (run.py): token metrics (tokens.py), forecast scores (metrics.py) against
baselines (baselines.py) on the same origins, kept per origin (origins.py: RUN/eval/origins.csv, or
`origins_frame` as a DataFrame), significance of the differences (significance.py), calibration (calibration.py)
and the report (report.py)."""

from ..data.windows import Origins, SymbolSeries, select_origins, source_name, symbol_series
from .run import DEFAULT_NUM_SAMPLES, evaluate_model, evaluate_run, origins_frame

__all__ = ["DEFAULT_NUM_SAMPLES", "Origins", "SymbolSeries", "evaluate_model", "evaluate_run", "origins_frame",
           "select_origins", "source_name", "symbol_series"]
