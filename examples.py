"""Usage demonstrations of the pricegpt library: `./run.sh examples.py [--out DIR]`.

Six sections, each a short function over the public API, each printing a heading and what it shows:
  1. data        the embedded daily stock prices and the global train / val / test splits
  2. tokenizer   a VQ-VAE fitted on the train split, a token store, and the token analysis
  3. model       a tiny GPT: parameters, FLOPs, a forward pass (logits and loss)
  4. generation  seeded sampling with temperature / top-k / top-p, decoded back to returns
  5. training    a short `train_run` of the tiny preset on the token store
  6. forecast    `Forecaster.from_run(...).predict_quantiles(...)`, a calibrated temperature and risk numbers

Everything is written to a temporary directory that is removed at the end, or to `--out DIR` (which must not
exist yet, or be empty) to keep the tokenizer, token store and run for a look afterwards. Torch runs on one
thread unless `--threads N`. About 20-30 s on 2 busy CPU cores.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import tempfile
import time
from pathlib import Path

SOURCE = "sample:stocks-daily"
SYMBOL = "AAPL"  # the symbol the single-symbol demonstrations use
TOKENIZER_STEPS = 600  # VQ-VAE steps: the default 2000 reconstructs only a little better on this sample
TRAIN_STEPS = 60
HORIZON_BARS = 8  # two patches of 4 daily bars
NUM_SAMPLES = 256


def heading(number: int, title: str) -> None:
    print(f"\n== {number}. {title} ==", flush=True)


# ------------------------------------------------------------------------------------------------ 1. data
def show_data():
    """Load the embedded sample and show its symbols and the global time splits every stage uses."""
    from pricegpt import load_prices, time_splits
    from pricegpt.data import SAMPLES, describe

    heading(1, "data: load the embedded prices and split them in time")
    print("embedded samples: " + ", ".join(f"sample:{name}" for name in SAMPLES))
    frame = load_prices(SOURCE)
    print(f"{SOURCE}: {len(frame):,} bars, columns {', '.join(frame.columns)}")
    print(describe(frame).to_string(index=False))
    splits = time_splits(frame)  # 70% / 15% / 15% of the time span, the same cutoffs for every symbol
    labels = splits.label(frame["timestamp"])
    print(f"splits: train_end {splits.train_end:%Y-%m-%d}, val_end {splits.val_end:%Y-%m-%d}")
    for code, name in enumerate(("train", "val", "test")):
        print(f"  {name:<5} {int((labels == code).sum()):>6,} bars")
    return frame, splits


# ------------------------------------------------------------------------------------------- 2. tokenizer
def fit_tokenizer(frame, splits, out: Path):
    """Fit a VQ-VAE tokenizer on the train split, tokenize every symbol into a store, analyse the tokens."""
    from pricegpt import TokenStore, fit_to_dir, load_tokenizer, write_token_store
    from pricegpt.analysis import analyze
    from pricegpt.cli.text import format_report

    heading(2, "tokenizer: patches of returns -> codes, a token store, token analysis")
    started = time.perf_counter()
    report = fit_to_dir(frame, out / "tokenizer", kind="vqvae", train_end=splits.train_end,
                        val_end=splits.val_end, steps=TOKENIZER_STEPS)
    tokenizer = load_tokenizer(out / "tokenizer")
    print(f"fitted {tokenizer} in {time.perf_counter() - started:.1f}s")
    print(f"codes used on train: {report['codes_used']}/{report['codebook_size']} "
          f"(usage perplexity {report['usage_perplexity']:.1f})")
    print(f"validation reconstruction: RMSE {report['recon_rmse_bps']:.1f} bps per bar, R^2 {report['recon_r2']:.3f}; "
          f"MSE {report['recon_mse']:.3g} vs quantile baseline {report['baseline_quantile_recon_mse']:.3g}")

    index = write_token_store(tokenizer, frame, out / "tokens", splits)
    store = TokenStore.open(out / "tokens")
    print(f"token store {store.path.name}/: {index['n_tokens']:,} tokens, splits {index['split_counts']}")
    ids = store.split_tokens(SYMBOL, "train")[:12]
    print(f"first {SYMBOL} tokens: {' '.join(str(int(i)) for i in ids)}")
    print(f"  decoded (log returns, {tokenizer.patch_len} bars per token): "
          + " ".join(f"{r:+.4f}" for r in tokenizer.decode(ids[:2], SYMBOL)))

    result = analyze(store)
    sections = format_report(result).split("\n\n")
    kept = [s for s in sections if s.startswith(("== token analysis", "== per symbol", "== entropy"))]
    print("token analysis (abbreviated: summary, per symbol, entropy):")
    print("\n\n".join(kept))
    return tokenizer, store


# ----------------------------------------------------------------------------------------------- 3. model
def model_forward(store):
    """Build the tiny preset GPT, show its bookkeeping, and run one forward pass on real token windows."""
    import torch

    from pricegpt import GPT
    from pricegpt.model import preset_model_config

    heading(3, "model: a tiny GPT and one forward pass")
    config = preset_model_config("tiny", vocab_size=store.vocab_size)
    torch.manual_seed(0)
    model = GPT(config)
    print(f"GPTConfig(tiny): {config}")
    print(f"parameters: {model.num_params():,}  breakdown {model.param_breakdown()}")
    print(f"training FLOPs per token: {model.flops_per_token():,}")

    tokens = torch.as_tensor(store.split_tokens(SYMBOL, "train").astype("int64"))
    T = config.sequence_len
    starts = torch.arange(4) * (T + 1)
    windows = tokens[starts[:, None] + torch.arange(T + 1)]  # 4 disjoint windows of T + 1 tokens
    inputs, targets = windows[:, :-1], windows[:, 1:]
    model.eval()
    with torch.no_grad():
        logits = model(inputs)
        loss = model(inputs, targets)
    print(f"inputs {tuple(inputs.shape)} -> logits {tuple(logits.shape)} (batch, time, vocab)")
    print(f"loss {loss.item():.4f} = ln({config.vocab_size}) = {math.log(config.vocab_size):.4f} at initialisation "
          "(the lm_head starts at zero)")
    return model


# ------------------------------------------------------------------------------------------ 4. generation
def generation(model, tokenizer, store):
    """Sample continuations with a seeded generator (the engine, model.generate); the same seed gives the same
    paths."""
    import torch

    from pricegpt.model import generate

    heading(4, "generation: seeded sampling with temperature, top-k and top-p")
    context = torch.as_tensor(store.split_tokens(SYMBOL, "train")[-16:].astype("int64"))
    print(f"context: the last 16 train tokens of {SYMBOL}: {' '.join(str(int(i)) for i in context)}")
    print("(the model is untrained: its zero lm_head gives every token the same probability)")
    paths = generate(model, context, 12, num_samples=3, temperature=0.8, top_k=20, seed=0)
    print(f"generate(model, context, 12, num_samples=3, temperature=0.8, top_k=20, seed=0) -> {tuple(paths.shape)} "
          "(batch, samples, new tokens)")
    for i, path in enumerate(paths[0]):
        print(f"  sample {i}: {' '.join(str(int(t)) for t in path)}")
    again = generate(model, context, 12, num_samples=3, temperature=0.8, top_k=20, seed=0)
    print(f"same seed again -> identical paths: {torch.equal(paths, again)}")
    nucleus = generate(model, context, 12, num_samples=3, top_p=0.9, seed=1)
    print(f"top_p=0.9, seed=1 -> first sample: {' '.join(str(int(t)) for t in nucleus[0, 0])}")
    returns = tokenizer.decode(paths[0, 0].numpy(), SYMBOL)
    print(f"sample 0 decoded with {SYMBOL}'s scale: {returns.size} daily log returns, "
          f"cumulative {returns.sum():+.4f}")


# -------------------------------------------------------------------------------------------- 5. training
def short_training(store, out: Path) -> Path:
    """Train the tiny preset for a few dozen steps on the token store; the best model lands in RUN/model."""
    import csv

    from pricegpt import train_run

    heading(5, f"training: {TRAIN_STEPS} steps of the tiny preset")
    run_dir = out / "run"
    overrides = ["train.lr=2e-3", "train.warmup_steps=10", "train.eval_every=20", "train.log_every=10"]
    print(f"train_run(tokens={store.path.name}/, out={run_dir.name}/, preset='tiny', max_steps={TRAIN_STEPS}, "
          f"overrides={overrides})")
    result = train_run(tokens=store.path, out=run_dir, preset="tiny", overrides=overrides, max_steps=TRAIN_STEPS)
    print(f"trained {result['steps']} steps in {result['seconds']:.1f}s; best val loss {result['best_val_loss']:.4f} "
          f"at step {result['best_step']} (uniform: ln {store.vocab_size} = {math.log(store.vocab_size):.4f})")
    print("metrics.csv:")
    with open(run_dir / "metrics.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            train_loss, val_loss = (f"{float(row[key]):.4f}" if row[key] else "-" for key in ("train_loss", "val_loss"))
            print(f"  step {row['step']:>3}  train_loss {train_loss:>6}  val_loss {val_loss:>6}")
    print("run directory: " + ", ".join(sorted(p.name for p in run_dir.iterdir())))
    return run_dir


# -------------------------------------------------------------------------------------------- 6. forecast
def forecast(run_dir: Path, frame, splits):
    """Calibrate the sampling temperature on validation, then quantiles and risk of the next bars."""
    from pricegpt import Forecaster, calibrate_temperature, load_run
    from pricegpt.cli.text import format_forecast
    from pricegpt.forecast import SymbolForecast, quantile_table, risk

    heading(6, f"forecast: quantiles and risk of the next {HORIZON_BARS} bars")
    calibration = calibrate_temperature(load_run(run_dir), frame, splits, horizon=HORIZON_BARS, num_samples=64,
                                        max_origins=10)
    scores = ", ".join(f"T={t} {crps:.5f}" for t, crps in calibration["crps"].items())
    print(f"calibrated temperature {calibration['temperature']:g} on {calibration['n_origins']} validation origins "
          f"(CRPS: {scores})")
    if calibration["at_grid_edge"]:
        print("  (the best temperature is at the edge of the grid: a wider grid may do better)")

    forecaster = Forecaster.from_run(run_dir)  # picks up RUN/calibration.json
    table = forecaster.predict_quantiles(frame, horizon_bars=HORIZON_BARS, num_samples=NUM_SAMPLES, seed=0)
    print(f"predict_quantiles(frame, horizon_bars={HORIZON_BARS}, num_samples={NUM_SAMPLES}, seed=0): "
          f"{len(table)} rows (symbol x step), columns {', '.join(table.columns[:6])}, ...")
    at_horizon = table[table["step"] == HORIZON_BARS]
    print(at_horizon[["symbol", "origin", "return_q0.05", "return_q0.5", "return_q0.95", "price_q0.5"]]
          .to_string(index=False, float_format=lambda v: f"{v:.4f}"))

    # The same arguments and seed give the same sampled paths, from which the risk numbers are computed.
    paths = forecaster.sample_paths(frame, HORIZON_BARS, NUM_SAMPLES, seed=0)
    print(f"sample_paths: {paths.paths.shape} (symbols, samples, horizon); same quantiles as above: "
          f"{quantile_table(paths).equals(table)}")
    summaries = risk(paths.paths)  # a batch: every value is an array over symbols
    print(f"{'symbol':<6} {'P(up)':>6} {'E[ret]':>7} {'VaR95':>6} {'ES95':>6} {'VaR99':>6} {'ES99':>6}")
    for i, symbol in enumerate(paths.symbols):
        print(f"{symbol:<6} {summaries['p_up'][i]:>6.1%} {summaries['expected_return'][i]:>+7.2%} "
              + " ".join(f"{summaries[key][i]:>6.2%}" for key in ("var_95", "es_95", "var_99", "es_99")))
    i = paths.symbols.index(SYMBOL)
    single = SymbolForecast(symbol=SYMBOL, horizon=HORIZON_BARS, num_samples=NUM_SAMPLES, seed=0,
                            temperature=forecaster.temperature, table=table[table["symbol"] == SYMBOL],
                            risk=risk(paths.paths[i]))
    print()
    print(format_forecast(single))


# ------------------------------------------------------------------------------------------------- main
@contextlib.contextmanager
def output_dir(out: str | None):
    """`out` (created; main checked that it is absent or empty) or a temporary directory removed at the end."""
    if out is None:
        with tempfile.TemporaryDirectory(prefix="pricegpt-examples-") as tmp:
            yield Path(tmp)
        return
    path = Path(out)
    path.mkdir(parents=True, exist_ok=True)
    yield path


def usable_out(out: str) -> bool:
    path = Path(out)
    return not path.exists() or (path.is_dir() and not any(path.iterdir()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="keep the outputs in this new directory (default: a temporary one)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: these models are tiny, and on a busy machine two threads "
                             "waiting on each other are many times slower than one)")
    args = parser.parse_args(argv)
    if args.out is not None and not usable_out(args.out):
        parser.error(f"--out {args.out} already exists and is not an empty directory; choose another")
    if args.threads < 1:
        parser.error(f"--threads must be at least 1, got {args.threads}")
    import torch

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    seconds: dict[str, float] = {}

    def timed(name, section, *section_args):
        start = time.perf_counter()
        result = section(*section_args)
        seconds[name] = time.perf_counter() - start
        return result

    with output_dir(args.out) as out:
        frame, splits = timed("data", show_data)
        tokenizer, store = timed("tokenizer", fit_tokenizer, frame, splits, out)
        model = timed("model", model_forward, store)
        timed("generation", generation, model, tokenizer, store)
        run_dir = timed("training", short_training, store, out)
        timed("forecast", forecast, run_dir, frame, splits)
        where = f"outputs kept in {out}" if args.out else "temporary outputs removed"
    print(f"\nall examples done in {time.perf_counter() - started:.1f}s ({where}): "
          + ", ".join(f"{name} {s:.1f}s" for name, s in seconds.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
