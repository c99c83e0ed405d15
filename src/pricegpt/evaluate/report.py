"""RUN/eval/report.md and a self-contained RUN/eval/report.html (PNGs inlined as base64 data URIs), plus the PNGs.

The report reads top-down: the verdicts (the model against every baseline, with intervals), the scores, calibration
(PIT, reliability diagram, coverage by regime, VaR tests, P(up)), CRPS over time, fan charts, the backtest, then the
details (per symbol, tokens, training, method).

- `write_report(out, metrics, run=..., ...)`: what `evaluate_run` calls while it builds RUN/eval/: it draws the
  charts that need the sampled paths (fan charts) and the training curve, then `render_report`.
- `render_report(eval_dir, metrics, backtest_metrics=None, ...)`: everything else, from plain data only:
  metrics.json, the per-origin table (origins.csv) and the backtest's metrics.json and equity.png.
- `refresh_report(run_dir)`: renders RUN/eval/report.{md,html} again from the files of a run, e.g. after the
  backtest (which runs after the evaluation) so that the report shows it.

Every section degrades to a line saying what is missing when a metrics.json key is absent or None (older runs, a
baseline that could not run). The calibration blocks have the shapes evaluate/calibration.py gives them; the
charts read them through `reliability_curves`, `regime_summary` and `p_up_curve`, and the VaR tests become a table
of their records (`records`: one row per forecaster and level).

Both files are rendered from one list of sections (render.py: `Section`, the formatting, both renderers and
their escaping), so they always say the same thing and a user's string can never become markup in either.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from .. import plots
from ..fileio import write_text
from ..forecast import symbol_file_name
from ..rundir import RunDir
from .render import (
    VAR_COLUMNS,
    Section,
    as_dict,
    cell,
    fmt,
    interval_text,
    is_cell,
    is_interval,
    is_number,
    p_up_curve,
    pct,
    records,
    records_table,
    regime_summary,
    reliability_curves,
    render_html,
    render_markdown,
    scalars_only,
    with_ci,
)

MAX_FAN_CHARTS = 6
BASELINE_NAMES = ("random_walk", "histvol20", "ewma", "bootstrap", "garch", "seasonal", "range_ewma", "fhs")
FORECASTERS = ("model", *BASELINE_NAMES)
TABLE_LEVELS = (0.05, 0.25, 0.5, 0.75, 0.9, 0.95)  # nominal levels shown in the reliability table
MIN_ROLLING_DATES = 4


# ------------------------------------------------------------------------------------------------ content
def _forecaster_names(fc: dict) -> list[str]:
    extra = [n for n in as_dict(fc.get("comparison")) if n not in FORECASTERS]
    return [n for n in (*FORECASTERS, *extra) if n in fc or n in as_dict(fc.get("comparison"))]


def best_baseline(fc: dict) -> str | None:
    """The verdict's best baseline, else the baseline with the lowest mean CRPS."""
    best = as_dict(fc.get("verdict")).get("best_baseline")
    if best:
        return str(best)
    scored = {n: fc[n]["crps"] for n in _forecaster_names(fc)
              if n != "model" and is_number(as_dict(fc.get(n)).get("crps"))}
    return min(sorted(scored), key=scored.get) if scored else None


def _verdict_section(metrics: dict, fc: dict) -> Section:
    s = Section("Verdict")
    headline = as_dict(fc.get("verdict"))
    best = headline.get("best_baseline")
    if best and headline.get("verdict"):
        verdict = headline["verdict"]
        what = (f"no significant difference between the model and the best baseline, {best}"
                if verdict == "no significant difference" else
                f"the model is {verdict.upper()} than the best baseline, {best}")
        ratio = with_ci(headline.get("crps_ratio"), headline.get("crps_ratio_ci"), ".3f")
        s.p(f"Verdict: {what} (CRPS ratio {ratio}, 95% interval of a date-block bootstrap; below 1 "
            "favours the model).")
    else:
        reason = as_dict(fc.get("notes")).get("verdict", "metrics.json has no paired comparison")
        s.p(f"Verdict: not available ({reason}; see the scores below).")
    comparison = as_dict(fc.get("comparison"))
    mcs = as_dict(fc.get("mcs"))
    included = set(mcs.get("included") or [])
    if comparison:
        header = ["baseline", "verdict", "CRPS diff (model - baseline) [95% CI]", "CRPS ratio [95% CI]",
                  "DM p-value"] + (["in MCS"] if mcs else [])
        rows = []
        for name in sorted(comparison, key=lambda n: (n != best, _forecaster_order(n))):
            entry = comparison[name]
            if not isinstance(entry, dict):
                rows.append([name, "n/a (not compared)", "n/a", "n/a", "n/a"] + (["n/a"] if mcs else []))
                continue
            rows.append([name + (" (best)" if name == best else ""), entry.get("verdict") or "n/a",
                         with_ci(entry.get("crps_diff"), entry.get("crps_diff_ci")),
                         with_ci(entry.get("crps_ratio"), entry.get("crps_ratio_ci"), ".3f"),
                         fmt(entry.get("dm_pvalue"), ".3g")] + (["yes" if name in included else "no"] if mcs else []))
        s.table(header, rows)
    if mcs:
        size = mcs.get("size")
        level = f"{1 - size:.0%} " if is_number(size) else ""
        s.p(f"Model confidence set ({level}Hansen-Lunde-Nason, over all forecasters): "
            f"{', '.join(sorted(included)) or 'empty'}; the model is {'in' if 'model' in included else 'not in'} it.")
    elif fc.get("mcs") is None and "mcs" in fc:
        reason = as_dict(fc.get("notes")).get("mcs") or as_dict(fc.get("notes")).get("model_confidence_set")
        s.p(f"Model confidence set: not computed{f' ({reason})' if reason else ''}.")
    _horizons_table(s, fc.get("forecasts_by_horizon", metrics.get("forecasts_by_horizon")))
    s.p(f"Data {metrics.get('data', 'n/a')}, {metrics.get('split', 'n/a')} split (train_end "
        f"{metrics.get('train_end', 'n/a')}, val_end {metrics.get('val_end', 'n/a')}), "
        f"{fmt(metrics.get('n_symbols'))} symbol(s); the {fmt(fc.get('horizon_bars'))}-bar cumulative log return "
        f"from {fmt(fc.get('n_origins'))} origins" + (f" on {fmt(fc['n_dates'])} dates" if fc.get("n_dates") else "")
        + f" ({fc.get('origins_rule', 'n/a')}), {fmt(fc.get('num_samples'))} "
        f"sampled paths each, temperature {fmt(fc.get('temperature'), 'g')}.")
    ensemble = as_dict(metrics.get("ensemble"))
    if ensemble:
        s.p(f"The model is an ensemble of {fmt(ensemble.get('size'))} models trained with consecutive seeds: each "
            "origin's paths are split equally among them, at one temperature calibrated on the pool; the token "
            "metrics are the first model's.")
    if metrics.get("overlap_allowed") and metrics.get("overlapping_origins"):
        s.p(f"WARNING: {metrics['overlapping_origins']} origins are at or before the run's train_end "
            "(--allow-overlap): those scores are on data the model was trained on.")
    return s


def _forecaster_order(name: str) -> int:
    return FORECASTERS.index(name) if name in FORECASTERS else len(FORECASTERS)


def _horizons_table(s: Section, by_horizon) -> None:
    """metrics' forecasts_by_horizon ({H: forecast block} or a list of blocks) as one row per horizon."""
    items = list(by_horizon.items()) if isinstance(by_horizon, dict) else \
        [(as_dict(b).get("horizon_bars"), b) for b in by_horizon] if isinstance(by_horizon, list) else []
    rows = []
    for horizon, block in items:
        if not isinstance(block, dict):
            continue
        verdict = as_dict(block.get("verdict"))
        model = as_dict(block.get("model"))
        rows.append([fmt(block.get("horizon_bars", horizon)), fmt(block.get("n_origins")), fmt(model.get("crps")),
                     verdict.get("best_baseline") or "n/a", verdict.get("verdict") or "n/a",
                     with_ci(verdict.get("crps_ratio"), verdict.get("crps_ratio_ci"), ".3f"),
                     pct(model.get("coverage_50")), pct(model.get("coverage_90"))])
    if rows:
        s.p("By horizon (each against its own best baseline):")
        s.table(["horizon (bars)", "origins", "model CRPS", "best baseline", "verdict", "CRPS ratio [95% CI]",
                 "cov 50%", "cov 90%"], rows)


def _scores_section(out: Path, fc: dict, best: str | None) -> Section:
    s = Section("Scores (the same origins for every forecaster)")
    names = _forecaster_names(fc)
    reference = as_dict(fc.get(best)).get("crps") if best else None
    header = ["forecaster", "CRPS", f"CRPS / {best or 'best baseline'}", "cov 50%", "width 50%", "cov 90%",
              "width 90%", "dir. acc. [95% CI]", "MAE median"]
    rows = []
    for name in names:
        m = fc.get(name)
        if not isinstance(m, dict):
            rows.append([name] + ["n/a"] * (len(header) - 1))
            continue
        ratio = m["crps"] / reference if is_number(m.get("crps")) and is_number(reference) and reference else None
        ci = m.get("directional_accuracy_ci95")
        rows.append([name, fmt(m.get("crps")), fmt(ratio, ".3f"), pct(m.get("coverage_50")),
                     fmt(m.get("width_50")), pct(m.get("coverage_90")), fmt(m.get("width_90")),
                     pct(m.get("directional_accuracy")) + (f" [{pct(ci[0])}, {pct(ci[1])}]" if is_interval(ci)
                                                            else ""), fmt(m.get("mae_median"))])
    s.table(header, rows)
    for name, reason in as_dict(fc.get("notes")).items():
        s.p(f"Note ({name}): {reason}")
    crps = {n: as_dict(fc.get(n)).get("crps") for n in names}
    if any(is_number(v) for v in crps.values()):
        plots.crps_bars(out / "crps.png", {n: v for n, v in crps.items() if is_number(v)})
        s.img("crps.png", "Mean CRPS, model (orange) and baselines")
    if fc.get("ablations"):
        s.p("Ablations (other runs, scored on the same origins):")
        s.table(["run", "CRPS", "cov 90%"], [[name, fmt(as_dict(a).get("crps")), pct(as_dict(a).get("coverage_90"))]
                                            for name, a in fc["ablations"].items()])
    return s


def _volatility_section(fc: dict) -> Section:
    """The variance forecasts of the H-bar return against the realised variance (forecast.volatility)."""
    s = Section("Volatility forecast")
    vol = as_dict(fc.get("volatility"))
    forecasters = as_dict(vol.get("forecasters"))
    if not forecasters:
        s.p("No volatility evaluation in these metrics.")
        return s
    s.p(f"Variance of the {fmt(vol.get('horizon_bars'))}-bar return against the realised variance (the sum of the "
        "target bars' squared returns). QLIKE = RV/f - log(RV/f) - 1 and the MSE of log variance: lower is better. "
        "vol_head is the model's volatility head, model the variance of its sampled paths.")
    s.table(["forecaster", "QLIKE", "MSE log variance", "origins"],
            [[name, fmt(as_dict(entry).get("qlike")), fmt(as_dict(entry).get("mse_log")), fmt(as_dict(entry).get("n"))]
             for name, entry in forecasters.items() if entry])
    rows = [[f"{vol.get('headline')} vs {name}", with_ci(as_dict(entry).get("qlike_ratio"),
                                                         as_dict(entry).get("qlike_ratio_ci"), ".3f"),
             with_ci(as_dict(entry).get("qlike_diff"), as_dict(entry).get("qlike_diff_ci")),
             fmt(as_dict(entry).get("verdict"))]
            for name, entry in as_dict(vol.get("comparison")).items() if entry]
    if rows:
        s.table(["comparison", "QLIKE ratio [95% CI]", "QLIKE difference [95% CI]", "verdict"], rows)
    for key, note in as_dict(vol.get("notes")).items():
        s.p(f"{key}: {note}")
    return s


def _calibration_section(out: Path, fc: dict, best: str | None) -> Section:
    s = Section("Calibration")
    names = _forecaster_names(fc)
    histograms = {n: as_dict(fc.get(n)).get("pit_histogram") for n in names}
    histograms = {n: h for n, h in histograms.items() if isinstance(h, list) and sum(h) > 0}
    if histograms:
        plots.pit_histograms(out / "pit.png", histograms)
        s.img("pit.png", "PIT histograms of the H-bar return (flat = calibrated)")

    curves = reliability_curves(fc.get("reliability"))
    if curves:
        plots.reliability_diagram(out / "reliability.png", curves)
        s.img("reliability.png", "Coverage of the central intervals at each nominal level, model and baselines")
        shown = [lv for lv in TABLE_LEVELS if any(_has_level(levels, lv) for levels, _ in curves.values())]
        s.table(["forecaster", *[f"{lv:.0%}" for lv in shown]],
                [[name, *[pct(_at_level(levels, coverage, lv)) for lv in shown]]
                 for name, (levels, coverage) in curves.items()])
    else:
        s.p("Reliability diagram: not available (no forecast.reliability in metrics.json).")
    coverage = as_dict(fc.get("coverage_by_horizon"))
    if coverage and all(isinstance(v, list) and v for v in coverage.values()):
        plots.coverage_by_horizon(out / "coverage_horizon.png", coverage)
        s.img("coverage_horizon.png", "Coverage of the model's intervals at each step of the horizon")

    s.p("By volatility regime (terciles of the trailing 20-bar volatility at the origin, pooled over the split):")
    regimes, regime_coverage, ratios = regime_summary(fc.get("by_regime"), best)
    if regimes and (regime_coverage or ratios):
        plots.regime_panels(out / "regimes.png", regimes, regime_coverage or {}, ratios,
                            ratio_label=f"CRPS / {best}" if best else "CRPS ratio")
        s.img("regimes.png", "The model's coverage and CRPS ratio by volatility regime")
    if not _regime_table(s, fc.get("by_regime")):
        s.p("not available (no forecast.by_regime in metrics.json).")

    s.p("Value at risk of the H-bar return: exceedance rates with Kupiec's unconditional-coverage, "
        "Christoffersen's independence and the joint conditional-coverage tests (small p-values reject a "
        "calibrated VaR):")
    if not records_table(s, fc.get("var_tests"), "forecaster / level", VAR_COLUMNS):
        s.p("not available (no forecast.var_tests in metrics.json).")

    s.p("P(up): Brier score against the 0.5 climatology and the train-split up-frequency (lower is better):")
    p_up = scalars_only(fc.get("p_up"))
    plain = {k: v for k, v in as_dict(p_up).items() if is_cell(v)}
    if plain and len(plain) == len(p_up):  # one forecaster's numbers: a row each
        s.table(["", "value"], [[k, cell(v, k)] for k, v in plain.items()])
    elif not records_table(s, p_up, "forecast"):
        s.p("not available (no forecast.p_up in metrics.json).")
    curve = p_up_curve(fc.get("p_up"))
    if curve is not None:
        plots.p_up_reliability(out / "p_up.png", *curve)
        s.img("p_up.png", "Observed up frequency by bin of the forecast P(up)")
    return s


def _regime_table(s: Section, by_regime) -> bool:
    """The regimes of calibration.by_regime ({"regimes": {REGIME: {"n", "vol_range", "model_coverage_50",
    "crps_ratio": {baseline: ratio}, "coverage_90": {forecaster: coverage}}}}) as one row per forecaster with the
    model's CRPS ratio to it and its 90% coverage in each regime; False for any other shape."""
    regimes = {str(k): v for k, v in as_dict(as_dict(by_regime).get("regimes")).items() if isinstance(v, dict)}
    if not regimes or not all(isinstance(v.get("crps_ratio"), dict) for v in regimes.values()):
        return False
    s.p("; ".join(f"{name}: {fmt(v.get('n'))} origins, vol20 in {interval_text(v.get('vol_range'), '.3g')}, "
                  f"the model's 50% / 90% intervals cover {pct(v.get('model_coverage_50'))} / "
                  f"{pct(v.get('model_coverage_90'))}"
                  for name, v in regimes.items()) + ".")
    names = list(dict.fromkeys(n for v in regimes.values() for n in (*as_dict(v.get("coverage_90")),
                                                                    *v["crps_ratio"])))
    rows = []
    for name in sorted(names, key=_forecaster_order):
        cells = [(v["crps_ratio"].get(name), as_dict(v.get("coverage_90")).get(name)) for v in regimes.values()]
        if all(ratio is None and cover is None for ratio, cover in cells):
            continue
        rows.append([name, *[c for ratio, cover in cells
                             for c in ("" if name == "model" else fmt(ratio, ".3f"), pct(cover))]])
    s.table(["forecaster", *[c for r in regimes for c in (f"{r}: model CRPS / this", f"{r}: cov 90%")]], rows)
    return True


def _has_level(levels: list[float], level: float) -> bool:
    return any(abs(v - level) < 1e-9 for v in levels)


def _at_level(levels: list[float], coverage: list[float], level: float):
    return next((c for v, c in zip(levels, coverage) if abs(v - level) < 1e-9), None)


def _crps_over_time_section(out: Path, fc: dict, origins_table: pd.DataFrame | None, best: str | None) -> Section:
    s = Section("CRPS over time")
    series = rolling_crps(origins_table, fc.get("horizon_bars"), best)
    if series is None:
        s.p("Not available (no per-origin table RUN/eval/origins.csv with crps_model and the best baseline's "
            "crps column).")
        return s
    dates, model, baseline, window, name = series
    plots.crps_over_time(out / "crps_time.png", dates, {"model": model, name: baseline},
                         ratio=model / baseline, title=f"Rolling mean CRPS over {window} origin dates")
    s.img("crps_time.png", f"Rolling mean of the per-date CRPS ({window} dates), model vs {name}, and their ratio")
    return s


def rolling_crps(table: pd.DataFrame | None, horizon, best: str | None, min_dates: int = MIN_ROLLING_DATES):
    """(dates, model, baseline, window, baseline name): rolling means over `window` origin dates of the per-date
    mean CRPS of the model and of `best` (else the baseline with the lowest mean) from the per-origin table, rows
    of the main `horizon` only; None when the table lacks them or has fewer than `min_dates` dates."""
    if table is None or "origin" not in table.columns or "crps_model" not in table.columns:
        return None
    if "horizon" in table.columns and horizon is not None and (table["horizon"] == horizon).any():
        table = table[table["horizon"] == horizon]
    baselines = [c for c in table.columns if c.startswith("crps_") and c != "crps_model"
                 and np.isfinite(pd.to_numeric(table[c], errors="coerce")).any()]
    if not baselines:
        return None
    column = f"crps_{best}" if f"crps_{best}" in baselines else min(
        baselines, key=lambda c: pd.to_numeric(table[c], errors="coerce").mean())
    frame = pd.DataFrame({"origin": pd.to_datetime(table["origin"], utc=True, errors="coerce"),
                          "model": pd.to_numeric(table["crps_model"], errors="coerce"),
                          "baseline": pd.to_numeric(table[column], errors="coerce")}).dropna()
    by_date = frame.groupby("origin", sort=True)[["model", "baseline"]].mean()
    if len(by_date) < min_dates:
        return None
    window = int(min(len(by_date), max(min_dates, len(by_date) // 10)))
    rolled = by_date.rolling(window, min_periods=window).mean().dropna()
    return rolled.index, rolled["model"].to_numpy(), rolled["baseline"].to_numpy(), window, column[len("crps_"):]


def fan_chart_files(symbols) -> list[tuple[str, str]]:
    """(symbol, file name) of the fan charts: the first MAX_FAN_CHARTS symbols in sorted order."""
    return [(symbol, f"fan_{k}_{symbol_file_name(symbol)}.png")
            for k, symbol in enumerate(sorted({str(x) for x in symbols})[:MAX_FAN_CHARTS])]


def _fan_section(out: Path, fc: dict) -> Section:
    s = Section("Fan charts (each symbol's last origin)")
    shown = [(symbol, file) for symbol, file in fan_chart_files(as_dict(fc.get("per_symbol")))
             if (out / file).is_file()]
    for symbol, file in shown:
        s.img(file, f"{symbol}: sampled paths (50/80/95% bands, a few paths) and the realised path (black)")
    if not shown:
        s.p("No fan charts in this folder (they are drawn from the sampled paths when the run is evaluated).")
    return s


_BACKTEST_ROWS = (("strategy", "strategy"), ("buy_and_hold", "buy and hold"), ("momentum", "momentum"))


def _backtest_section(out: Path, backtest: dict | None, equity: Path | None) -> Section:
    s = Section("Backtest (walk-forward over the test split, after costs)")
    if not backtest:
        s.p("No backtest yet (RUN/backtest/metrics.json): run `pricegpt backtest --run RUN`; the pipeline runs it "
            "after the evaluation and renders this report again.")
        return s
    settings = as_dict(backtest.get("settings"))
    portfolio = as_dict(backtest.get("portfolio"))
    ci = as_dict(backtest.get("sharpe_ci"))
    sharpe = as_dict(backtest.get("strategy")).get("sharpe")
    level = ci.get("level")
    s.p(f"{settings.get('strategy', 'n/a')} strategy on {fmt(portfolio.get('n_symbols'))} symbol(s), equal capital "
        f"per symbol, {fmt(backtest.get('cost_bps'), 'g')} bps cost per unit of turnover, "
        f"{fmt(settings.get('n_decisions'))} decisions from {settings.get('first_decision', 'n/a')} to "
        f"{settings.get('last_decision', 'n/a')}. Sharpe {fmt(sharpe, '.2f')}, "
        f"{f'{level:.0%}' if is_number(level) else ''} interval "
        f"{interval_text([ci.get('low'), ci.get('high')], '.2f')} ({ci.get('method', 'n/a')}).")
    keys = ("total_return", "cagr", "sharpe", "sortino", "max_drawdown", "turnover", "hit_rate")
    rows = []
    for key, label in _BACKTEST_ROWS:
        block = as_dict(backtest.get(key))
        rows.append([label, *[pct(block.get(k)) if k in ("total_return", "cagr", "max_drawdown", "hit_rate")
                              else fmt(block.get(k), ".3g") for k in keys]])
    s.table(["", "total return", "CAGR", "Sharpe", "Sortino", "max drawdown", "turnover / bar", "hit rate"], rows)
    if equity is not None and equity.is_file():
        s.img(os.path.relpath(equity, out), "Equity of the strategy, buy-and-hold and momentum (start = 1) and "
                                            "their drawdowns")
    breach = {sym: as_dict(r).get("var_breach_rate") for sym, r in as_dict(backtest.get("risk")).items()}
    breach = {sym: b for sym, b in breach.items() if isinstance(b, dict) and b}
    if breach:
        levels = list(dict.fromkeys(k for b in breach.values() for k in b))
        s.p("How often the realised H-bar loss exceeded the forecast VaR at the decisions (calibrated: 5% and 1%):")
        s.table(["symbol", *levels], [[sym, *[pct(b.get(k)) for k in levels]] for sym, b in breach.items()])
    return s


def _per_symbol_section(fc: dict) -> Section:
    s = Section("Per symbol")
    per_symbol = as_dict(fc.get("per_symbol"))
    names = [n for n in _forecaster_names(fc) if isinstance(fc.get(n), dict)]
    s.table(["symbol", "origins", "model cov 50%", "model cov 90%"] + [f"CRPS {n}" for n in names],
            [[sym, fmt(row.get("n_origins")), pct(row.get("model_coverage_50")), pct(row.get("model_coverage_90"))]
             + [fmt(row.get(f"crps_{n}")) for n in names] for sym, row in per_symbol.items()])
    risk = {sym: r for sym, r in as_dict(fc.get("risk")).items() if isinstance(r, dict)}
    if risk:
        s.p("Risk from the paths of each symbol's last origin. VaR/ES are losses as positive fractions of the "
            "position's value (loss = 1 - exp(R_H)); barrier touches are on bar closes.")
        barriers = list(as_dict(next(iter(risk.values())).get("p_touch_up")))
        rows = []
        for sym, r in risk.items():
            up, down = as_dict(r.get("p_touch_up")), as_dict(r.get("p_touch_down"))
            rows.append([sym, pct(r.get("p_up")), pct(r.get("var_95")), pct(r.get("es_95")), pct(r.get("var_99")),
                         pct(r.get("es_99"))] + [f"+{pct(up.get(k))} / -{pct(down.get(k))}" for k in barriers])
        s.table(["symbol", "P(up)", "VaR 95", "ES 95", "VaR 99", "ES 99"]
                + [f"touch ±{float(k):.0%}" if is_number(_safe_float(k)) else f"touch {k}" for k in barriers], rows)
    return s


def _safe_float(text):
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def _token_section(out: Path, metrics: dict) -> Section:
    s = Section("Token metrics")
    tok = as_dict(metrics.get("tokens"))
    if not isinstance(tok.get("model"), dict):
        s.p(tok.get("note", "no token metrics"))
        return s
    s.p(f"{fmt(metrics.get('n_tokens'))} target tokens of the {metrics.get('split', 'n/a')} split. Baselines: "
        f"{tok.get('smoothing', 'n/a')}.")
    s.table(["model", "loss (nats)", "perplexity", "top-1", "top-5"],
            [[n, fmt(as_dict(tok.get(n)).get("loss")), fmt(as_dict(tok.get(n)).get("perplexity")),
              pct(as_dict(tok.get(n)).get("top1")), pct(as_dict(tok.get(n)).get("top5"))]
             for n in ("model", "unigram", "bigram")])
    usage = as_dict(tok.get("usage"))
    if isinstance(usage.get("counts"), list) and usage["counts"]:
        plots.code_usage(out / "code_usage.png", usage["counts"])
        s.p(f"Codes used in the split: {fmt(usage.get('codes_used'))} of {len(usage['counts'])}, usage perplexity "
            f"{fmt(usage.get('usage_perplexity'), '.1f')}.")
        s.img("code_usage.png", "Token (code) usage in the evaluated split")
    size = as_dict(tok.get("size"))
    if size:
        s.table(["component", "parameters"], [[k, fmt(v)] for k, v in as_dict(size.get("params")).items()])
        if is_number(size.get("bytes_fp32")) and is_number(size.get("bytes_bf16")):
            s.p(f"Weights: {size['bytes_fp32'] / 2**20:.2f} MiB in fp32, {size['bytes_bf16'] / 2**20:.2f} MiB in "
                "bf16.")
    return s


def _method_section() -> Section:
    s = Section("Method")
    s.p("CRPS: the fair sample estimator E|X-y| - E|X-X'|/2 over S paths (closed form for the normal and Student-t "
        "baselines). Intervals are central; PIT = F(y). Direction: the sign of the predictive median vs the "
        "outcome, zero counts as half; the CI is Wilson's at 95%.")
    s.p("Verdicts: the mean CRPS difference (model minus baseline) and the CRPS ratio with 95% percentile intervals "
        "of a stationary bootstrap over origin dates (all symbols of a date together, Politis-White block length); "
        "better / worse when the interval of the difference excludes 0, else no significant difference. DM: "
        "Diebold-Mariano on the per-date loss differential with a Newey-West variance.")
    s.p("Baselines fit their parameters on the train split only and use only bars before each origin: random walk "
        "(train volatility), HistVol20 (20-bar trailing volatility), EWMA (RiskMetrics 0.94), bootstrap of the 250 "
        "trailing returns, GARCH(1,1)-t (arch) fit on the train split and filtered through each origin, and where "
        "present seasonal volatility, range-based EWMA and filtered historical simulation.")
    return s


def build_sections(out: Path, metrics: dict, *, origins_table: pd.DataFrame | None = None,
                   backtest: dict | None = None, equity: Path | None = None) -> list[Section]:
    """Draw the charts computed from the metrics into `out` and return the report's sections, top-down. The fan
    charts and training.png are used when `out` holds them."""
    fc = as_dict(metrics.get("forecast"))
    best = best_baseline(fc)
    sections = [_verdict_section(metrics, fc), _scores_section(out, fc, best),
                _calibration_section(out, fc, best), _crps_over_time_section(out, fc, origins_table, best),
                _fan_section(out, fc), _backtest_section(out, backtest, equity), _volatility_section(fc),
                _per_symbol_section(fc),
                _token_section(out, metrics)]
    s = Section("Training")
    if (out / "training.png").is_file():
        s.img("training.png", "Train and validation loss")
    else:
        s.p("No training curves (RUN/metrics.csv is missing or empty).")
    sections += [s, _method_section()]
    return sections


def _training_points(metrics_csv: Path) -> tuple[list, list]:
    """(step, loss) pairs of train_loss and of val_loss from RUN/metrics.csv; empty when it is missing or unusable."""
    try:
        table = pd.read_csv(metrics_csv)
    except (OSError, ValueError, pd.errors.ParserError):
        return [], []
    if "step" not in table.columns:
        return [], []

    def pairs(column: str) -> list:
        if column not in table.columns:
            return []
        rows = table[["step", column]].dropna()
        return list(zip(rows["step"], rows[column]))

    return pairs("train_loss"), pairs("val_loss")


# ------------------------------------------------------------------------------------------------ writers
def render_report(eval_dir, metrics: dict, backtest_metrics: dict | None = None, *,
                  origins_table: pd.DataFrame | None = None, equity_png=None, title: str | None = None) -> Path:
    """Draw the charts of `metrics` (metrics.json) into `eval_dir` and write report.md and report.html there.
    origins_table: the per-origin table (origins.csv; default: eval_dir/origins.csv when present);
    backtest_metrics: a backtest's metrics.json (None: the report says there is none yet); equity_png: its chart.
    Returns the path of report.html."""
    out = Path(eval_dir)
    if origins_table is None:
        origins_table = read_origins(out / "origins.csv")
    title = title or f"pricegpt evaluation: {out.resolve().parent.name}"
    sections = build_sections(out, metrics, origins_table=origins_table, backtest=backtest_metrics,
                              equity=None if equity_png is None else Path(equity_png))
    write_text(out / "report.md", render_markdown(title, sections))
    write_text(out / "report.html", render_html(title, sections, out))
    return out / "report.html"


def read_origins(path: Path) -> pd.DataFrame | None:
    """The per-origin table, or None when it is missing or unreadable (the report then leaves its charts out)."""
    try:
        return pd.read_csv(path) if Path(path).is_file() else None
    except (OSError, ValueError, pd.errors.ParserError):
        return None


def _read_json(path: Path) -> dict | None:
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def refresh_report(run_dir) -> Path | None:
    """Render RUN/eval/report.{md,html} again from RUN/eval/metrics.json, RUN/eval/origins.csv and the backtest
    (RUN/backtest/metrics.json, equity.png) when they exist; the fan charts already in RUN/eval/ are kept. Returns
    the path of report.html, or None when the run has no evaluation to report."""
    run = RunDir(run_dir)
    metrics = _read_json(run.eval_metrics)
    if metrics is None:
        return None
    return render_report(run.eval, metrics, _read_json(run.backtest_metrics), equity_png=run.backtest / "equity.png",
                         title=f"pricegpt evaluation: {run.root.resolve().name}")


def write_report(out: Path, metrics: dict, *, run, series, origins, cum, realised,
                 origins_table: pd.DataFrame | None = None) -> None:
    """Write the PNGs, report.md and report.html into `out` (a directory being built): the fan charts of each
    symbol's last origin from the sampled paths cum (origins, S, H) and the realised paths (origins, H), the
    training curve of `run`, then `render_report` (without a backtest: `refresh_report` adds it later)."""
    out = Path(out)
    H = metrics["forecast"]["horizon_bars"]
    for symbol, file in fan_chart_files(origins.symbols):
        last = int(np.flatnonzero(origins.symbols == symbol)[-1])
        i = int(origins.index[last])
        trailing = series[symbol].returns[max(0, i - max(3 * H, 20)):i]
        history = np.concatenate([[0.0], np.cumsum(trailing)]) - trailing.sum()
        plots.fan_chart(out / file, history, cum[last], realised[last], title=f"{symbol}: {H} bars after origin")
    train, val = _training_points(RunDir(run.dir).metrics_csv)
    plots.training_curve(out / "training.png", train, val, vocab_size=run.model.config.vocab_size)
    render_report(out, metrics, origins_table=origins_table, title=f"pricegpt evaluation: {Path(run.dir).name}")


__all__ = ["BASELINE_NAMES", "FORECASTERS", "Section", "best_baseline", "build_sections", "fan_chart_files",
           "p_up_curve", "read_origins", "records", "refresh_report", "regime_summary",
           "reliability_curves", "render_html", "render_markdown", "render_report", "rolling_crps", "write_report"]
