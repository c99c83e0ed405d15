"""Walk-forward backtests of forecast-driven positions: the walk and its outputs (walk.py), the strategies and a
model-free reference forecaster (strategies.py), and the statistics (stats.py)."""

from .stats import (
    PERFORMANCE_KEYS,
    SECONDS_PER_YEAR,
    bars_per_year,
    performance,
    sharpe_ci,
    sharpe_ratio,
    simulate,
    stationary_bootstrap_indices,
)
from .strategies import (
    STRATEGIES,
    BootstrapForecaster,
    forecast_summary,
    kelly_positions,
    momentum_positions,
    sign_positions,
)
from .walk import (
    MAX_COST_BPS,
    MIN_DECISIONS,
    OUTPUT_FILES,
    BacktestConfig,
    WalkForward,
    backtest_metrics,
    backtest_model,
    check_output_dir,
    csv_safe,
    plan_decisions,
    portfolio_panel,
    portfolio_returns,
    run_backtest,
    walk_forward,
    write_outputs,
)

__all__ = ["MAX_COST_BPS", "MIN_DECISIONS", "OUTPUT_FILES", "PERFORMANCE_KEYS", "SECONDS_PER_YEAR", "STRATEGIES",
           "BacktestConfig", "BootstrapForecaster", "WalkForward", "backtest_metrics", "backtest_model",
           "bars_per_year", "check_output_dir", "csv_safe", "forecast_summary", "kelly_positions",
           "momentum_positions", "performance", "plan_decisions", "portfolio_panel", "portfolio_returns",
           "run_backtest", "sharpe_ci", "sharpe_ratio", "sign_positions", "simulate", "stationary_bootstrap_indices",
           "walk_forward", "write_outputs"]
