"""Forecast origins spread over the processes of
`torchrun --nproc-per-node=N -m pricegpt -- evaluate|calibrate|backtest ...`, on one machine or several (launched
as training is: README, "Training on GPUs"; the `--` keeps torchrun's own parser from reading pricegpt's `--run` as
its `--run-path`).

    with sharding(forecaster) as shards:          # joins the process group when torchrun started this process
        cum = shards.sample_cumulative(forecaster, contexts, symbols, horizon, num_samples, seed=seed, ...)
    if not shards.is_main:
        return None                               # rank 0 scores and writes; the other processes are done

How a stage uses it. Every process runs the stage's set-up: reading the data, choosing the origins, every check.
They are deterministic, so a mistake fails on every process alike, with its `error:` line, before any process group
exists: nothing is left waiting. Then each process samples its share of the origins, rank r of N the origins r,
r + N, r + 2N, ... (strided, so that every share mixes symbols and context lengths alike and takes about as long),
and rank 0 gathers the shares back into the origins' order. Everything after sampling (scores, baselines,
significance, files, the report) runs on rank 0 alone; the other processes return None and exit 0 quietly.

Why the files are those of one process, byte for byte: each origin is sampled from its own seed (forecast.
origin_seed: from the seed, its symbol and its context's last timestamp), and in fp32 its paths do not depend on
which other origins share an engine call (the Forecaster's "Seeds"). Which process samples an origin, and next to
which others, changes nothing. (Under bf16 autocast paths depend on the batching, sharded or not.)

The process group lives only while sampling: joined when `sharding` is entered (after the set-up), with a timeout
(DIST_TIMEOUT) on joining and on every gather, and left (barrier, then destroyed) as soon as the last share is
gathered, so that rank 0's scoring never keeps the others waiting. After an error inside the block a process leaves
at once, without a barrier: a peer may be waiting in a gather this process will never join, and torchrun stops the
other processes when one fails. A process group that exists already (a caller's) is used and left open.
NCCL when the forecaster's model is on CUDA (each process on its own GPU, cuda:LOCAL_RANK, as in training), gloo
otherwise. Without torchrun's environment variables it is a world of one: no group, nothing gathered.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch

from ..errors import ConfigError
from ..train.dist import DistInfo, dist_env, gather_to_main, init, is_initialized, leave, shutdown

# Joining the group and each gather wait at most this long for the other processes: a gather waits for the slowest
# share (shares differ by at most one origin), so only a process that died or hangs ever reaches it.
DIST_TIMEOUT = timedelta(minutes=30)
# sample_cumulative's arguments with one entry per origin: split over the processes like the contexts
PER_ORIGIN = ("context_ends", "context_times", "target_times")


@dataclass(frozen=True)
class Shards:
    """This process's share of the forecast origins: rank r of N samples the origins r, r + N, r + 2N, ..."""

    info: DistInfo

    @property
    def is_main(self) -> bool:
        """Whether this process gathers the paths, scores them and writes the files (rank 0; always on one)."""
        return self.info.is_main

    def mine(self, n_origins: int) -> np.ndarray:
        """The positions of this process's origins among `n_origins`."""
        return np.arange(self.info.rank, n_origins, self.info.world_size)

    def sample_cumulative(self, forecaster, contexts, symbols, horizon: int, num_samples: int,
                          **options) -> np.ndarray | None:
        """`forecaster.sample_cumulative(contexts, symbols, horizon, num_samples, **options)` of every origin,
        (origins, num_samples, horizon), each process sampling its share: the whole array on the main process,
        None on the others. options: the forecaster's (seed, temperature, context_ends, context_times,
        target_times, progress, label); those with one entry per origin are split like the contexts. A progress
        bar, when asked for, shows the main process's share only. Collective: every process calls it with the
        same origins, at the same point."""
        if not self.info.enabled:
            return forecaster.sample_cumulative(contexts, symbols, horizon, num_samples, **options)
        contexts, symbols = list(contexts), [str(s) for s in symbols]
        assert len(contexts) == len(symbols), f"{len(contexts)} contexts but {len(symbols)} symbols"
        mine = self.mine(len(contexts))
        for key in PER_ORIGIN:
            if options.get(key) is not None:
                options[key] = _take(options[key], mine)
        if not self.is_main:
            options["progress"] = False
        if len(mine):
            share = np.asarray(forecaster.sample_cumulative([contexts[i] for i in mine], [symbols[i] for i in mine],
                                                            horizon, num_samples, **options))
        else:  # fewer origins than processes
            share = np.empty((0, int(num_samples), int(horizon)))
        shares = gather_to_main(share, self.info)
        if shares is None:
            return None
        out = np.empty((len(contexts), *share.shape[1:]), dtype=np.result_type(*shares))
        for rank, part in enumerate(shares):
            out[rank::self.info.world_size] = part
        return out


def _take(values, positions: np.ndarray):
    """The entries of a per-origin argument (an array or a list) at `positions`."""
    if isinstance(values, np.ndarray):
        return values[positions]
    values = list(values)
    return [values[i] for i in positions]


@contextlib.contextmanager
def sharding(forecaster=None) -> Iterator[Shards]:
    """The process group of a torchrun launch for the block's sampling (module docstring), and this process's
    Shards; a world of one (no group) without torchrun. forecaster: its model's device picks the backend."""
    info = dist_env()
    owns = info.enabled and not is_initialized()
    if owns:
        init(info, _device(forecaster, info), timeout=DIST_TIMEOUT)
    try:
        yield Shards(info)
    except BaseException:
        if owns:
            leave()
        raise
    if owns:
        shutdown()


def _device(forecaster, info: DistInfo) -> torch.device:
    """The device the forecaster's model samples on (CPU when it has none): the process group's."""
    model = getattr(forecaster, "model", None)
    parameter = next(model.parameters(), None) if isinstance(model, torch.nn.Module) else None
    device = torch.device("cpu") if parameter is None else parameter.device
    if device.type == "cuda" and device.index != info.local_rank:
        raise ConfigError(f"process {info.rank} of this torchrun launch has its model on {device}, but each "
                          f"process forecasts on its own GPU, cuda:LOCAL_RANK (here cuda:{info.local_rank}); "
                          "give the device without an index (cuda or auto)")
    return device


__all__ = ["DIST_TIMEOUT", "Shards", "sharding"]
