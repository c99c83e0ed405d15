"""Fit a tokenizer, measure it, and write its directory: `fit_to_dir` (what `pricegpt tokenizer fit` runs).

DIR/config.json + DIR/model.safetensors   the tokenizer (load with `load_tokenizer(DIR)`)
DIR/report.json                          code usage and reconstruction error (see `tokenizer_report`)
DIR/usage.png  DIR/recon.png             code usage histogram; real vs reconstructed returns (validation)

Reconstruction is measured on the validation patches (last bar in (train_end, val_end]) in the units of the raw
log returns: decode(encode(patch)) (centroids) times the patch's real scale, against the patch's real returns,
mean over bars. The baseline is a quantile tokenizer with the same codebook size, patch length, scaling and train
split. Code usage is counted on the train tokens (`codes_used`, `usage_perplexity`) and, separately, on the
validation tokens (`val_*`). `tails` gives the generalised Pareto tails of the two outermost codes (decoding.py).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd

from .. import plots
from ..data import Splits, iso
from ..fileio import atomic_dir, write_json
from .base import DEFAULT_PATCH_LEN, Tokenizer, create_tokenizer
from .patches import Patches, splits_for

log = logging.getLogger("pricegpt")

RECON_PLOT_PATCHES = 40  # validation patches shown in recon.png


def fit_to_dir(frame: pd.DataFrame, out_dir: str | Path, *, kind: str = "vqvae", train_end=None, val_end=None,
               patch_len: int = DEFAULT_PATCH_LEN, codebook_size: int = 128, features: str = "close", seed: int = 0,
               overwrite: bool = False, progress: bool | None = None, **options) -> dict:
    """Fit a `kind` tokenizer on the train split of `frame`, write DIR atomically, return the report.

    `options` are further config fields of the kind (e.g. steps=500 for vqvae). An existing DIR is an
    OutputExistsError unless `overwrite`."""
    splits = splits_for(frame, train_end, val_end)
    tokenizer = create_tokenizer(kind, patch_len=patch_len, codebook_size=codebook_size, features=features,
                                 seed=seed, **options)
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        log.info("fitting a %s tokenizer (K=%d, patch_len=%d, features=%s) on data up to %s", kind, codebook_size,
                 patch_len, features, iso(splits.train_end))
        tokenizer.fit(frame, splits.train_end, progress=progress)
        report, plots = tokenizer_report(tokenizer, frame, splits)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / "report.json", report)
        _plot_usage(plots["train_counts"], plots["val_counts"], report, tmp / "usage.png")
        if plots["recon"] is not None:
            _plot_recon(*plots["recon"], tmp / "recon.png")
    log.info("tokenizer written to %s: %d/%d codes used, val recon MSE %s (quantile baseline %s)", out_dir,
             report["codes_used"], report["codebook_size"], _fmt(report["recon_mse"]),
             _fmt(report["baseline_quantile_recon_mse"]))
    return report


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def tokenizer_report(tokenizer: Tokenizer, frame: pd.DataFrame, splits: Splits) -> tuple[dict, dict]:
    """(report.json content, data for the plots). See the module docstring for what is measured."""
    patches = tokenizer.patchify(frame)
    labels = {s: splits.label(p.ends) for s, p in patches.items()}
    tokens = {s: tokenizer.encode_patches(p, s) for s, p in patches.items()}
    K = tokenizer.vocab_size
    train_counts = _counts(tokens, labels, 0, K)
    val_counts = _counts(tokens, labels, 1, K)
    recon_mse, val_bars = _recon_mse(tokenizer, patches, tokens, labels)
    if tokenizer.kind == "quantile":
        baseline, baseline_mse = tokenizer, recon_mse
    else:
        c = tokenizer.config
        baseline = create_tokenizer("quantile", patch_len=tokenizer.patch_len, codebook_size=K, seed=c.seed,
                                    min_scale_returns=c.min_scale_returns, scaling=c.scaling, halflife=c.halflife,
                                    scale_floor=c.scale_floor, seasonal=c.seasonal)
        baseline.fit(frame, splits.train_end)
        base_patches = baseline.patchify(frame)  # the same patches of close returns, with the baseline's scales
        base_tokens = {s: baseline.encode_patches(p, s) for s, p in base_patches.items()}
        baseline_mse, _ = _recon_mse(baseline, base_patches, base_tokens, labels)
    val_square = _mean_square(patches, labels)
    report = {
        "kind": tokenizer.kind, "codebook_size": K, "patch_len": tokenizer.patch_len,
        "features": tokenizer.config.features, "scaling": tokenizer.config.scaling,
        "halflife": tokenizer.config.halflife if tokenizer.config.scaling != "static" else None,
        "decode": tokenizer.config.decode, "tails": _tails(tokenizer),
        "train_end": tokenizer.config.train_end, "val_end": iso(splits.val_end),
        "codes_used": int((train_counts > 0).sum()), "codes_used_frac": float((train_counts > 0).mean()),
        "usage_perplexity": _perplexity(train_counts),
        "recon_mse": recon_mse, "recon_rmse_bps": None if recon_mse is None else math.sqrt(recon_mse) * 1e4,
        "baseline_quantile_recon_mse": baseline_mse,
        "recon_mse_vs_baseline": None if recon_mse is None or not baseline_mse else recon_mse / baseline_mse,
        "val_mean_square_return": val_square,
        "recon_r2": None if recon_mse is None or not val_square else 1 - recon_mse / val_square,
        "val_codes_used": int((val_counts > 0).sum()), "val_codes_used_frac": float((val_counts > 0).mean()),
        "val_usage_perplexity": _perplexity(val_counts),
        "n_train_patches": int(train_counts.sum()), "n_val_patches": int(val_counts.sum()), "n_val_bars": val_bars,
        "n_symbols": len(patches), "tokenizer_hash": tokenizer.hash,
        "notes": ("codes_used / usage_perplexity count the train tokens; val_* the validation tokens. recon_mse is "
                  "the mean squared error per bar of decode(encode(patch)) (centroids, times each patch's real "
                  "scale) against the real log returns of the validation patches; the baseline is a quantile "
                  "tokenizer with the same K, patch_len and scaling."),
    }
    if recon_mse is None:
        report["notes"] += " No validation patch: reconstruction was not measured."
    if report["codes_used"] < 0.5 * min(K, report["n_train_patches"]):
        log.warning("only %d of %d codes are used on the train split: the codebook has collapsed",
                    report["codes_used"], K)
    return report, {"train_counts": train_counts, "val_counts": val_counts,
                    "recon": _recon_stretch(tokenizer, baseline, patches, tokens, labels)}


def _tails(tokenizer: Tokenizer) -> dict:
    """The outermost codes' GPD tails in shock units: {"low"|"high": {code, threshold, xi, beta} or None}."""
    out = {"low": None, "high": None}
    if tokenizer.within is not None:
        for side, code, (threshold, xi, beta, _) in zip(("low", "high"), tokenizer.within.tail_codes,
                                                        tokenizer.within.tail_params):
            if code >= 0:
                out[side] = {"code": int(code), "threshold": float(threshold), "xi": float(xi), "beta": float(beta)}
    return out


def _counts(tokens: dict[str, np.ndarray], labels: dict[str, np.ndarray], split: int, K: int) -> np.ndarray:
    counts = np.zeros(K, dtype=np.int64)
    for s, ids in tokens.items():
        counts += np.bincount(ids[labels[s] == split], minlength=K)
    return counts


def _perplexity(counts: np.ndarray) -> float | None:
    total = counts.sum()
    if total == 0:
        return None
    p = counts[counts > 0] / total
    return float(np.exp(-(p * np.log(p)).sum()))


def _recon_mse(tokenizer: Tokenizer, patches: dict[str, Patches], tokens: dict[str, np.ndarray],
               labels: dict[str, np.ndarray]) -> tuple[float | None, int]:
    total, bars = 0.0, 0
    for s, p in patches.items():
        val = labels[s] == 1
        if val.any():
            real = p.features[val, :, 0]
            recon = tokenizer.decode(tokens[s][val], s, scales=p.scales[val, 0]).reshape(real.shape)
            total += float(((recon - real) ** 2).sum())
            bars += real.size
    return (total / bars if bars else None), bars


def _mean_square(patches: dict[str, Patches], labels: dict[str, np.ndarray]) -> float | None:
    values = [p.features[labels[s] == 1, :, 0].ravel() for s, p in patches.items()]
    values = np.concatenate(values) if values else np.zeros(0)
    return float((values ** 2).mean()) if len(values) else None


def _recon_stretch(tokenizer, baseline, patches, tokens, labels):
    """The first validation patches of the symbol with the most of them: (symbol, times, real, recon, baseline)."""
    counts = {s: int((labels[s] == 1).sum()) for s in patches}
    if not counts or max(counts.values()) == 0:
        return None
    symbol = max(counts, key=lambda s: (counts[s], s))
    where = np.flatnonzero(labels[symbol] == 1)[:RECON_PLOT_PATCHES]
    p = patches[symbol]
    real = p.features[where, :, 0].ravel()
    recon = tokenizer.decode(tokens[symbol][where], symbol, scales=p.scales[where, 0])
    base = baseline.decode(baseline.encode_patches(p.features[where, :, :1], symbol, scales=p.scales[where, :1]),
                           symbol, scales=p.scales[where, 0])
    return symbol, len(where) * tokenizer.patch_len, real, recon, base


def _plot_usage(train_counts: np.ndarray, val_counts: np.ndarray, report: dict, path: Path) -> None:
    plots.tokenizer_usage(path, train_counts, val_counts,
                          title=f"{report['kind']} code usage: {report['codes_used']}/{report['codebook_size']} used "
                                f"on train, perplexity {report['usage_perplexity'] or 0:.1f}")


def _plot_recon(symbol: str, n_bars: int, real: np.ndarray, recon: np.ndarray, base: np.ndarray, path: Path) -> None:
    plots.reconstruction(path, real, recon, base, title=f"{symbol}: first {n_bars} validation bars, real vs "
                                                        "decode(encode)")
