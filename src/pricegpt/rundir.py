"""Every path of a run directory, in one place: what a stage writes and what a later stage reads.

```
RUN/run.json  RUN/config.yaml  RUN/stages.json  RUN/timings.json  RUN/metrics.csv  RUN/calibration.json
RUN/tokenizer/  RUN/tokens/  RUN/model/  RUN/checkpoints/  RUN/eval/  RUN/backtest/  RUN/forecast/
RUN/ensemble.json  RUN/members/member-K/   (pipeline --ensemble K)
```
A `RunDir` is a plain value: it names paths and never touches the disk.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunDir:
    root: Path

    def __init__(self, root: str | os.PathLike):
        object.__setattr__(self, "root", Path(root))

    # settings and bookkeeping
    @property
    def settings(self) -> Path:
        """run.json: the pipeline's settings (data, cutoffs, preset, horizon), or the data a seed run came from."""
        return self.root / "run.json"

    @property
    def config(self) -> Path:
        """config.yaml: the resolved model and training configuration."""
        return self.root / "config.yaml"

    @property
    def stages(self) -> Path:
        """stages.json: the fingerprint of each finished pipeline stage's inputs."""
        return self.root / "stages.json"

    @property
    def timings(self) -> Path:
        return self.root / "timings.json"

    @property
    def metrics_csv(self) -> Path:
        """metrics.csv: the training curve (step, losses, learning rate, throughput)."""
        return self.root / "metrics.csv"

    @property
    def calibration(self) -> Path:
        """calibration.json: the sampling temperature chosen on the validation split."""
        return self.root / "calibration.json"

    # the stages' folders
    @property
    def tokenizer(self) -> Path:
        return self.root / "tokenizer"

    @property
    def tokens(self) -> Path:
        return self.root / "tokens"

    @property
    def model(self) -> Path:
        """the best model by validation loss: config.json, model.safetensors, meta.json."""
        return self.root / "model"

    @property
    def model_meta(self) -> Path:
        return self.model / "meta.json"

    @property
    def model_weights(self) -> Path:
        return self.model / "model.safetensors"

    @property
    def model_config(self) -> Path:
        return self.model / "config.json"

    @property
    def checkpoints(self) -> Path:
        """for --resume only; train.latest_checkpoint(root) finds the loadable one."""
        return self.root / "checkpoints"

    @property
    def eval(self) -> Path:
        return self.root / "eval"

    @property
    def eval_metrics(self) -> Path:
        return self.eval / "metrics.json"

    @property
    def report_html(self) -> Path:
        return self.eval / "report.html"

    @property
    def backtest(self) -> Path:
        return self.root / "backtest"

    @property
    def backtest_metrics(self) -> Path:
        return self.backtest / "metrics.json"

    @property
    def forecast(self) -> Path:
        """fan charts written by `pricegpt forecast` without --out."""
        return self.root / "forecast"

    @property
    def ensemble(self) -> Path:
        """ensemble.json (`pipeline --ensemble K`): the other members' folders; the run forecasts as their pool."""
        return self.root / "ensemble.json"

    def member(self, k: int) -> RunDir:
        """member k (2..K) of `pipeline --ensemble K`: trained on this run's tokens with the next training seed;
        the run itself is member 1."""
        return RunDir(self.root / "members" / f"member-{k}")

    def ablation(self, kind: str) -> RunDir:
        """the same pipeline with another tokenizer kind, scored on the same origins."""
        return RunDir(self.root / f"ablation-{kind}")

    def relative(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()
