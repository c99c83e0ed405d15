"""`python -m pricegpt ...` is the `pricegpt` command (and what `torchrun -m pricegpt train|evaluate|... ` runs)."""

import logging
import os

from .cli import main


def _quiet_unless_rank_0() -> None:
    """Under torchrun only rank 0 reports: every process runs the same set-up and checks, so the others' progress
    lines and warnings would repeat it N times. Errors still show on every process (their `error:` line). RANK is
    read directly (train.dist.dist_env would import torch before the command needs it)."""
    if int(os.environ.get("RANK", "0")) > 0:
        logging.getLogger("pricegpt").addFilter(lambda record: record.levelno >= logging.ERROR)


if __name__ == "__main__":
    _quiet_unless_rank_0()
    raise SystemExit(main())
