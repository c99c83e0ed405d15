"""Ensembles: several trained runs (or pretrained folders) forecasting as one.

    ens = EnsembleForecaster.from_runs(["runs/a", "runs/b", "runs/c"])
    ens.sample_cumulative(contexts, symbols, H, 256, seed=0, ...)     # 256 paths pooled from the three models

Paths are pooled equally: of `num_samples` paths per origin, member k draws n_k (num_samples split as evenly as
possible, the first members taking the remainder) with its own seed derived from (seed, k), so the pooled
forecast is reproducible and does not depend on batching, as each member's is. Every member samples at the
ENSEMBLE's temperature: calibrate it on the pooled forecaster (`calibrate_temperature(ens, ...)`, which stores it in
`ens.run.calibration`, in memory unless the ensemble has a directory of its own). Evaluation, backtests and
forecasts take an ensemble wherever they take a Forecaster; the token metrics are the first member's (each member
has its own tokenizer, so there is no pooled token stream). The members must read the same features (so their
contexts are the same arrays) and should share their cutoffs (checked: the leakage rule uses the first member's).

`pipeline --ensemble K` trains K seeds into one run directory: the run's own model is member 1, members 2..K live
in RUN/members/member-k/, RUN/ensemble.json lists them and RUN/calibration.json is the pool's temperature.
`Forecaster.from_run(RUN)` (and every command given `--run RUN`) then forecasts with the pool (`of_run`).
"""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import torch

from ..config import derive_seed, show
from ..data.windows import run_cutoffs
from ..errors import CheckpointError, ConfigError
from ..rundir import RunDir
from ..runs import Run, load_run
from .forecaster import Forecaster
from .sampling import check_sampling

log = logging.getLogger("pricegpt")


class EnsembleForecaster(Forecaster):
    """Members' paths pooled equally at one temperature (module docstring)."""

    def __init__(self, members: list[Forecaster], directory: str | os.PathLike | None = None):
        if not isinstance(members, (list, tuple)) or not all(isinstance(m, Forecaster) for m in members):
            raise ConfigError(f"an ensemble's members must be a list of Forecasters, got {show(members)}; pool "
                              "run directories with EnsembleForecaster.from_runs")
        members = list(members)
        if len(members) < 2:
            raise ConfigError(f"an ensemble needs at least 2 members, got {len(members)}")
        first = members[0]
        features = {m.tokenizer.config.features for m in members}
        if len(features) != 1:
            raise ConfigError(f"ensemble members read different features ({', '.join(sorted(features))}); pool "
                              "runs whose tokenizers use the same features")
        if len({m.uses_side for m in members}) != 1:
            raise ConfigError("ensemble members differ in side channels (model.side): pool runs that all read them "
                              "or none")
        cutoffs = {run_cutoffs(m.run) for m in members}
        if len(cutoffs) != 1:
            raise ConfigError("ensemble members were trained with different train/validation cutoffs; pool runs "
                              "made on the same splits (the leakage rule needs one set of cutoffs)")
        run = Run(dir=first.run.dir if directory is None else directory, model=first.model,
                  tokenizer=first.tokenizer, meta=dict(first.run.meta), calibration={},
                  pretrained=directory is None)
        super().__init__(run, autocast=first.autocast)
        self.members = members

    @classmethod
    def from_runs(cls, sources, directory: str | os.PathLike | None = None) -> EnsembleForecaster:
        """Members from run directories or forecaster folders (built-in names too). A run that is itself an
        ensemble (`pipeline --ensemble K`) contributes its K models, so that every model weighs the same."""
        members = []
        for source in sources:
            path = str(source)
            if os.path.exists(path) and not os.path.isdir(path):
                raise ConfigError(f"{path} is a file, not a run; pool trained run directories (or forecaster "
                                  "folders)")
            if not os.path.exists(path) and "/" in path.replace("\\", "/"):  # a built-in model's name has none
                raise ConfigError(f"{path} not found; pool trained run directories (or forecaster folders)")
            member = (Forecaster.from_run(path) if os.path.isfile(os.path.join(path, "run.json"))
                      or os.path.isdir(os.path.join(path, "checkpoints")) else Forecaster.from_pretrained(path))
            members += member.members if isinstance(member, EnsembleForecaster) else [member]
        known = [frozenset(m.tokenizer.symbol_scales) for m in members]
        if len(set(known)) > 1:
            log.warning("the pooled runs were trained on different symbols (%s); a symbol a member never saw gets "
                        "its global scale", "; ".join(f"{m.run.dir}: {len(k)}" for m, k in zip(members, known)))
        return cls(members, directory)

    @classmethod
    def of_run(cls, run: Run, autocast: torch.dtype | None = None) -> EnsembleForecaster:
        """The pool of a `pipeline --ensemble K` run: `run` (loaded) and the members its ensemble.json lists, on
        the run's device, at the temperature of the run's calibration.json (calibrated on the pool)."""
        path = RunDir(run.dir).ensemble
        damaged = f"{path} is damaged; rerun the pipeline that wrote it (it rewrites the file)"
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError, RecursionError):
            raise CheckpointError(damaged) from None
        names = record.get("members") if isinstance(record, dict) else None
        if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
            raise CheckpointError(damaged)
        device = next(run.model.parameters()).device
        members, seen = [Forecaster(run, autocast=autocast)], {run.dir.resolve()}
        for name in names:
            member_dir = (run.dir / name).resolve()
            if run.dir.resolve() not in member_dir.parents:
                raise CheckpointError(f"{path} names {name!r}, outside the run directory; {damaged}")
            if member_dir in seen:
                raise CheckpointError(f"{path} names {name!r} twice; {damaged}")
            seen.add(member_dir)
            if not (member_dir / "model").is_dir():
                raise CheckpointError(f"{path} names {name!r}, which holds no trained model; rerun the pipeline "
                                      "that wrote it (the same command finishes its members)")
            members.append(Forecaster(load_run(member_dir, device=device, need_tokenizer=True), autocast=autocast))
        ensemble = cls(members, directory=run.dir)
        ensemble.run.calibration = dict(run.calibration)
        return ensemble

    @property
    def patch_len(self) -> int:
        return max(m.patch_len for m in self.members)

    @property
    def uses_times(self) -> bool:
        return any(m.uses_times for m in self.members)

    @property
    def temperature(self) -> float:
        return float(self.run.calibration.get("temperature", 1.0))

    @property
    def has_vol_head(self) -> bool:
        return all(m.has_vol_head for m in self.members)

    def variance_of_contexts(self, contexts, symbols, horizon: int, *, context_times=None) -> np.ndarray:
        """The members' volatility heads' variance forecasts, averaged with equal weights."""
        if not self.has_vol_head:
            raise ConfigError("not every ensemble member has a volatility head (model.vol_bars)")
        return np.mean([m.variance_of_contexts(contexts, symbols, horizon, context_times=context_times)
                        for m in self.members], axis=0)

    def sample_returns(self, contexts, symbols, horizon: int, num_samples: int, *, seed: int = 0,
                       temperature: float | None = None, context_ends=None, progress: bool | None = None,
                       label: str = "sampling", context_times=None, target_times=None) -> np.ndarray:
        """(origins, num_samples, horizon): member k's n_k paths, in member order."""
        horizon, num_samples, seed = check_sampling(horizon, num_samples, seed)
        if num_samples < len(self.members):
            raise ConfigError(f"--num-samples {num_samples} is fewer than the ensemble's {len(self.members)} "
                              "members; each member needs at least one path")
        temperature = self.temperature if temperature is None else temperature
        sizes = [len(part) for part in np.array_split(np.arange(num_samples), len(self.members))]
        contexts = list(contexts)
        parts = [member.sample_returns(contexts, symbols, horizon, n, seed=derive_seed(seed, k) % 2**32,
                                       temperature=temperature, context_ends=context_ends, progress=progress,
                                       label=f"{label} (member {k + 1}/{len(self.members)})",
                                       context_times=context_times, target_times=target_times)
                 for k, (member, n) in enumerate(zip(self.members, sizes))]
        return np.concatenate(parts, axis=1)
