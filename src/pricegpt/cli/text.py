"""Everything the command line prints, as text: each function takes what a library function returned and gives
back a string. Nothing here computes, reads or writes; only cli/commands.py prints what these return.

headline_table      an evaluation (RUN/eval/metrics.json): token perplexities, the verdict against the best
                    baseline, then the forecast table (CRPS, ratio with interval, verdict, coverage)
pipeline_headline   the pipeline's closing lines: that table, the backtest headline, the report's path
headline            a backtest (RUN/backtest/metrics.json) in one line
summary_table       a backtest's strategy, buy-and-hold and momentum side by side
format_forecast     one symbol's forecast (forecast.SymbolForecast): quantiles, risk, the chart's path
format_report       a token analysis (analysis.analyze)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..analysis import MIN_PER_BLOCK, TOP

if TYPE_CHECKING:
    from ..forecast import SymbolForecast

FORECASTERS = ("model", "random_walk", "histvol20", "ewma", "bootstrap", "garch", "seasonal", "range_ewma", "fhs")


# ------------------------------------------------------------------------------------------------ evaluation
def _ratio(value, interval) -> str:
    if value is None:
        return "n/a"
    if not interval or any(v is None for v in interval):
        return f"{value:.3f}"
    return f"{value:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]"


def verdict_line(forecast: dict, label: str = "verdict") -> str:
    """`verdict vs best baseline (garch): no significant difference — CRPS ratio 0.998 [0.981, 1.016]`, or why
    there is none."""
    verdict = forecast.get("verdict") or {}
    if verdict.get("verdict") is None:
        reason = (forecast.get("notes") or {}).get("verdict", "no baseline could be compared")
        return f"{label} vs best baseline: n/a ({reason})"
    return (f"{label} vs best baseline ({verdict['best_baseline']}): {verdict['verdict']} — CRPS ratio "
            f"{_ratio(verdict.get('crps_ratio'), verdict.get('crps_ratio_ci'))}")


def volatility_line(vol: dict | None) -> str | None:
    """`variance of the 4-bar return: vol_head QLIKE 0.667 — vs garch 0.783 [0.705, 0.881] better, vs ewma ...`"""
    if not vol:
        return None
    head = vol.get("headline")
    entry = (vol.get("forecasters") or {}).get(head) or {}
    if entry.get("qlike") is None:
        return None
    parts = [f"vs {name} {_ratio(c.get('qlike_ratio'), c.get('qlike_ratio_ci'))} {c.get('verdict')}"
             for name, c in (vol.get("comparison") or {}).items() if c]
    return (f"variance of the {vol.get('horizon_bars')}-bar return: {head} QLIKE {entry['qlike']:.3f}"
            + (" — QLIKE ratio " + ", ".join(parts) if parts else ""))


def forecast_table(forecast: dict) -> list[str]:
    """One line per forecaster: CRPS, the model's CRPS ratio to it with its 95% interval, the verdict (the
    model relative to it), coverage of the 50% and 90% intervals; n/a where one could not run or be compared."""
    comparison = forecast.get("comparison") or {}
    names = ["model", *[n for n in FORECASTERS[1:] if n in forecast or n in comparison],
             *[n for n in comparison if n not in FORECASTERS]]
    lines = [f"  {'':<12} {'CRPS':>10}  {'model/this [95% CI]':<24} {'verdict (model)':<26} {'cov50':>6} "
             f"{'cov90':>6}"]
    for name in names:
        m = forecast.get(name)
        if m is None:
            lines.append(f"  {name:<12} {'n/a':>10}")
            continue
        entry = comparison.get(name) or {}
        ratio = "" if name == "model" else _ratio(entry.get("crps_ratio"), entry.get("crps_ratio_ci"))
        verdict = "" if name == "model" else entry.get("verdict") or "n/a"
        lines.append(f"  {name:<12} {m['crps']:>10.5f}  {ratio:<24} {verdict:<26} {m['coverage_50']:>6.1%} "
                     f"{m['coverage_90']:>6.1%}")
    return lines


def headline_table(evaluation: dict) -> str:
    """Token perplexities, then the verdict against the best baseline (verdicts first, ratios second), a table
    of every forecaster (CRPS, ratio with interval, verdict, coverage) and the verdicts at the other horizons."""
    tokens, forecast = evaluation["tokens"], evaluation["forecast"]
    lines = []
    if tokens.get("model") is not None:
        lines.append(f"tokens ({evaluation['split']} split, {evaluation['n_tokens']} tokens): perplexity "
                     + ", ".join(f"{name} {tokens[name]['perplexity']:.2f}" for name in ("model", "unigram", "bigram")))
    dates = f" on {forecast['n_dates']} dates" if forecast.get("n_dates") is not None else ""
    ensemble = evaluation.get("ensemble")
    if ensemble:
        lines.append(f"model: an ensemble of {ensemble['size']} models, paths pooled equally, temperature "
                     f"{forecast.get('temperature', 1.0):g} calibrated on the pool")
    lines += [f"forecast of the {forecast['horizon_bars']}-bar log return over {forecast['n_origins']} origins{dates}:",
              verdict_line(forecast), *forecast_table(forecast)]
    mcs = forecast.get("mcs")
    if mcs:
        lines.append(f"model confidence set ({1 - mcs['size']:.0%}): {', '.join(mcs['included'])}")
    vol_line = volatility_line(forecast.get("volatility"))
    if vol_line:
        lines.append(vol_line)
    main = str(forecast["horizon_bars"])
    for horizon, block in (evaluation.get("forecasts_by_horizon") or {}).items():
        if horizon != main and block is not None:
            lines.append(f"{verdict_line(block, f'{horizon}-bar verdict')} ({block['n_origins']} origins)")
    return "\n".join(lines)


def pipeline_headline(evaluation: dict, backtest: dict, report_path) -> str:
    """What `pricegpt pipeline` prints at the end: the evaluation table, the backtest headline, the report."""
    return "\n".join([headline_table(evaluation), headline(backtest), f"report: {report_path}"])


# -------------------------------------------------------------------------------------------------- backtest
def _fmt(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def headline(metrics: dict) -> str:
    """One line: `backtest (sign, 1.0 bps): Sharpe 0.42 [-0.80, 1.60] vs buy-and-hold 0.61, max DD -12.3%, ...`"""
    settings, strategy, ci = metrics["settings"], metrics["strategy"], metrics.get("sharpe_ci") or {}
    cost = f"{metrics['cost_bps']:.1f}" + (f"+{metrics['slippage_bps']:.1f}" if metrics.get("slippage_bps") else "")
    interval = f" [{_fmt(ci.get('low'), '.2f')}, {_fmt(ci.get('high'), '.2f')}]" if ci.get("low") is not None else ""
    return (f"backtest ({settings['strategy']}, {cost} bps): Sharpe {_fmt(strategy['sharpe'], '.2f')}{interval} "
            f"vs buy-and-hold {_fmt(metrics['buy_and_hold']['sharpe'], '.2f')}, "
            f"max DD {_fmt(strategy['max_drawdown'], '.1%')}, turnover {_fmt(strategy['turnover'], '.2f')}/bar")


def summary_table(metrics: dict) -> str:
    """The portfolio's strategy, buy-and-hold and momentum side by side."""
    columns = (("total_return", "total", ".1%"), ("cagr", "CAGR", ".1%"), ("sharpe", "Sharpe", ".2f"),
               ("sortino", "Sortino", ".2f"), ("max_drawdown", "max DD", ".1%"), ("turnover", "turnover", ".3f"),
               ("hit_rate", "hit rate", ".1%"))
    lines = [f"{'':<14}" + "".join(f"{title:>10}" for _, title, _ in columns)]
    for name in ("strategy", "buy_and_hold", "momentum"):
        lines.append(f"{name.replace('_', '-'):<14}" + "".join(f"{_fmt(metrics[name][key], spec):>10}"
                                                               for key, _, spec in columns))
    s = metrics["settings"]
    lines.append(f"{s['n_decisions']} decisions from {s['first_decision']} to {s['last_decision']}, horizon "
                 f"{s['horizon']} bars, rebalance every {s['rebalance']}, {s['bars_per_year']:.0f} bars/year")
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------------- forecast
def format_forecast(forecast: SymbolForecast) -> str:
    """Cumulative-return quantiles per step, price quantiles at the horizon, P(up), VaR/ES, barrier touches, and
    the fan chart's path when one was drawn."""
    table, summary, horizon = forecast.table, forecast.risk, forecast.horizon
    levels = [c[len("return_q"):] for c in table.columns if c.startswith("return_q")]
    origin = table["origin"].iloc[0]
    lines = [f"{forecast.symbol}: {forecast.num_samples} sampled paths for the next {horizon} bars after "
             f"{origin:%Y-%m-%d %H:%M} (temperature {forecast.temperature:g})",
             "cumulative log return quantiles:",
             f"{'step':>4} " + " ".join(f"{'q' + lv:>9}" for lv in levels)]
    for _, row in table.iterrows():
        lines.append(f"{int(row['step']):>4} " + " ".join(f"{row['return_q' + lv]:>+9.4f}" for lv in levels))
    lines.append("price quantiles at the horizon: " + "  ".join(
        f"q{lv} {table['price_q' + lv].iloc[-1]:.4f}" for lv in levels))
    lines.append(f"P(up over {horizon} bars) {summary['p_up']:.1%}   expected return {summary['expected_return']:+.2%}")
    levels_pct = [key[len("var_"):] for key in summary if key.startswith("var_")]
    lines.append("loss as a positive fraction of value: " + "  ".join(
        f"VaR {lv}% {summary['var_' + lv]:.2%}  ES {lv}% {summary['es_' + lv]:.2%}" for lv in levels_pct))
    for k in summary["p_touch_up"]:
        lines.append(f"P(touch +{float(k):.0%}) {summary['p_touch_up'][k]:.1%}   "
                     f"P(touch -{float(k):.0%}) {summary['p_touch_down'][k]:.1%}")
    if forecast.chart_path is not None:
        lines.append(f"fan chart: {forecast.chart_path}")
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------------- analysis
def _table(headers: list[str], rows: list[list[str]], left: int = 1, indent: str = "  ") -> str:
    """Aligned columns: the first `left` left-aligned (labels), the rest right-aligned (numbers)."""
    cells = [headers] + rows
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [indent + "  ".join(cell.ljust(w) if i < left else cell.rjust(w)
                                for i, (cell, w) in enumerate(zip(row, widths))).rstrip()
             for row in cells]
    return "\n".join(lines)


def _p(value: float) -> str:
    return "<1e-300" if value < 1e-300 else f"{value:.1e}"


def _ids(ids: list[int], limit: int = 20) -> str:
    shown = ", ".join(str(i) for i in ids[:limit])
    return shown + (f", ... ({len(ids) - limit} more)" if len(ids) > limit else "")


def _context_name(k: int) -> str:
    return {0: "H(X_t)", 1: "H(X_t|X_{t-1})"}.get(k, f"H(X_t|X_{{t-{k}..t-1}})")


def _ngram_table(rows: list[dict]) -> str:
    return _table(["tokens", "count", "expected", "ratio", "p-value", "q (BH)"],
                  [[" ".join(map(str, r["tokens"])), f"{r['count']:,}", f"{r['expected']:.1f}", f"{r['ratio']:.2f}",
                    _p(r["p_value"]), _p(r["q_value"])] for r in rows])


def format_report(result: dict) -> str:
    """The analysis as plain text: one heading per section, aligned tables, entropies by name."""
    K, vocab, entropy = result["vocab_size"], result["vocabulary"], result["entropy"]
    out = [f"== token analysis: {result['input'] or '(in-memory store)'} ==",
           f"{result['n_tokens']:,} tokens in {result['n_symbols']} symbol(s), vocabulary K={K}, "
           f"codes used {vocab['codes_used']}/{K} ({vocab['codes_used'] / K:.1%})", "",
           "== vocabulary: most frequent tokens ==",
           _table(["token", "count", "frequency"], [[str(r["token"]), f"{r['count']:,}", f"{r['frequency']:.4f}"]
                                                    for r in vocab["most_frequent"]]),
           f"unused codes ({len(vocab['unused_codes'])}): {_ids(vocab['unused_codes']) or 'none'}", ""]
    if result["n_symbols"] > 1:
        out += ["== per symbol ==",
                _table(["symbol", "tokens", "distinct codes", "unigram entropy (bits)", "most common"],
                       [[s["symbol"], f"{s['tokens']:,}", str(s["distinct_codes"]), f"{s['unigram_entropy_bits']:.2f}",
                         "-" if s["most_common"] is None else str(s["most_common"])] for s in result["symbols"]]), ""]

    trans = result["transitions"]
    pairs = [[str(r["from"]), str(r["to"]), f"{r['count']:,}", f"{r['probability']:.3f}"]
             for r in trans["most_frequent"]]
    out += ["== transitions (token -> next token, within symbols) ==",
            f"{trans['n_pairs']:,} pairs, self-transitions {trans['self_transition_share']:.1%}",
            _table(["from", "to", "count", "P(to|from)"], pairs), ""]

    for name, pattern in result["patterns"].items():
        out += [f"== patterns: {name} ==",
                f"expected count: {pattern['expected_from']}",
                f"test: {pattern['test']}",
                f"{pattern['total']:,} {name}, {pattern['distinct']:,} distinct; most frequent:",
                _ngram_table(pattern["most_frequent"]),
                f"significant: {pattern['n_significant']:,} of {pattern['hypotheses']:,} hypotheses"
                + (":" if pattern["n_significant"] else ""),
                *([_ngram_table(pattern["significant"][:TOP])] if pattern["n_significant"] else []), ""]

    outliers = result["outliers"]
    out += ["== outliers ==",
            f"rare tokens ({outliers['rare_definition']} = {outliers['rare_threshold']:.2e}): {outliers['n_rare']}"]
    if outliers["rare"]:
        rare = [[str(r["token"]), f"{r['count']:,}", f"{r['frequency']:.2e}"] for r in outliers["rare"][:TOP]]
        out.append(_table(["token", "count", "frequency"], rare))
    decoded = outliers["decoded_returns"]
    if decoded is None:
        out.append("extreme decoded returns: no tokenizer (pass --tokenizer DIR to check them)")
    else:
        out.append(f"extreme decoded returns (|z| > {decoded['threshold_z']:g}; usage-weighted mean "
                   f"{decoded['mean']:.2e}, std {decoded['std']:.2e}): {len(decoded['extreme'])}")
        if decoded["extreme"]:
            out.append(_table(["token", "count", "decoded return", "z"],
                              [[str(r["token"]), f"{r['count']:,}", f"{r['decoded_return']:+.4f}", f"{r['z']:+.1f}"]
                               for r in decoded["extreme"][:TOP]]))
    out.append("")

    label = "conditional entropy H(X_t|X_{t-1}):"
    conditional = "n/a" if entropy["conditional_bits"] is None else f"{entropy['conditional_bits']:.2f} bits (plug-in)"
    out += ["== entropy (bits) ==",
            f"{'unigram entropy:':<{len(label)}} {entropy['unigram_bits']:.2f} bits (max {entropy['max_bits']:.2f})",
            f"{label} {conditional}",
            f"{'entropy rate estimate:':<{len(label)}} {entropy['rate_bits']:.2f} bits "
            f"({_context_name(entropy['rate_context'])}, Miller-Madow)",
            f"{'maximum log2(K):':<{len(label)}} {entropy['max_bits']:.2f} bits",
            _table(["k", "H(X_t | k previous)", "plug-in", "Miller-Madow", "samples/block", "reliable"],
                   [[str(c["k"]), _context_name(c["k"]), f"{c['plug_in_bits']:.3f}", f"{c['miller_madow_bits']:.3f}",
                     f"{c['samples_per_block']:.1f}", "yes" if c["reliable"] else "no"]
                    for c in entropy["by_context"]], left=2),
            f"plug-in entropies are biased low by about (distinct blocks - 1) / (2 N ln 2) bits; the estimate uses "
            f"the longest context seen >= {MIN_PER_BLOCK} times per block"]
    profile = result.get("calendar_profile")
    if profile:
        rows = [[slot, f"{rel:.3f}", f"{n:,}"] for slot, rel, n in
                zip(profile["slots"], profile["relative"], profile["observed_tokens"]) if n]
        out += ["", "== learned time-of-day profile (calendar model) ==",
                f"predicted std of the next token's return by the last token's time of day, relative to the mean "
                f"over slots ({profile['n_windows']} {profile['split']}-split windows; unknown time of day: "
                f"{profile['unknown_relative']:.3f}); slots with tokens in the data:",
                _table(["time (UTC)", "relative std", "tokens"], rows)]
    return "\n".join(out)
