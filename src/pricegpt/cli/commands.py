"""What each `pricegpt` subcommand does: map its parsed flags to one library call and print what it returns
(formatted by text.py). Library modules are imported when their command runs, so the CLI starts fast."""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError


# ----------------------------------------------------------------------------------------------------- data
def cmd_data_list(args) -> int:
    from ..data import SAMPLES, load_prices

    print(f"{'name':<22} {'symbols':>7} {'bars':>7}  description")
    for name, description in SAMPLES.items():
        frame = load_prices(f"sample:{name}")
        print(f"{'sample:' + name:<22} {frame['symbol'].nunique():>7} {len(frame):>7}  {description}")
    return 0


def cmd_data_info(args) -> int:
    from ..data import describe, read_prices

    frame, report = read_prices(args.path, date_format=args.date_format)
    table = describe(frame, report.dropped)
    print(f"{args.path}: {table['symbol'].size} symbol(s), columns: {', '.join(frame.columns[2:])}"
          + (" (adjusted close)" if report.adjusted else ""))
    print(table.to_string(index=False))
    print(f"total: {len(frame)} bars, {table['symbol'].size} symbol(s), {int(table['dropped'].sum())} dropped row(s)")
    return 0


def cmd_data_download(args) -> int:
    from ..data.download import download_ccxt, download_yahoo

    tickers = [t.strip() for t in args.tickers.split(",") if t.strip()]
    if args.source == "ccxt":
        path = download_ccxt(tickers, exchange=args.exchange, timeframe=args.interval, start=args.start,
                             end=args.end, out=args.out, overwrite=args.force)
    elif args.exchange is not None:
        raise ConfigError("--exchange is for --source ccxt; Yahoo Finance needs none")
    else:
        path = download_yahoo(tickers, interval=args.interval, start=args.start, end=args.end, out=args.out,
                              overwrite=args.force)
    print(f"wrote {path}")
    return 0


# ------------------------------------------------------------------------------------------------ tokenizer
def _on_off(value: str | None) -> bool | None:
    return None if value is None else value == "on"


def cmd_tokenizer_fit(args) -> int:
    from ..data import load_prices
    from ..tokenizer import fit_to_dir

    frame = load_prices(args.data, date_format=args.date_format)
    kwargs = {k: v for k, v in {"patch_len": args.patch_len, "codebook_size": args.codebook_size,
                                "features": args.features, "scaling": args.scaling, "halflife": args.halflife,
                                "decode": args.decode, "seasonal": _on_off(args.seasonal)}.items() if v is not None}
    report = fit_to_dir(frame, args.out, kind=args.kind, train_end=args.train_end, val_end=args.val_end,
                        seed=args.seed, overwrite=args.force, **kwargs)
    print(f"tokenizer ({report['kind']}, K={report['codebook_size']}, patch_len={report['patch_len']}) "
          f"written to {args.out}")
    print(f"codes used: {report['codes_used']}/{report['codebook_size']} ({report['codes_used_frac']:.0%}), "
          f"usage perplexity {report['usage_perplexity']:.1f}")
    if report.get("recon_mse") is None:
        print("validation recon MSE: n/a (no validation data after train_end)")
    else:
        print(f"validation recon MSE {report['recon_mse']:.3e} (rmse {report['recon_rmse_bps']:.1f} bps) vs "
              f"quantile baseline {report['baseline_quantile_recon_mse']:.3e}")
    return 0


def cmd_tokenize(args) -> int:
    from ..tokenizer import load_tokenizer
    from ..tokenizer.stream import stream_token_store

    tokenizer = load_tokenizer(args.tokenizer)
    # A symbol batch at a time, so data larger than memory tokenizes; the same store write_token_store writes.
    # Without explicit cutoffs the store takes the tokenizer's train_end (see write_token_store).
    stream_token_store(tokenizer, args.data, args.out, train_end=args.train_end or None,
                       val_end=args.val_end or None, date_format=args.date_format, overwrite=args.force)
    print(f"token store written to {args.out}")
    return 0


# ------------------------------------------------------------------------------------------------- training
def cmd_train(args) -> int:
    from ..train import train_run

    result = train_run(tokens=args.tokens, out=args.out, preset=args.preset, config_file=args.config,
                       overrides=args.set or [], max_steps=args.max_steps, resume=args.resume, init=args.init)
    if result is not None:
        print(f"best model (val loss {result['best_val_loss']:.4f} at step {result['best_step']}) in "
              f"{Path(args.out) / 'model'}")
    return 0


# ------------------------------------------------------------------------------------------ generate & co.
def _data_arg(args):
    """--data as the library takes it: the path, or the frame read with the user's --date-format."""
    if args.data is None or args.date_format is None:
        return args.data
    from ..data import load_prices

    return load_prices(args.data, date_format=args.date_format)


def _sampling_on(args):
    """The block a sampling command runs in: its --device and --dtype, resolved before any work (a device this
    machine lacks is a ConfigError), reach every Forecaster the library call builds (forecaster.sampling_on)."""
    from ..forecast.forecaster import sampling_on

    device, autocast = _device_dtype(args)
    return sampling_on(device, autocast)


def _device_dtype(args):
    from ..train.device import resolve_device, resolve_dtype

    device = resolve_device(args.device)
    return device, resolve_dtype(args.dtype, device)


def cmd_generate(args) -> int:
    """One line of generated ids per sample; with --decode also returns and a price path. Every flag is checked
    (by the parser, --device and --dtype here) before the run is loaded, the run's model and tokenizer before
    anything is sampled."""
    import numpy as np
    import torch

    from ..model import generate
    from ..runs import latest_run, load_run, parse_token_ids

    device, autocast = _device_dtype(args)
    run = load_run(Path(args.run) if args.run else latest_run(), device=device, need_tokenizer=args.decode)
    if args.decode and args.symbol is not None:
        run.tokenizer.check_symbol(args.symbol, "--symbol")
    ids = parse_token_ids(args.seed_tokens, run.model.config.vocab_size)
    # a model with asset identity reads --symbol's row (the "unknown" row without one, or for a symbol it never saw)
    symbol = run.model.symbol_ids([args.symbol]) \
        if args.symbol is not None and run.model.config.symbol_embedding else None
    out = generate(run.model, torch.tensor([ids], dtype=torch.long), args.num_generate,
                   num_samples=args.num_samples, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                   seed=args.seed, autocast=autocast, symbol=symbol)
    samples = out[0].tolist()
    for i, row in enumerate(samples):
        print(" ".join(map(str, row)) if args.num_samples == 1 else f"sample {i}: " + " ".join(map(str, row)))
    if args.decode:
        for i, row in enumerate(samples):
            returns = np.asarray(run.tokenizer.decode(np.asarray(row), symbol=args.symbol), dtype=np.float64).ravel()
            prices = args.start_price * np.exp(np.cumsum(returns))
            print(f"sample {i} log returns: " + " ".join(f"{r:+.5f}" for r in returns))
            print(f"sample {i} prices from {args.start_price:g}: " + " ".join(f"{p:.4f}" for p in prices))
    return 0


def cmd_evaluate(args) -> int:
    from ..evaluate import evaluate_run
    from ..rundir import RunDir
    from .text import headline_table

    if args.model is not None:
        return _evaluate_model(args)
    _refuse_zero_shot_flags(args, "a run is evaluated with its own cutoffs and temperature")
    with _sampling_on(args):
        run, data = (args.run, _data_arg(args)) if args.runs is None else _pooled_runs(args, "evaluate")
        metrics = evaluate_run(run, data=data, split=args.split, allow_overlap=args.allow_overlap,
                               num_samples=args.num_samples, horizon=args.horizon, horizons=args.horizons,
                               max_origins=args.max_origins, seed=args.seed, out=args.out)
    if metrics is None:  # a process of a torchrun launch other than rank 0: rank 0 wrote and reports
        return 0
    if args.runs is not None:
        print(headline_table(metrics))
        print(f"report: {Path(args.out) / 'report.html'}")
        return 0
    if args.out is None and RunDir(args.run).backtest_metrics.is_file():  # keep the run's backtest in its report
        from ..evaluate.report import refresh_report

        refresh_report(args.run)
    print(headline_table(metrics))
    print(f"report: {Path(args.out) / 'report.html' if args.out else RunDir(args.run).report_html}")
    return 0


def _pooled_runs(args, command: str):
    """--runs A,B,...: (the runs' EnsembleForecaster, the price frame), its temperature chosen in memory on the
    data's VALIDATION split (the runs' cutoffs) at the evaluation's horizon, since no run's calibration.json is
    the pool's. One process; --out is required (the pool has no run directory)."""
    from ..data import load_prices
    from ..forecast import EnsembleForecaster, calibrate_temperature
    from ..train.dist import dist_env

    if args.out is None:
        raise ConfigError(f"{command} --runs pools runs into a forecaster with no run directory of its own: give "
                          "--out DIR")
    if dist_env().world_size > 1:
        raise ConfigError(f"{command} --runs runs in one process (the pool's temperature is chosen in memory); "
                          "launch it without torchrun")
    pool = EnsembleForecaster.from_runs(args.runs)
    recorded = next((m.run.meta for m in pool.members if m.run.meta.get("data")), {})
    pool.run.meta = {**recorded, **pool.run.meta}  # a member trained on another's tokens records no data, horizon
    source = args.data if args.data is not None else recorded.get("data")
    if source is None:
        raise ConfigError("none of --runs records the data it was built from; pass --data PATH")
    frame = load_prices(source, date_format=args.date_format if args.data is not None
                        else recorded.get("date_format"))
    horizon = getattr(args, "horizon", None) or (getattr(args, "horizons", None) or [None])[0] \
        or pool.run.meta.get("horizon") or pool.patch_len
    calibrate_temperature(pool, frame, None, horizon, num_samples=args.num_samples or 256, seed=args.seed,
                          save=False)
    return pool, frame


def _refuse_zero_shot_flags(args, why: str) -> None:
    """--train-end, --val-end and --no-calibrate go with --model only (evaluate, backtest)."""
    for flag, value in (("--train-end", args.train_end), ("--val-end", args.val_end),
                        ("--no-calibrate", args.no_calibrate or None)):
        if value is not None:
            raise ConfigError(f"{flag} goes with --model ({why})")


def _zero_shot_line(metrics: dict) -> str:
    zero = metrics["zero_shot"]
    return (f"zero-shot: {zero['model']} (data cutoff {str(zero['data_cutoff'])[:10]}), temperature "
            f"{zero['temperature']:g} from {zero['temperature_from']}")


def _evaluate_model(args) -> int:
    from ..data import load_prices
    from ..evaluate import evaluate_model
    from .text import headline_table

    if args.data is None or args.out is None:
        raise ConfigError("evaluate --model needs --data PATH (the series to forecast) and --out DIR")
    if args.split != "test":
        raise ConfigError("evaluate --model scores the test split only (the validation split chooses the "
                          "temperature)")
    with _sampling_on(args):
        data = load_prices(args.data, date_format=args.date_format)
        metrics = evaluate_model(args.model, data, args.out, train_end=args.train_end, val_end=args.val_end,
                                 calibrate=not args.no_calibrate, allow_overlap=args.allow_overlap,
                                 num_samples=args.num_samples, horizon=args.horizon, horizons=args.horizons,
                                 max_origins=args.max_origins, seed=args.seed)
    print(_zero_shot_line(metrics))
    print(headline_table(metrics))
    print(f"report: {Path(args.out) / 'report.html'}")
    return 0


def cmd_calibrate(args) -> int:
    from ..forecast.calibrate import calibrate_run
    from ..rundir import RunDir

    with _sampling_on(args):
        result = calibrate_run(args.run, data=_data_arg(args), horizon=args.horizon, num_samples=args.num_samples,
                               max_origins=args.max_origins, seed=args.seed)
    if result is None:  # a process of a torchrun launch other than rank 0
        return 0
    coverage = result.get("coverage_90", {})
    scores = ", ".join(f"T={t}: {value:.6f}" + (f" ({coverage[t]:.1%})" if t in coverage else "")
                       for t, value in result["crps"].items())
    print(f"temperature {result['temperature']:g}: of the temperatures within one standard error of the lowest "
          f"CRPS ({', '.join(f'{t:g}' for t in result.get('within_one_se', []))}), the one whose 90% interval covers "
          "closest to 90%")
    print(f"validation CRPS of the {result['horizon_bars']}-bar return over {result['n_origins']} origins (90% "
          f"coverage): {scores}")
    print(f"wrote {RunDir(args.run).calibration}")
    return 0


def cmd_forecast(args) -> int:
    from ..forecast import forecast_symbol
    from .text import format_forecast

    with _sampling_on(args):
        if args.run is not None:
            source = args.run
        else:
            from ..forecast import Forecaster, check_sampling
            from ..forecast.forecaster import DEFAULT_MODEL

            check_sampling(args.horizon, args.num_samples, args.seed)  # before the model is loaded
            source = Forecaster.from_pretrained(args.model or DEFAULT_MODEL)
        result = forecast_symbol(source, args.data, args.symbol, args.horizon, args.num_samples, args.seed,
                                 chart_path=args.out, date_format=args.date_format)
    print(format_forecast(result))
    return 0


def cmd_analyze(args) -> int:
    from ..analysis import analyze_to_dir
    from .text import format_report

    tokens = args.tokens
    if tokens is None:
        if args.run is None:
            raise ConfigError("give --tokens (a token store or a .txt file of ids), or --run RUN to analyse its "
                              "tokens and its model's learned time-of-day profile")
        tokens = Path(args.run) / "tokens"
    result, out, names = analyze_to_dir(tokens, args.out, tokenizer=args.tokenizer, run=args.run)
    print(format_report(result))
    print(f"\nwrote {out}/: {', '.join(names)}")
    return 0


def _backtest_options(args) -> dict:
    return {"strategy": args.strategy, "cost_bps": args.cost_bps, "slippage_bps": args.slippage_bps,
            "horizon": args.horizon, "num_samples": args.num_samples, "seed": args.seed, "rebalance": args.rebalance,
            "long_above": args.long_above, "short_below": args.short_below, "long_only": args.long_only,
            "kelly_fraction": args.kelly_fraction, "momentum_lookback": args.momentum_lookback,
            "allow_overlap": args.allow_overlap}


def cmd_backtest(args) -> int:
    from ..backtest import run_backtest
    from ..rundir import RunDir
    from .text import headline, summary_table

    if args.model is not None:
        return _backtest_model(args)
    _refuse_zero_shot_flags(args, "a run is backtested after its own val_end with its own temperature")
    with _sampling_on(args):
        if args.runs is None:
            metrics = run_backtest(args.run, data=_data_arg(args), out=args.out, **_backtest_options(args))
        else:
            pool, frame = _pooled_runs(args, "backtest")
            metrics = run_backtest(pool.run, forecaster=pool, data=frame, out=args.out, **_backtest_options(args))
    if metrics is None:  # a process of a torchrun launch other than rank 0: rank 0 wrote and reports
        return 0
    if args.out is None:  # the run's report shows its own backtest
        from ..evaluate.report import refresh_report

        refresh_report(args.run)
    print(headline(metrics))
    print(summary_table(metrics))
    _overlap_line(metrics)
    print(f"wrote {Path(args.out) if args.out else RunDir(args.run).backtest}")
    return 0


def _backtest_model(args) -> int:
    from ..backtest import backtest_model
    from ..data import load_prices
    from .text import headline, summary_table

    if args.data is None or args.out is None:
        raise ConfigError("backtest --model needs --data PATH (the series to trade) and --out DIR")
    data = args.data if args.date_format is None else load_prices(args.data, date_format=args.date_format)
    with _sampling_on(args):
        metrics = backtest_model(args.model, data, args.out, train_end=args.train_end, val_end=args.val_end,
                                 calibrate=not args.no_calibrate, **_backtest_options(args))
    print(_zero_shot_line(metrics))
    print(headline(metrics))
    print(summary_table(metrics))
    _overlap_line(metrics)
    print(f"wrote {Path(args.out)}")
    return 0


def _overlap_line(metrics: dict) -> None:
    overlapping = metrics["settings"].get("overlapping_decisions")
    if overlapping:
        print(f"flagged: {overlapping} of {metrics['settings']['n_decisions']} decisions trade bars at or before "
              "the model's cutoff, bars it was trained or selected on (--allow-overlap): not an out-of-sample result")


def cmd_pipeline(args) -> int:
    from ..pipeline import PipelineSettings, run_pipeline
    from .text import pipeline_headline

    settings = PipelineSettings(
        preset=args.preset, config=args.config, overrides=list(args.set or []), train_end=args.train_end,
        val_end=args.val_end, max_steps=args.max_steps, tokenizer_kind=args.tokenizer_kind,
        patch_len=args.patch_len, codebook_size=args.codebook_size, scaling=args.scaling,
        halflife=args.halflife, decode=args.decode, seasonal=_on_off(args.seasonal), horizon=args.horizon,
        num_samples=args.num_samples, cost_bps=args.cost_bps, seed=args.seed, ablation=args.ablation,
        force=args.force, date_format=args.date_format, init=args.init, ensemble=args.ensemble,
        calibration_max_origins=args.calibration_max_origins)
    with _sampling_on(args):  # the sampling stages; training follows train.device / train.dtype
        result = run_pipeline(args.data, args.out, settings)
    if result is None:  # a process of a torchrun launch other than rank 0
        return 0
    print(pipeline_headline(result.evaluation, result.backtest, result.run / "eval" / "report.html"))
    return 0


def cmd_skill(args) -> int:
    from ..pipeline import PipelineSettings
    from ..skill import run_skill

    if args.model is not None:
        for flag, value in (("--preset", args.preset), ("--set", args.set), ("--max-steps", args.max_steps)):
            if value is not None:
                raise ConfigError(f"{flag} shapes the training of a model; skill --model runs zero-shot (no "
                                  "training): drop it, or fine-tune with --init")
    elif args.no_calibrate:
        raise ConfigError("--no-calibrate goes with --model (a trained run chooses its temperature on its own "
                          "validation split)")
    settings = PipelineSettings(preset=args.preset or "tiny", overrides=list(args.set or []),
                                max_steps=args.max_steps, num_samples=args.num_samples, horizon=args.horizon,
                                seed=args.seed, force=args.force, init=args.init)
    with _sampling_on(args):
        result = run_skill(args.out, suite=args.suite, data=args.data or (), settings=settings, model=args.model,
                           calibrate=not args.no_calibrate)
    if result is None:  # a process of a torchrun launch other than rank 0
        return 0
    print(result.to_markdown())
    print(f"wrote {Path(args.out) / 'skill.md'} and skill.json")
    return 0


def cmd_pretrain(args) -> int:
    from ..pretrain import pretrain

    sources = args.sources  # load_corpus splits "a,b" and refuses an empty selection
    record = pretrain(args.corpus, args.out, preset=args.preset, train_end=args.train_end, val_end=args.val_end,
                      max_steps=args.max_steps, overrides=list(args.set or []), seed=args.seed, sources=sources)
    print(f"pretrained on {record['n_symbols']} series, {record['n_bars']:,} bars ({record['first'][:10]} .. "
          f"{record['last'][:10]}; train to {record['train_end'][:10]}, data cutoff {record['data_cutoff'][:10]})")
    print(f"forecaster folder: {Path(args.out) / 'forecaster'}")
    return 0


def cmd_bench(args) -> int:
    from ..bench import run_bench

    for line in run_bench(quick=args.quick, only=args.only):
        print(line, flush=True)
    return 0


