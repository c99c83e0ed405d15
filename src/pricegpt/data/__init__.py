"""Price data: readers for the canonical price frame, log returns, the global splits and embedded samples."""

from .frame import SPLIT_NAMES, Splits, bar_seconds, describe, iso, log_returns, parse_time, time_splits
from .readers import LoadReport, load_prices, read_prices
from .samples import SAMPLES, sample_path

__all__ = ["SAMPLES", "SPLIT_NAMES", "LoadReport", "Splits", "bar_seconds", "describe", "iso", "load_prices",
           "log_returns", "parse_time", "read_prices", "sample_path", "time_splits"]
