"""pricegpt: market prices as a language.

Prices become log returns, a tokenizer turns return patches into discrete codes, a small GPT continues the
sequence, and sampled futures are decoded back to returns and judged against honest baselines.

The public API is imported lazily, so `import pricegpt` stays cheap and the CLI starts fast:

    from pricegpt import load_prices, Forecaster
    fc = Forecaster.from_run("runs/quickstart")
    fc.predict_quantiles(load_prices("sample:stocks-daily"), horizon_bars=4)
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_API = {
    "PriceGPTError": "errors", "DataError": "errors", "ConfigError": "errors", "CheckpointError": "errors",
    "TokenizerError": "errors",
    "load_prices": "data", "read_prices": "data", "log_returns": "data", "time_splits": "data", "Splits": "data",
    "GPT": "model", "GPTConfig": "model",
    "create_tokenizer": "tokenizer", "load_tokenizer": "tokenizer", "fit_to_dir": "tokenizer",
    "write_token_store": "tokenizer", "TokenStore": "tokenizer",
    "RunConfig": "config", "TrainConfig": "config",
    "train_run": "train", "Trainer": "train",
    "load_run": "runs", "Run": "runs",
    "Forecaster": "forecast", "calibrate_temperature": "forecast", "forecast_symbol": "forecast",
    "evaluate_run": "evaluate", "origins_frame": "evaluate",
    "run_backtest": "backtest",
    "analyze": "analysis", "analyze_to_dir": "analysis",
    "run_pipeline": "pipeline", "PipelineSettings": "pipeline",
}

__all__ = sorted(_API) + ["__version__"]


def __getattr__(name: str):
    if name in _API:
        value = getattr(importlib.import_module(f".{_API[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'pricegpt' has no attribute {name!r}")


def __dir__():
    return __all__
