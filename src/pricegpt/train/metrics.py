"""What a user watches during training: RUN/metrics.csv, RUN/training_curve.png and, optionally, TensorBoard.

metrics.csv has one row per logged step (`train.log_every`), with val_loss filled in at evaluation steps. It is
kept in memory and rewritten atomically at every evaluation and checkpoint, so it is never half-written; a
resumed run first drops the rows after its checkpoint's step, so no step appears twice.
"""

from __future__ import annotations

import csv
import io
import math
import time
from pathlib import Path

from ..errors import CheckpointError, ConfigError
from ..fileio import atomic_path, write_text

COLUMNS = ("step", "lr", "train_loss", "val_loss", "tok_per_s", "mfu")
METRICS_FILE = "metrics.csv"
CURVE_FILE = "training_curve.png"
PLOT_EVERY_S = 30.0  # redrawing the PNG costs ~0.1 s: at most this often during training, always at the end


class MetricsLog:
    def __init__(self, run_dir: Path, *, vocab_size: int | None = None, tensorboard: bool = False):
        self.run_dir = Path(run_dir)
        self.vocab_size = vocab_size
        self.rows: list[dict] = []
        if tensorboard:
            _check_tensorboard()
        self._tensorboard = tensorboard
        self._writer = None  # opened at the first value: building a trainer writes nothing
        self._plotted_at: float | None = None

    def resume(self, up_to_step: int) -> None:
        """Load the rows already on disk up to and including `up_to_step` (the checkpoint being resumed).

        A damaged metrics.csv is a CheckpointError naming it (rows that merely do not parse are skipped)."""
        path = self.run_dir / METRICS_FILE
        if not path.is_file():
            return
        rows = []
        try:
            with open(path, newline="", encoding="utf-8") as fh:
                for row in csv.DictReader(fh):
                    try:
                        step = int(row["step"])
                    except (KeyError, TypeError, ValueError):
                        continue
                    if step <= up_to_step:
                        rows.append({k: _number(row.get(k)) for k in COLUMNS} | {"step": step})
        except (UnicodeDecodeError, csv.Error, OSError) as err:
            what = f"byte {err.start} is not UTF-8 text" if isinstance(err, UnicodeDecodeError) else str(err)
            raise CheckpointError(f"{path} is damaged ({what}); move it away and rerun with --resume (training "
                                  f"continues; the new {METRICS_FILE} starts after step {up_to_step})") from err
        self.rows = rows

    def log(self, step: int, **values) -> None:
        """Record values for `step` (merged into that step's row when it already has one)."""
        values = {k: v for k, v in values.items() if v is not None}
        if self.rows and self.rows[-1]["step"] == step:
            self.rows[-1].update(values)
        else:
            self.rows.append({"step": step, **values})
        if self._tensorboard:
            if self._writer is None:
                self._writer = _tensorboard_writer(self.run_dir)
            for key, value in values.items():
                self._writer.add_scalar(key, value, step)

    def flush(self, plot: bool | None = None) -> None:
        """Rewrite metrics.csv; redraw the curve when `plot`, or (None) when the last drawing is old enough."""
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for row in self.rows:
            writer.writerow({k: _format(row.get(k)) for k in COLUMNS})
        write_text(self.run_dir / METRICS_FILE, buffer.getvalue())
        if plot is None:
            plot = self._plotted_at is None or time.monotonic() - self._plotted_at >= PLOT_EVERY_S
        if plot:
            self.plot()
            self._plotted_at = time.monotonic()
        if self._writer is not None:
            self._writer.flush()

    def plot(self) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        train = [(r["step"], r["train_loss"]) for r in self.rows if r.get("train_loss") is not None]
        val = [(r["step"], r["val_loss"]) for r in self.rows if r.get("val_loss") is not None]
        fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
        if train:
            ax.plot(*zip(*train), label="train", color="tab:blue", linewidth=1)
        if val:
            ax.plot(*zip(*val), label="validation", color="tab:orange", marker="o", markersize=3)
        if self.vocab_size:
            ax.axhline(math.log(self.vocab_size), color="grey", linestyle="--", linewidth=0.8,
                       label=f"uniform, ln {self.vocab_size}")
        ax.set_xlabel("step")
        ax.set_ylabel("cross-entropy (nats/token)")
        ax.set_title("training curve")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        with atomic_path(self.run_dir / CURVE_FILE) as tmp:
            fig.savefig(tmp, format="png")
        plt.close(fig)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _check_tensorboard() -> None:
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        raise ConfigError("train.tensorboard=true needs TensorBoard: pip install 'pricegpt[tensorboard]' "
                          "(or set train.tensorboard=false)") from None


def _tensorboard_writer(run_dir: Path):
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(run_dir / "tensorboard"))


def _format(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _number(text):
    if text is None or text == "":
        return None
    try:
        return float(text)
    except ValueError:
        return None
