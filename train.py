"""The seed's training command: `./run.sh train.py [--max-steps N] [--out RUN] [--preset P] [--set key=value]...`

A thin wrapper over `pricegpt train`. When data/all_tokens.txt is missing it is built first from the embedded
`sample:stocks-daily` prices: a VQ-VAE tokenizer fit on the train split (data/tokenizer/), a token store with
per-symbol splits (data/tokens/) and the flat token file data/all_tokens.txt.

Defaults (differences from `pricegpt train`): --tokens data/tokens when that store exists (windows stay inside
one symbol and the run records the tokenizer), else data/all_tokens.txt; --out runs/train-YYYYmmdd-HHMMSS;
--preset tiny, so that a CPU finishes in a couple of minutes (use --preset seed on a GPU).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

DATA_DIR = Path("data")
TOKENS_FILE = DATA_DIR / "all_tokens.txt"
SOURCE_FILE = DATA_DIR / "source.json"  # where data/ came from: the prices and the cutoffs
SOURCE = "sample:stocks-daily"


def build_seed_tokens(data_dir: Path = DATA_DIR, source: str = SOURCE) -> Path:
    """Fit a tokenizer on the train split of `source` and write data_dir/{tokenizer,tokens,all_tokens.txt}."""
    from pricegpt.data import load_prices, time_splits
    from pricegpt.fileio import atomic_path, mark_output, write_json
    from pricegpt.tokenizer import fit_to_dir, load_tokenizer, write_token_store

    print(f"building {data_dir / TOKENS_FILE.name} from {source} (fitting the tokenizer on the train split) ...",
          file=sys.stderr)
    frame = load_prices(source)
    splits = time_splits(frame)
    tokenizer_dir, store_dir = data_dir / "tokenizer", data_dir / "tokens"
    for made_by_seed in (tokenizer_dir / "report.json", store_dir / "index.json"):
        if made_by_seed.is_file():  # data/ written by a version before output markers: still ours to replace
            mark_output(made_by_seed.parent)
    fit_to_dir(frame, tokenizer_dir, train_end=splits.train_end, val_end=splits.val_end, overwrite=True)
    write_token_store(load_tokenizer(tokenizer_dir), frame, store_dir, splits, overwrite=True)
    write_json(data_dir / SOURCE_FILE.name, {"data": source, **splits.to_dict()})
    # written last: its presence says data/ is complete
    with atomic_path(data_dir / TOKENS_FILE.name) as tmp:
        shutil.copyfile(store_dir / TOKENS_FILE.name, tmp)
    return data_dir / TOKENS_FILE.name


def record_source(run: Path, data_dir: Path = DATA_DIR) -> None:
    """Give a run trained on data/ a run.json naming its prices and cutoffs, so `evaluate.py` needs no --data."""
    from pricegpt.fileio import write_json

    try:
        source = json.loads((data_dir / SOURCE_FILE.name).read_text())
    except (OSError, ValueError):
        return  # data/ made by hand or by an older version: evaluate then asks for --data
    if isinstance(source, dict) and isinstance(source.get("data"), str) and not (run / "run.json").exists():
        write_json(run / "run.json", {"data": source["data"], "train_end": source.get("train_end"),
                                      "val_end": source.get("val_end")})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", help="token store or .txt (default: data/tokens, else data/all_tokens.txt)")
    parser.add_argument("--out", help="run directory (default: runs/train-<timestamp>)")
    parser.add_argument("--preset", default="tiny", help="tiny | seed | large (default: tiny)")
    parser.add_argument("--config", help="YAML config file")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--max-steps", "--max_steps", dest="max_steps")
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args(argv)

    if args.resume and not args.out:
        parser.error("--resume needs --out RUN, the run directory to continue")

    from pricegpt.cli import main as pricegpt
    from pricegpt.errors import PriceGPTError

    tokens = args.tokens
    if tokens is None:
        if not TOKENS_FILE.is_file() or not SOURCE_FILE.is_file():
            try:
                build_seed_tokens()
            except PriceGPTError as err:  # the same one-line report as the CLI
                print(f"error: {err}", file=sys.stderr)
                return 2
        store = DATA_DIR / "tokens"
        tokens = str(store if (store / "index.json").is_file() else TOKENS_FILE)
    out = args.out or f"runs/train-{time.strftime('%Y%m%d-%H%M%S')}"
    cli_args = ["train", "--tokens", tokens, "--out", out]
    if not args.resume:
        cli_args += ["--preset", args.preset]
    if args.config:
        cli_args += ["--config", args.config]
    for setting in args.set:
        cli_args += ["--set", setting]
    if args.max_steps:
        cli_args += ["--max-steps", args.max_steps]
    if args.resume:
        cli_args.append("--resume")
    print(f"training on {tokens} into {out}" + ("" if args.resume else f" (preset {args.preset})"), file=sys.stderr)
    code = pricegpt(cli_args)
    if code == 0 and args.tokens is None:
        record_source(Path(out))
    return code


if __name__ == "__main__":
    raise SystemExit(main())
