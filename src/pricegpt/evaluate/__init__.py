"""Evaluation of a trained run (run.py): token metrics (tokens.py), forecast scores (metrics.py) against
baselines (baselines.py) on the same origins, significance of the differences (significance.py), and the report
(report.py)."""

from ..data.windows import Origins, SymbolSeries, select_origins, source_name, symbol_series
from .run import DEFAULT_NUM_SAMPLES, evaluate_run

__all__ = ["DEFAULT_NUM_SAMPLES", "Origins", "SymbolSeries", "evaluate_run", "select_origins", "source_name",
           "symbol_series"]
