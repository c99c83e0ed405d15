"""Every chart pricegpt draws, in one style, and the one helper that saves them (`_save`: PNG, atomically).

forecasts    fan_chart            history, 50/80/95% bands of the sampled paths, their median, a few paths, the outcome
evaluation   pit_histograms       PIT histograms of the model and the baselines (flat = calibrated)
             coverage_by_horizon  coverage of the model's 50% and 90% intervals at each step of the horizon
             crps_bars            mean CRPS of the model and every baseline
             reliability_diagram  coverage of central intervals at every nominal level, model and baselines
             regime_panels        coverage and CRPS ratio by volatility regime
             crps_over_time       rolling mean of per-origin CRPS, model vs a baseline, and their ratio
             p_up_reliability     observed up-frequency against the forecast P(up), by bin
             code_usage           how often each token occurs in the evaluated split
training     training_curve       train and validation loss by step
backtests    equity_curves        equity of each strategy (start = 1) and its drawdown below
analysis     token_frequency      frequency by token id and the rank-frequency plot
             transition_matrix    heatmap of P(next token | token)
tokenizers   tokenizer_usage      share of patches per code, train and validation
             reconstruction       real vs decode(encode) returns of a validation stretch

Each function takes plain numbers (arrays, lists, dicts), draws one figure and writes it to `path`; none reads a
file or computes a statistic a report relies on. Figures are built on their own `Figure` (never pyplot's global
state), so drawing needs no display and is safe in threads.
"""

from __future__ import annotations

import math
import os

import numpy as np

from .fileio import atomic_path

DPI = 100
MAIN, HIGHLIGHT, MUTED = "tab:blue", "tab:orange", "0.4"
BANDS = ((0.95, 0.15), (0.80, 0.25), (0.50, 0.4))  # fan chart: (central probability, alpha), widest first
TITLE_SIZE = 10


def _figure(width: float, height: float):
    # matplotlib is imported on the first chart, not with pricegpt: the command line starts without it
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _save(fig, path: str | os.PathLike) -> None:
    """THE way a chart is written: PNG at DPI, tight bounding box, to a temporary name renamed into place."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")


def _title(ax, text: str) -> None:
    ax.set_title(text, fontsize=TITLE_SIZE, parse_math=False)  # a symbol with `$` is text, not TeX


# ------------------------------------------------------------------------------------------------- forecasts
def fan_chart(path, history: np.ndarray, paths: np.ndarray, realised: np.ndarray | None = None, title: str = "",
              n_paths: int = 5, ylabel: str = "cumulative log return", seed: int = 0) -> None:
    """history (h,) values up to and including the origin (x = -h+1 .. 0); paths (S, H) sampled values at
    x = 1 .. H in the same units; realised (H,) the outcome, when known."""
    paths = np.asarray(paths, dtype=np.float64)
    S, H = paths.shape
    x_hist = np.arange(-len(history) + 1, 1)
    x_fc = np.arange(0, H + 1)
    origin = float(history[-1])
    full = np.concatenate([np.full((S, 1), origin), paths], axis=1)
    fig = _figure(7, 3.6)
    ax = fig.subplots()
    ax.plot(x_hist, history, color="0.3", lw=1.2, label="history")
    for prob, alpha in BANDS:
        lo, hi = np.quantile(full, [(1 - prob) / 2, (1 + prob) / 2], axis=0)
        ax.fill_between(x_fc, lo, hi, color=MAIN, alpha=alpha, lw=0, label=f"{prob:.0%} band")
    ax.plot(x_fc, np.median(full, axis=0), color=MAIN, lw=1.5, label="median")
    rng = np.random.default_rng(seed)
    for k in rng.choice(S, size=min(n_paths, S), replace=False):
        ax.plot(x_fc, full[k], color=MAIN, lw=0.6, alpha=0.7)
    if realised is not None:
        ax.plot(x_fc, np.concatenate([[origin], realised]), color="black", lw=1.6, label="realised")
    ax.axvline(0, color="0.6", lw=0.8, ls=":")
    ax.set_xlabel("bars from the origin")
    ax.set_ylabel(ylabel)
    _title(ax, title)
    ax.legend(fontsize=7, loc="upper left", ncol=2)
    _save(fig, path)


# ------------------------------------------------------------------------------------------------ evaluation
def pit_histograms(path, histograms: dict[str, list[int] | None]) -> None:
    """One panel per forecaster with a histogram (None: left out): bin counts of PIT values over [0, 1]."""
    names = [n for n, h in histograms.items() if h is not None]
    columns = min(len(names), 5)  # more forecasters wrap onto further rows, so that panels stay readable
    rows = math.ceil(len(names) / columns)
    fig = _figure(2.2 * columns, 2.2 * rows + 0.2)
    grid = fig.subplots(rows, columns, sharey=True, squeeze=False)
    axes = grid.ravel()
    for ax in axes[len(names):]:
        ax.set_visible(False)
    for ax, name in zip(axes, names):
        counts = np.asarray(histograms[name], dtype=float)
        bins = len(counts)
        ax.bar((np.arange(bins) + 0.5) / bins, counts / counts.sum() * bins, width=1 / bins, color=MAIN,
               edgecolor="white")
        ax.axhline(1.0, color="black", lw=0.8, ls="--")
        ax.set_title(name, fontsize=9)
        ax.set_xlim(0, 1)
    for row in grid:
        row[0].set_ylabel("density")
    fig.suptitle("PIT of the H-bar return (flat = calibrated)", fontsize=TITLE_SIZE)
    _save(fig, path)


def coverage_by_horizon(path, coverage: dict[str, list[float]]) -> None:
    """coverage: {"50": [coverage at step 1, 2, ...], "90": [...]}; dashed lines at the nominal levels."""
    from matplotlib.ticker import MaxNLocator  # deferred like every matplotlib import (see _figure)

    fig = _figure(5.5, 3)
    ax = fig.subplots()
    for level, values in coverage.items():
        steps = np.arange(1, len(values) + 1)
        line, = ax.plot(steps, values, marker="o", ms=3, label=f"{level}% interval")
        ax.axhline(int(level) / 100, color=line.get_color(), lw=0.8, ls="--")
    ax.set_ylim(0, 1)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("horizon step (bars)")
    ax.set_ylabel("coverage")
    ax.legend(fontsize=8)
    _title(ax, "Model interval coverage by horizon (dashed: nominal)")
    _save(fig, path)


def crps_bars(path, crps: dict[str, float | None]) -> None:
    """Mean CRPS per forecaster (None: left out); "model" is highlighted."""
    names = [n for n, v in crps.items() if v is not None]
    values = [crps[n] for n in names]
    fig = _figure(6, 2.8)
    ax = fig.subplots()
    ax.bar(names, values, color=[HIGHLIGHT if n == "model" else "tab:gray" for n in names])
    ax.set_ylabel("mean CRPS (lower is better)")
    ax.set_ylim(min(values) * 0.9, max(values) * 1.02)
    ax.tick_params(axis="x", labelsize=8)
    _save(fig, path)


def reliability_diagram(path, curves: dict[str, tuple[list[float], list[float]]]) -> None:
    """curves: {forecaster: (nominal levels, observed coverage)} of central intervals, both in [0, 1]; "model" is
    drawn thick in the highlight colour, the diagonal is perfect calibration."""
    fig = _figure(5, 4.2)
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="black", lw=0.8, ls="--", label="nominal")
    for name, (levels, coverage) in curves.items():
        model = name == "model"
        ax.plot(levels, coverage, marker="o", ms=3 if model else 2, lw=2.0 if model else 0.9,
                color=HIGHLIGHT if model else None, alpha=1.0 if model else 0.75, label=name, zorder=3 if model else 2)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="nominal coverage of the central interval", ylabel="observed coverage")
    _title(ax, "Reliability of the intervals (above the diagonal: too wide)")
    ax.legend(fontsize=7, loc="upper left", ncol=2)
    _save(fig, path)


def regime_panels(path, regimes: list[str], coverage: dict[str, list[float | None]],
                  crps_ratio: list[float | None] | None = None, ratio_label: str = "CRPS ratio") -> None:
    """Left: the model's coverage per regime, coverage = {"50": [per regime], "90": [...]} (None: no bar), dashed
    at the nominal level; right (when crps_ratio is given): the model's CRPS ratio per regime, dotted at 1."""
    panels = 2 if crps_ratio is not None else 1
    fig = _figure(4.2 * panels, 3)
    axes = fig.subplots(1, panels, squeeze=False)[0]
    x = np.arange(len(regimes))
    width = 0.8 / max(len(coverage), 1)
    for k, (level, values) in enumerate(coverage.items()):
        heights = [np.nan if v is None else v for v in values]
        bars = axes[0].bar(x + (k - (len(coverage) - 1) / 2) * width, heights, width, label=f"{level}% interval")
        axes[0].axhline(float(level) / 100, color=bars.patches[0].get_facecolor() if bars.patches else MUTED,
                        lw=0.9, ls="--")
    axes[0].set(xticks=x, ylim=(0, 1.15), ylabel="coverage")
    axes[0].set_xticklabels(regimes, fontsize=8)
    axes[0].legend(fontsize=7, loc="upper left", ncol=2)
    _title(axes[0], "Model coverage by volatility regime")
    if crps_ratio is not None:
        values = [np.nan if v is None else v for v in crps_ratio]
        axes[1].bar(x, np.asarray(values) - 1.0, 0.6, bottom=1.0, color=HIGHLIGHT)
        axes[1].axhline(1.0, color="black", lw=0.8, ls=":")
        spread = max(0.05, float(np.nanmax(np.abs(np.asarray(values) - 1.0))) * 1.2)  # centred on 1: the verdict
        axes[1].set(xticks=x, ylabel=ratio_label, ylim=(1.0 - spread, 1.0 + spread))
        axes[1].set_xticklabels(regimes, fontsize=8)
        _title(axes[1], "CRPS ratio by regime (below 1: model better)")
    _save(fig, path)


def crps_over_time(path, timestamps, rolling: dict[str, np.ndarray], ratio: np.ndarray | None = None,
                   title: str = "") -> None:
    """rolling: {label: rolling mean CRPS (T,)} over `timestamps` (T,), the first label in the highlight colour;
    ratio (T,): the first over the second, drawn below with a dotted line at 1."""
    panels = 2 if ratio is not None else 1
    fig = _figure(8, 4.6 if panels == 2 else 3.2)
    axes = fig.subplots(panels, 1, sharex=True, squeeze=False, gridspec_kw={"height_ratios": [3, 1.4][:panels]})[:, 0]
    for (label, values), color in zip(rolling.items(), (HIGHLIGHT, MAIN, MUTED)):
        axes[0].plot(timestamps, values, color=color, lw=1.3, label=label)
    axes[0].set_ylabel("CRPS (rolling mean)")
    axes[0].legend(fontsize=8, loc="upper left")
    _title(axes[0], title)
    if ratio is not None:
        axes[1].plot(timestamps, ratio, color="black", lw=1.0)
        axes[1].axhline(1.0, color="0.6", lw=0.8, ls=":")
        axes[1].set_ylabel("ratio")
    fig.autofmt_xdate()
    _save(fig, path)


def p_up_reliability(path, predicted: list[float], observed: list[float], counts: list[int] | None = None) -> None:
    """Observed frequency of an up move against the mean forecast P(up) of each bin (marker area ~ count)."""
    fig = _figure(4.4, 4)
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="black", lw=0.8, ls="--")
    sizes = None
    if counts is not None and len(counts) == len(predicted) and max(counts, default=0) > 0:
        sizes = 10 + 140 * np.asarray(counts, dtype=float) / max(counts)
    ax.plot(predicted, observed, color=HIGHLIGHT, lw=1.2)
    ax.scatter(predicted, observed, s=sizes, color=HIGHLIGHT, zorder=3)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="forecast P(up)", ylabel="observed up frequency")
    _title(ax, "P(up) reliability (diagonal: calibrated)")
    _save(fig, path)


def code_usage(path, counts: list[int]) -> None:
    """Occurrences of each token id in the evaluated split."""
    counts = np.asarray(counts, dtype=float)
    fig = _figure(6, 2.6)
    ax = fig.subplots()
    # one filled step outline instead of a bar per code: the same picture, drawn fast for large codebooks
    ax.stairs(counts, np.arange(len(counts) + 1) - 0.5, fill=True, color=MAIN)
    ax.set_xlabel("token id")
    ax.set_ylabel("count")
    _title(ax, f"Token usage in the evaluated split ({int((counts > 0).sum())}/{len(counts)} codes used)")
    _save(fig, path)


def training_curve(path, train: list[tuple[float, float]], val: list[tuple[float, float]],
                   vocab_size: int | None = None) -> bool:
    """Train and validation loss by step, (step, loss) pairs; with vocab_size the uniform loss ln K for reference.
    False (nothing written) when there is no point to draw."""
    if not train and not val:
        return False
    fig = _figure(7, 4)
    ax = fig.subplots()
    if train:
        ax.plot(*zip(*train), label="train", color=MAIN, lw=1)
    if val:
        ax.plot(*zip(*val), label="validation", color=HIGHLIGHT, marker="o", ms=3)
    if vocab_size:
        ax.axhline(math.log(vocab_size), color="grey", ls="--", lw=0.8, label=f"uniform, ln {vocab_size}")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    _title(ax, "training curve")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)
    return True


# ------------------------------------------------------------------------------------------------- backtests
def equity_curves(path, timestamps, returns: dict[str, np.ndarray], title: str = "") -> None:
    """returns: {label: per-bar net returns (T,)} over `timestamps` (T,); the first label is drawn in the main
    colour. Equity starts at 1; drawdown = equity / running peak (at least 1) - 1."""
    from matplotlib.ticker import PercentFormatter  # deferred like every matplotlib import (see _figure)

    fig = _figure(8, 5)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1.3]})
    for (label, net), color in zip(returns.items(), (MAIN, MUTED, HIGHLIGHT, "tab:green", "tab:red")):
        equity = np.cumprod(1.0 + np.asarray(net, dtype=np.float64))
        top.plot(timestamps, equity, color=color, lw=1.3, label=label)
        bottom.plot(timestamps, equity / np.maximum.accumulate(np.maximum(equity, 1.0)) - 1.0, color=color, lw=1)
    top.axhline(1.0, color="0.7", lw=0.8, ls=":")
    top.set_ylabel("equity (start = 1)")
    _title(top, title)
    top.legend(fontsize=8, loc="upper left")
    bottom.set_ylabel("drawdown")
    bottom.yaxis.set_major_formatter(PercentFormatter(1.0))
    fig.autofmt_xdate()
    _save(fig, path)


# -------------------------------------------------------------------------------------------------- analysis
def token_frequency(path, counts: np.ndarray) -> None:
    """Frequency of each token id (with the uniform 1/K) and the rank-frequency plot on log axes."""
    counts = np.asarray(counts)
    frequencies = counts / counts.sum()
    fig = _figure(11, 4)
    by_id, by_rank = fig.subplots(1, 2)
    by_id.bar(np.arange(counts.size), frequencies, width=1.0, color=MAIN)
    by_id.axhline(1 / counts.size, color="gray", ls="--", lw=1, label="uniform 1/K")
    by_id.set(xlabel="token id", ylabel="frequency")
    _title(by_id, "token frequency")
    by_id.legend(fontsize=8)
    ranked = np.sort(frequencies[frequencies > 0])[::-1]
    by_rank.loglog(np.arange(1, ranked.size + 1), ranked, marker=".", ls="-", color=MAIN)
    by_rank.set(xlabel="rank", ylabel="frequency")
    _title(by_rank, "rank-frequency")
    _save(fig, path)


def transition_matrix(path, probabilities: np.ndarray) -> None:
    """Heatmap of a (K, K) matrix of P(next | token)."""
    fig = _figure(7, 6)
    ax = fig.subplots()
    image = ax.imshow(np.asarray(probabilities), cmap="viridis", aspect="auto", interpolation="nearest",
                      origin="upper")
    fig.colorbar(image, ax=ax, label="P(next | token)")
    ax.set(xlabel="next token", ylabel="token")
    _title(ax, "transition matrix (within symbols)")
    _save(fig, path)


# ------------------------------------------------------------------------------------------------ tokenizers
def tokenizer_usage(path, train_counts: np.ndarray, val_counts: np.ndarray, title: str) -> None:
    """Share of train patches per code (bars) and of validation patches (a step line, when there are any)."""
    train_counts, val_counts = np.asarray(train_counts), np.asarray(val_counts)
    fig = _figure(10, 4)
    ax = fig.subplots()
    ids = np.arange(len(train_counts))
    ax.bar(ids, train_counts / max(train_counts.sum(), 1), width=1.0, label="train", alpha=0.7, color=MAIN)
    if val_counts.sum():
        ax.step(ids, val_counts / val_counts.sum(), where="mid", color=HIGHLIGHT, label="validation")
    ax.set_xlabel("token id")
    ax.set_ylabel("share of patches")
    _title(ax, title)
    ax.legend(fontsize=8)
    _save(fig, path)


def reconstruction(path, real: np.ndarray, recon: np.ndarray, baseline: np.ndarray, title: str) -> None:
    """Per-bar and cumulative log returns: real (black), the tokenizer's decode(encode) and a baseline's."""
    bars = np.arange(len(real))
    fig = _figure(10, 6)
    top, bottom = fig.subplots(2, 1, sharex=True)
    for ax, transform, ylabel in ((top, np.asarray, "log return"), (bottom, np.cumsum, "cumulative log return")):
        ax.plot(bars, transform(real), color="black", lw=1.2, label="real")
        ax.plot(bars, transform(recon), color=MAIN, lw=1.0, label="tokenizer")
        ax.plot(bars, transform(baseline), color=HIGHLIGHT, lw=0.8, ls="--", label="quantile baseline")
        ax.set_ylabel(ylabel)
    _title(top, title)
    top.legend(fontsize=8)
    bottom.set_xlabel("bar")
    _save(fig, path)


def calendar_profile(path, slots: list[str], relative: list[float], observed: list[int]) -> None:
    """The learned time-of-day profile: relative std per 30-minute slot (bars), slots without data greyed."""
    fig = _figure(10, 3.6)
    ax = fig.subplots()
    colors = [MAIN if n else "#c8c8c8" for n in observed]
    ax.bar(range(len(slots)), relative, color=colors)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(range(0, len(slots), 4), [slots[i] for i in range(0, len(slots), 4)], rotation=45)
    ax.set_xlabel("time of day (UTC) of the last context token")
    ax.set_ylabel("predicted std / mean")
    _title(ax, "learned time-of-day profile (grey: no bars in the data at that time)")
    _save(fig, path)
