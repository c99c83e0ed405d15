"""Report figures with matplotlib's Agg backend (no display needed). Each function writes one PNG atomically.

fan_chart             history, 50/80/95% bands of the sampled paths, their median, a few paths, the realised path
pit_histogram         PIT histograms of the model and the baselines (flat = calibrated)
coverage_by_horizon   empirical coverage of the model's 50% and 90% intervals at each step of the horizon
crps_bars             mean CRPS of the model and every baseline
training_curves       train and validation loss from RUN/metrics.csv
code_usage            how often each token occurs in the evaluated split
"""

from __future__ import annotations

import os

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402

from ..fileio import atomic_path  # noqa: E402

BANDS = ((0.95, 0.15), (0.80, 0.25), (0.50, 0.4))  # (central probability, alpha), widest first
DPI = 90


def _save(fig, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)


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
    fig, ax = plt.subplots(figsize=(7, 3.6))
    ax.plot(x_hist, history, color="0.3", lw=1.2, label="history")
    for prob, alpha in BANDS:
        lo, hi = np.quantile(full, [(1 - prob) / 2, (1 + prob) / 2], axis=0)
        ax.fill_between(x_fc, lo, hi, color="tab:blue", alpha=alpha, lw=0, label=f"{prob:.0%} band")
    ax.plot(x_fc, np.median(full, axis=0), color="tab:blue", lw=1.5, label="median")
    rng = np.random.default_rng(seed)
    for k in rng.choice(S, size=min(n_paths, S), replace=False):
        ax.plot(x_fc, full[k], color="tab:blue", lw=0.6, alpha=0.7)
    if realised is not None:
        ax.plot(x_fc, np.concatenate([[origin], realised]), color="black", lw=1.6, label="realised")
    ax.axvline(0, color="0.6", lw=0.8, ls=":")
    ax.set_xlabel("bars from the origin")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10, parse_math=False)  # a symbol with `$` is text, not TeX
    ax.legend(fontsize=7, loc="upper left", ncol=2)
    _save(fig, path)


def pit_histogram(path, histograms: dict[str, list[int]]) -> None:
    names = [n for n, h in histograms.items() if h is not None]
    fig, axes = plt.subplots(1, len(names), figsize=(2.2 * len(names), 2.4), sharey=True, squeeze=False)
    for ax, name in zip(axes[0], names):
        counts = np.asarray(histograms[name], dtype=float)
        bins = len(counts)
        ax.bar((np.arange(bins) + 0.5) / bins, counts / counts.sum() * bins, width=1 / bins, color="tab:blue",
               edgecolor="white")
        ax.axhline(1.0, color="black", lw=0.8, ls="--")
        ax.set_title(name, fontsize=9)
        ax.set_xlim(0, 1)
    axes[0][0].set_ylabel("density")
    fig.suptitle("PIT of the H-bar return (flat = calibrated)", fontsize=10)
    _save(fig, path)


def coverage_by_horizon(path, coverage: dict[str, list[float]]) -> None:
    fig, ax = plt.subplots(figsize=(5.5, 3))
    for level, values in coverage.items():
        steps = np.arange(1, len(values) + 1)
        line, = ax.plot(steps, values, marker="o", ms=3, label=f"{level}% interval")
        ax.axhline(int(level) / 100, color=line.get_color(), lw=0.8, ls="--")
    ax.set_ylim(0, 1)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("horizon step (bars)")
    ax.set_ylabel("coverage")
    ax.legend(fontsize=8)
    ax.set_title("Model interval coverage by horizon (dashed: nominal)", fontsize=10)
    _save(fig, path)


def crps_bars(path, crps: dict[str, float | None]) -> None:
    names = [n for n, v in crps.items() if v is not None]
    values = [crps[n] for n in names]
    fig, ax = plt.subplots(figsize=(6, 2.8))
    colors = ["tab:orange" if n == "model" else "tab:gray" for n in names]
    ax.bar(names, values, color=colors)
    ax.set_ylabel("mean CRPS (lower is better)")
    lo = min(values)
    ax.set_ylim(lo * 0.9, max(values) * 1.02)
    ax.tick_params(axis="x", labelsize=8)
    _save(fig, path)


def training_curves(path, metrics_csv) -> bool:
    """Plot train/val loss from RUN/metrics.csv; False (nothing written) when it has no usable rows."""
    import pandas as pd

    try:
        table = pd.read_csv(metrics_csv)
    except (OSError, ValueError, pd.errors.ParserError):
        return False
    if "step" not in table.columns or len(table) == 0:
        return False
    fig, ax = plt.subplots(figsize=(6, 3))
    plotted = False
    for column, style in (("train_loss", "-"), ("val_loss", "o-")):
        if column in table.columns:
            rows = table[["step", column]].dropna()
            if len(rows):
                ax.plot(rows["step"], rows[column], style, ms=3, label=column)
                plotted = True
    if not plotted:
        plt.close(fig)
        return False
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats)")
    ax.legend(fontsize=8)
    _save(fig, path)
    return True


def code_usage(path, counts: list[int]) -> None:
    counts = np.asarray(counts, dtype=float)
    fig, ax = plt.subplots(figsize=(6, 2.6))
    ax.bar(np.arange(len(counts)), counts, width=1.0, color="tab:blue")
    ax.set_xlabel("token id")
    ax.set_ylabel("count")
    ax.set_title(f"Token usage in the evaluated split ({int((counts > 0).sum())}/{len(counts)} codes used)",
                 fontsize=10)
    _save(fig, path)
