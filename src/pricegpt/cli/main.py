"""The `pricegpt` command line. Each subcommand parses its flags and calls one library function.

Exit codes: 0 ok; 2 a user or data error (one `error: ...` line on stderr, no traceback); 1 a bug
(traceback). `--debug` shows the traceback for user errors too, for bug reports.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from .. import CurrentStderrHandler
from ..config import check_num_generate, check_num_samples, check_seed, check_temperature, check_top_k, check_top_p
from ..config.checks import MAX_ENSEMBLE, MAX_HORIZON_BARS
from ..errors import ConfigError, PriceGPTError
from . import commands
from .corpus import add_corpus_parser

log = logging.getLogger("pricegpt")


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag as one `error: ...` line (exit 2) instead of usage + message."""

    def error(self, message: str):
        sys.stderr.write(f"error: {message} (see `{self.prog} --help`)\n")
        raise SystemExit(2)


# Upper bound of the count flags without a bound of their own: beyond it a run cannot fit a machine (the library
# checks the memory a given value needs against the machine it runs on; this catches typos before anything loads).
MAX_COUNT = 10**9


def _whole(text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None


def _bounded_int(low: int, high: int, what: str = "a whole number"):
    def parse(text: str) -> int:
        value = _whole(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be {what} in [{low}, {high:,}], got {value}")
        return value

    parse.__name__ = what  # argparse names the type in its messages
    return parse


def _checked(parse_text, check):
    """An argparse type: `parse_text` reads the flag, `check` (one of config's check_* bounds, the same the
    library applies) bounds it; its message becomes argparse's."""
    def parse(text: str):
        try:
            return check(parse_text(text), "the value")
        except ConfigError as err:
            raise argparse.ArgumentTypeError(str(err).removeprefix("the value ")) from None

    parse.__name__ = check.__name__.removeprefix("check_")
    return parse


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None


_positive_int = _bounded_int(1, MAX_COUNT, "a whole number")
_ensemble = _bounded_int(1, MAX_ENSEMBLE, "a whole number")
_horizon = _bounded_int(1, MAX_HORIZON_BARS, "a whole number")  # the API's bound on generated bars
_seed = _checked(_whole, check_seed)
_num_samples = _checked(_whole, check_num_samples)
_num_generate = _checked(_whole, check_num_generate)
_temperature = _checked(_number, check_temperature)
_top_p = _checked(_number, check_top_p)
_top_k = _checked(_whole, check_top_k)


def _positive_number(text: str) -> float:
    value = _nonneg_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def _horizons(text: str) -> list[int]:
    values = [part.strip() for part in text.split(",") if part.strip()]
    if not values:
        raise argparse.ArgumentTypeError(f"'{text}' names no horizon; write them like 1,4,16")
    return [_horizon(value) for value in values]


def _runs(text: str) -> list[str]:
    values = [part.strip() for part in text.split(",") if part.strip()]
    if len(values) < 2:
        raise argparse.ArgumentTypeError(f"'{text}' names {len(values)} run(s); pool at least two, like runs/a,runs/b")
    if len({os.path.realpath(v) for v in values}) < len(values):
        raise argparse.ArgumentTypeError(f"'{text}' names a run twice; each run is one member of the pool")
    return values



def _price(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite price > 0, got {text}")
    return value


def _bps(text: str) -> float:
    value = _nonneg_float(text)
    if value > 10_000:
        raise argparse.ArgumentTypeError(f"must be at most 10000 basis points (100%), got {text}")
    return value


def _probability(text: str) -> float:
    value = _nonneg_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"must be a probability in [0, 1], got {text}")
    return value


def _date_format(text: str) -> str:
    if "%" not in text:
        raise argparse.ArgumentTypeError(f"'{text}' is not a strptime format; write it like %d/%m/%Y or "
                                         "'%Y-%m-%d %H:%M'")
    return text


def _nonneg_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def _unit_float(text: str) -> float:
    value = _nonneg_float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


# ------------------------------------------------------------------------------------------------- parsing
def _add_scaling(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scaling", choices=["static", "ewma", "garch"],
                   help="what a token is a move relative to: the symbol's train volatility (static), a running "
                        "EWMA volatility (ewma) or a GARCH filter (garch) (default: the preset's)")
    p.add_argument("--halflife", type=_positive_number, help="half-life in bars of the ewma scaling (default 11.2)")
    p.add_argument("--seasonal", choices=["on", "off"],
                   help="divide intraday returns by their time-of-day x weekday volatility profile before scaling "
                        "(on) or not (off) (default: the preset's; daily data are unaffected)")
    p.add_argument("--decode", choices=["centroid", "within"],
                   help="sampled tokens decode to their code's centroid, or to draws from its train members with "
                        "fitted tails (within)")


def _add_device(p: argparse.ArgumentParser, stages: str = "") -> None:
    """--device and --dtype of a command that samples from a model (commands.py resolves them before any work)."""
    p.add_argument("--device", default="auto",
                   help="where the model samples" + stages + ": auto (CUDA, then MPS, then the CPU: a run trained "
                        "on a GPU forecasts on it), cpu, cuda, cuda:N or mps (default auto)")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32",
                   help="compute dtype of sampling: bf16 / fp16 autocast is faster on GPUs and CPUs with bf16 "
                        "matrix instructions, but gives other paths for a seed and makes an origin's paths depend "
                        "on the origins sampled with it (default fp32)")


def _add_run_or_model(p: argparse.ArgumentParser, train_end_help: str, val_end_help: str) -> None:
    """--run or --model (one of them), --data, and the zero-shot flags that go with --model (evaluate, backtest)."""
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--run", help="a trained run directory")
    which.add_argument("--model", help="a pretrained forecaster (pricegpt-small or a folder), zero-shot: needs "
                                       "--data and --out")
    which.add_argument("--runs", type=_runs, metavar="A,B,...",
                       help="pool trained runs as one forecaster (paths split equally; its temperature chosen on "
                            "the validation split of the data); needs --out")
    p.add_argument("--data", help="price data (default: the data the run was built from)")
    p.add_argument("--train-end", help="with --model: last train bar of the data" + train_end_help)
    p.add_argument("--val-end", help="with --model: last validation bar (the temperature is chosen on it"
                                     + val_end_help + ")")
    p.add_argument("--no-calibrate", action="store_true",
                   help="with --model: keep the model's own temperature instead of choosing one on the data's "
                        "validation split")


def _add_date_format(p: argparse.ArgumentParser) -> None:
    p.add_argument("--date-format", type=_date_format,
                   help="strptime format of the timestamp column, e.g. %%d/%%m/%%Y (default: inferred from all "
                        "values of the column)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pricegpt", description="Market prices as a language: tokenize, train, forecast, judge.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors (for bug reports)")
    parser.add_argument("--version", action="version", version=f"pricegpt {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    data = sub.add_parser("data", help="list, inspect and download price data")
    data_sub = data.add_subparsers(dest="data_command", metavar="ACTION", parser_class=_Parser)
    data_sub.required = True
    p = data_sub.add_parser("list", help="list the embedded datasets")
    p.set_defaults(func=commands.cmd_data_list)
    p = data_sub.add_parser("info", help="per-symbol summary of a price file, folder or sample:NAME")
    p.add_argument("path")
    _add_date_format(p)
    p.set_defaults(func=commands.cmd_data_info)
    p = data_sub.add_parser("download", help="download prices from Yahoo Finance (the `yahoo` extra) or a crypto "
                                             "exchange (--source ccxt, the `ccxt` extra)")
    p.add_argument("--source", choices=["yahoo", "ccxt"], default="yahoo",
                   help="yahoo: Yahoo Finance; ccxt: a crypto exchange named by --exchange (default yahoo)")
    p.add_argument("--tickers", "--symbols", dest="tickers", metavar="SYMBOLS", required=True,
                   help="comma-separated, e.g. AAPL,MSFT,BTC-USD (yahoo) or BTC/USDT,ETH/USDT (ccxt)")
    p.add_argument("--exchange", help="ccxt exchange id, e.g. binance, kraken, coinbase (--source ccxt)")
    p.add_argument("--interval", "--timeframe", dest="interval", metavar="TIMEFRAME", default="1d",
                   help="bar length: 1m, 5m, 15m, 30m, 1h, 1d, 1wk ... (yahoo), 1m, 1h, 4h, 1d ... (ccxt) "
                        "(default 1d)")
    p.add_argument("--start", required=True)
    p.add_argument("--end", required=True, help="exclusive")
    p.add_argument("--out", required=True, help="output file (.csv, .csv.gz or .parquet); with --source ccxt an "
                                                "interrupted download of the same request is continued")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    p.set_defaults(func=commands.cmd_data_download)
    add_corpus_parser(data_sub)

    tok = sub.add_parser("tokenizer", help="fit a tokenizer")
    tok_sub = tok.add_subparsers(dest="tokenizer_command", metavar="ACTION", parser_class=_Parser)
    tok_sub.required = True
    p = tok_sub.add_parser("fit", help="fit a tokenizer on the train split and write DIR/report.json")
    p.add_argument("--data", required=True, help="price file, folder or sample:NAME")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--kind", choices=["vqvae", "quantile", "uniform"], default="vqvae")
    p.add_argument("--patch-len", type=_positive_int)
    p.add_argument("--codebook-size", type=_positive_int)
    p.add_argument("--features", choices=["close", "ohlcv"])
    _add_scaling(p)
    p.add_argument("--train-end")
    p.add_argument("--val-end")
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--force", action="store_true",
                   help="replace --out if it was made with other settings (the same settings finish the run)")
    _add_date_format(p)
    p.set_defaults(func=commands.cmd_tokenizer_fit)

    p = sub.add_parser("tokenize", help="turn prices into a token store with a fitted tokenizer")
    p.add_argument("--tokenizer", required=True, help="tokenizer directory")
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--train-end", help="default: the tokenizer's")
    p.add_argument("--val-end", help="default: the tokenizer's")
    p.add_argument("--force", action="store_true",
                   help="replace --out if it was made with other settings (the same settings finish the run)")
    _add_date_format(p)
    p.set_defaults(func=commands.cmd_tokenize)

    p = sub.add_parser("train", help="train the GPT on a token store or token file")
    p.add_argument("--tokens", required=True, help="token store directory or a .txt file of token ids")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--preset", help="tiny | seed | large (default: seed)")
    p.add_argument("--config", help="YAML config file")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value, e.g. train.lr=1e-3")
    p.add_argument("--max-steps", type=_positive_int)
    p.add_argument("--resume", action="store_true",
                   help="continue from the run's latest checkpoint (RUN/checkpoints/LATEST); none: restart at step 0")
    p.add_argument("--init", metavar="MODEL",
                   help="fine-tune this model: a forecaster folder, a built-in name (pricegpt-small) or a run "
                        "directory; --tokens must come from its tokenizer")
    p.set_defaults(func=commands.cmd_train)

    p = sub.add_parser("generate", help="sample token continuations from a trained run")
    p.add_argument("--run", help="run directory (default: the most recent under runs/)")
    p.add_argument("--seed-tokens", "--seed_tokens", dest="seed_tokens", required=True,
                   help='context token ids, e.g. "80 81 83 89 66"')
    p.add_argument("--num-generate", "--num_generate", dest="num_generate", type=_num_generate, default=50)
    p.add_argument("--num-samples", "--num_samples", dest="num_samples", type=_num_samples, default=1)
    p.add_argument("--temperature", type=_temperature, default=1.0)
    p.add_argument("--top-k", "--top_k", dest="top_k", type=_top_k)
    p.add_argument("--top-p", "--top_p", dest="top_p", type=_top_p)
    p.add_argument("--seed", type=_seed)
    p.add_argument("--decode", action="store_true", help="also print decoded log returns and a price path")
    p.add_argument("--start-price", type=_price, default=100.0, help="start price of the decoded path")
    p.add_argument("--symbol", help="symbol whose scale decodes the returns (default: global scale)")
    _add_device(p)
    p.set_defaults(func=commands.cmd_generate)

    p = sub.add_parser("evaluate", help="token and forecast metrics vs baselines; writes RUN/eval/")
    _add_run_or_model(p, train_end_help=" (baselines fit on it)", val_end_help="")
    p.add_argument("--split", choices=["val", "test"], default="test")
    p.add_argument("--horizon", type=_horizon, help="forecast horizon in bars (default: the run's)")
    p.add_argument("--horizons", type=_horizons,
                   help="several horizons in one evaluation, e.g. 1,4,16 (default: the run's horizon and 1)")
    p.add_argument("--num-samples", type=_num_samples)
    p.add_argument("--max-origins", type=_positive_int, help="cap on forecast origins per symbol")
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--allow-overlap", action="store_true", help="allow test origins before the run's train_end")
    p.add_argument("--out", help="output directory (default: RUN/eval)")
    _add_date_format(p)
    _add_device(p)
    p.set_defaults(func=commands.cmd_evaluate)

    p = sub.add_parser("calibrate", help="choose the sampling temperature on the validation split; writes "
                                         "RUN/calibration.json")
    p.add_argument("--run", required=True)
    p.add_argument("--data", help="price data (default: the data the run was built from)")
    p.add_argument("--horizon", type=_horizon, help="forecast horizon in bars (default: the run's)")
    p.add_argument("--num-samples", type=_num_samples, default=256)
    p.add_argument("--max-origins", type=_positive_int,
                   help="cap on validation origins per symbol (default 50, more when few symbols would give "
                        "fewer than 400 in all)")
    p.add_argument("--seed", type=_seed, default=0)
    _add_date_format(p)
    _add_device(p)
    p.set_defaults(func=commands.cmd_calibrate)

    p = sub.add_parser("forecast", help="quantiles and risk for the next H bars of one symbol")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--run", help="a trained run directory")
    which.add_argument("--model", help="a pretrained forecaster: a folder or a built-in name (default without "
                                       "--run: pricegpt-small, shipped with the package)")
    p.add_argument("--data", required=True)
    p.add_argument("--symbol", required=True)
    p.add_argument("--horizon", type=_horizon, required=True)
    p.add_argument("--num-samples", type=_num_samples, default=512)
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--out", help="fan chart PNG (default: RUN/forecast/SYMBOL.png; with a pretrained model: none)")
    _add_date_format(p)
    _add_device(p)
    p.set_defaults(func=commands.cmd_forecast)

    p = sub.add_parser("analyze", help="token statistics, transitions, patterns, outliers, entropy")
    p.add_argument("--tokens", help="token store directory or a .txt file of token ids (with --run: RUN/tokens)")
    p.add_argument("--out", help="directory for the PNGs and analysis.json")
    p.add_argument("--tokenizer", help="tokenizer directory, to flag tokens with extreme decoded returns")
    p.add_argument("--run", help="a run of a calendar model (model.calendar): also show its learned time-of-day "
                                 "profile")
    p.set_defaults(func=commands.cmd_analyze)

    p = sub.add_parser("backtest", help="walk-forward backtest of forecast-driven positions after costs")
    _add_run_or_model(p, train_end_help="", val_end_help="; the backtest trades the bars after it")
    p.add_argument("--allow-overlap", action="store_true",
                   help="trade bars at or before the run's val_end (the model's data cutoff) anyway; metrics.json "
                        "is flagged")
    p.add_argument("--cost-bps", type=_bps, default=1.0)
    p.add_argument("--slippage-bps", type=_bps, default=0.0)
    p.add_argument("--strategy", choices=["sign", "kelly"], default="sign")
    p.add_argument("--horizon", type=_horizon, help="forecast horizon in bars (default: the run's horizon)")
    p.add_argument("--rebalance", type=_positive_int, help="bars between decisions (default: the horizon)")
    p.add_argument("--long-above", type=_unit_float, default=0.55, help="sign: long when P(up) > this")
    p.add_argument("--short-below", type=_probability, default=0.45, help="sign: short when P(up) < this")
    p.add_argument("--long-only", action="store_true", help="never short (strategy and momentum)")
    p.add_argument("--kelly-fraction", type=_unit_float, default=0.5, help="kelly: fraction of full Kelly")
    p.add_argument("--momentum-lookback", type=_positive_int, default=20, help="bars of the momentum baseline")
    p.add_argument("--num-samples", type=_num_samples)
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--out", help="output directory (default: RUN/backtest; required with --model)")
    _add_date_format(p)
    _add_device(p)
    p.set_defaults(func=commands.cmd_backtest)

    p = sub.add_parser("pipeline", help="data -> tokenizer -> train -> evaluate -> backtest -> report")
    p.add_argument("--data", required=True, help="price file, folder or sample:NAME")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--config")
    p.add_argument("--set", action="append", metavar="KEY=VALUE")
    p.add_argument("--train-end")
    p.add_argument("--val-end")
    p.add_argument("--max-steps", type=_positive_int)
    p.add_argument("--tokenizer-kind", choices=["vqvae", "quantile", "uniform"], default="vqvae")
    p.add_argument("--patch-len", type=_positive_int, help="bars per token (default: the preset's)")
    p.add_argument("--codebook-size", type=_positive_int, help="tokenizer codes (default: the preset's)")
    _add_scaling(p)
    p.add_argument("--horizon", type=_horizon, help="forecast horizon in bars (default: 4)")
    p.add_argument("--num-samples", type=_num_samples)
    p.add_argument("--cost-bps", type=_bps, default=1.0)
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--ablation", action="store_true",
                   help="also train the same pipeline with the quantile tokenizer and compare in the report")
    p.add_argument("--force", action="store_true",
                   help="replace --out if it was made with other settings (the same settings finish the run)")
    p.add_argument("--init", metavar="MODEL",
                   help="fine-tune this model (forecaster folder, built-in name or run directory): its tokenizer "
                        "is used instead of fitting one")
    p.add_argument("--calibration-max-origins", type=_positive_int, metavar="N",
                   help="validation origins per symbol for the temperature (default 50, more when few symbols would "
                        "give fewer than 400 in all); fewer calibrate faster and noisier")
    p.add_argument("--ensemble", type=_ensemble, default=1, metavar="K",
                   help="train K models with consecutive training seeds on the same tokens and forecast with their "
                        "pool (paths split equally, one temperature); default 1")
    _add_date_format(p)
    _add_device(p, " in the calibrate, evaluate and backtest stages (training: train.device and train.dtype, "
                   "e.g. --set train.device=cuda --set train.dtype=bf16; its auto also means the GPU)")
    p.set_defaults(func=commands.cmd_pipeline)

    p = sub.add_parser("skill", help="the pipeline (or a pretrained model zero-shot) on a suite of datasets: one "
                                      "table of verdicts (skill.md, .json)")
    p.add_argument("--suite", choices=["embedded"],
                   help="embedded: sample:stocks-daily and sample:eurusd-hourly (default when no --data is given)")
    p.add_argument("--data", action="extend", nargs="+", metavar="PATH",
                   help="further datasets: price files, folders or sample:NAME")
    p.add_argument("--out", required=True, help="suite directory: one run per dataset, skill.md, skill.json")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--model", metavar="MODEL",
                       help="run the suite zero-shot with this pretrained forecaster (pricegpt-small or a folder): "
                            "no training")
    which.add_argument("--init", metavar="MODEL",
                       help="fine-tune this pretrained model (forecaster folder, built-in name or run directory) on "
                            "each dataset instead of training from scratch")
    p.add_argument("--no-calibrate", action="store_true",
                   help="with --model: keep the model's own temperature instead of choosing one on each dataset's "
                        "validation split")
    p.add_argument("--preset", help="model preset of the runs trained (default tiny)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value of every run")
    p.add_argument("--max-steps", type=_positive_int)
    p.add_argument("--num-samples", type=_num_samples)
    p.add_argument("--horizon", type=_horizon, help="forecast horizon in bars (default: 4)")
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--force", action="store_true", help="replace a dataset's run made with other settings")
    _add_device(p, " in the calibrate, evaluate and backtest stages of every dataset (training: train.device and "
                   "train.dtype, set with --set)")
    p.set_defaults(func=commands.cmd_skill)

    p = sub.add_parser("pretrain", help="pretrain one model on a price corpus (pricegpt data corpus build)")
    p.add_argument("--corpus", required=True, help="corpus directory written by `pricegpt data corpus build`")
    p.add_argument("--out", required=True, help="run directory (tokenizer, tokens, model, forecaster/)")
    p.add_argument("--preset", default="tiny", help="model shape (default tiny: it reached the lowest validation "
                                                    "loss per second here; MODEL_README, 'Pretrained')")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value")
    p.add_argument("--max-steps", type=_positive_int)
    p.add_argument("--train-end", help="last train date (default 2011-12-31)")
    p.add_argument("--val-end", help="last validation date (default: the corpus cutoff)")
    p.add_argument("--sources", help="comma-separated corpus sources to use (default: every dated one)")
    p.add_argument("--seed", type=_seed, default=0)
    p.set_defaults(func=commands.cmd_pretrain)

    p = sub.add_parser("bench", help="benchmarks against real peers, as ratios")
    p.add_argument("--quick", action="store_true", help="short version (< 3 minutes on 2 cores)")
    p.add_argument("--only", help="comma-separated subset: train,generate,encode,e2e,scaling")
    p.set_defaults(func=commands.cmd_bench)
    return parser


def _version() -> str:
    from .. import __version__

    return __version__


class _StderrFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        prefix = "warning: " if record.levelno >= logging.WARNING else ""
        return prefix + record.getMessage()


def _setup_logging() -> None:
    handler = CurrentStderrHandler()
    handler.setFormatter(_StderrFormatter())
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO)
    log.propagate = False


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging()
    try:
        return int(args.func(args) or 0)
    except PriceGPTError as err:
        if debug:
            raise
        message = " ".join(str(err).split("\n"))
        sys.stderr.write(f"error: {message}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        return 130
    except BrokenPipeError:
        return 0
