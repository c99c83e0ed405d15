"""The embedded real datasets (`sample:NAME`), shipped as small compressed CSVs inside the package.

Provenance and licences are in `samples/README.md`; `scripts/make_samples.py` regenerates the files.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from ..errors import DataError

SAMPLES: dict[str, str] = {
    "stocks-daily": "AAPL, IBM, MSFT, GOOG daily OHLCV 2000-03..2013-03, adjusted (Quandl WIKI, public domain)",
    "eurusd-hourly": "EUR/USD hourly OHLC 2017 (gym-anytrading, MIT)",
}


def sample_path(name: str) -> Path:
    """Path of the embedded dataset `name`; an unknown name is a DataError listing the valid ones."""
    if name not in SAMPLES:
        raise DataError(f"unknown sample '{name}'; available: {', '.join('sample:' + n for n in SAMPLES)}")
    path = Path(str(resources.files("pricegpt.data") / "samples" / f"{name}.csv.gz"))
    if not path.exists():
        raise DataError(f"sample '{name}' is missing from the installed package ({path}); reinstall pricegpt")
    return path
