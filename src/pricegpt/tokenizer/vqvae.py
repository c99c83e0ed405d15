"""The VQ-VAE tokenizer (the default): patch -> MLP encoder -> nearest of K codes -> MLP decoder.

Training (on scaled train patches only, single-threaded and seeded so the result is bit-exact):
  * Adam on recon MSE (all features of the patch) + beta * commitment ||z - sg(e)||^2, straight-through
    gradients from the decoder to the encoder;
  * the codebook is not trained by gradients but by EMA cluster statistics (decay `ema_decay`, Laplace
    smoothing), initialised by k-means(++) on the initial encoder's outputs;
  * every `restart_every` steps, codes picked fewer than `dead_code_frac` times their fair share
    (batch_size * restart_every / K) since the last check are
    re-seeded from the current batch's encoder outputs, drawn (seeded) in proportion to their quantisation error,
    so the codebook spends dead codes where the reconstruction is worst. Restarts stop after `restart_until` of
    the steps so the last codes can settle.
Code usage is logged while fitting (a tqdm bar on a terminal, log lines otherwise).

Encoding is a batched nearest-neighbour search: encoder matmuls, then argmin of ||e||^2 - 2 z.e over the codebook,
in fixed-size chunks (the last one zero-padded) so every patch goes through the same kernels whatever the batch:
a patch's token never depends on what else is encoded with it. ReLU keeps the elementwise steps exact too.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..config import check_int, check_number
from .base import Tokenizer, TokenizerConfig, register

log = logging.getLogger("pricegpt")

ENCODE_CHUNK = 4096  # patches per encoder call; fixed so that results never depend on the batch


@dataclass
class VQVAEConfig(TokenizerConfig):
    kind: str = "vqvae"
    hidden_dim: int = 64
    latent_dim: int = 16
    steps: int = 2000
    batch_size: int = 512
    lr: float = 2e-3
    beta: float = 0.25  # commitment weight
    sum_weight: float = 1.0  # extra loss weight on the error of the patch's summed close return
    ema_decay: float = 0.99
    restart_every: int = 50
    dead_code_frac: float = 0.1  # of a code's fair share of picks between two restart checks
    restart_until: float = 0.8  # fraction of the steps after which codes are no longer restarted
    kmeans_iters: int = 20
    kmeans_sample: int = 20000

    def validate(self) -> None:
        super().validate()
        for name, hi in (("hidden_dim", 8192), ("latent_dim", 4096), ("steps", 10**7), ("batch_size", 2**20),
                         ("restart_every", 10**7), ("kmeans_iters", 10**4), ("kmeans_sample", 10**8)):
            check_int(getattr(self, name), f"vqvae option {name}", 1, hi)
        check_number(self.lr, "vqvae option lr", 0, 10, lo_open=True)
        for name in ("beta", "sum_weight"):
            check_number(getattr(self, name), f"vqvae option {name}", 0, 100)
        check_number(self.ema_decay, "vqvae option ema_decay", 0, 1, hi_open=True)
        for name in ("dead_code_frac", "restart_until"):
            check_number(getattr(self, name), f"vqvae option {name}", 0, 1)


class VQVAE(nn.Module):
    """Encoder (patch_len * n_features -> latent_dim), codebook (K, latent_dim), decoder (-> patch_len * n_features).
    Input and output are flattened scaled patches (batch, patch_len * n_features)."""

    def __init__(self, in_dim: int, hidden_dim: int, latent_dim: int, codebook_size: int):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, hidden_dim),
                                     nn.ReLU(), nn.Linear(hidden_dim, latent_dim))
        self.decoder = nn.Sequential(nn.Linear(latent_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, hidden_dim),
                                     nn.ReLU(), nn.Linear(hidden_dim, in_dim))
        self.register_buffer("codebook", torch.zeros(codebook_size, latent_dim))

    def scores(self, z: torch.Tensor) -> torch.Tensor:
        """Squared distance to every code less ||z||^2 (the same argmin): (batch, latent_dim) -> (batch, K)."""
        return torch.addmm((self.codebook * self.codebook).sum(1), z, self.codebook.t(), beta=1.0, alpha=-2.0)

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """Index of the nearest code for each latent (batch, latent_dim) -> (batch,); ties go to the lower id."""
        return self.scores(z).argmin(dim=1)


@contextlib.contextmanager
def single_thread():
    """Bit-exact, order-fixed float arithmetic while fitting (and no contention on shared cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def kmeans(points: torch.Tensor, k: int, iters: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ seeding then Lloyd iterations; an empty cluster keeps its centre. (k, dim)."""
    n = len(points)
    centres = torch.empty(k, points.shape[1])
    centres[0] = points[torch.randint(n, (1,), generator=generator)]
    d2 = ((points - centres[0]) ** 2).sum(1)
    for j in range(1, k):
        if float(d2.sum()) > 0:
            pick = torch.multinomial(d2 / d2.sum(), 1, generator=generator)
        else:
            pick = torch.randint(n, (1,), generator=generator)
        centres[j] = points[pick]
        d2 = torch.minimum(d2, ((points - centres[j]) ** 2).sum(1))
    for _ in range(iters):
        assign = torch.cdist(points, centres).argmin(1)
        counts = torch.bincount(assign, minlength=k).to(points.dtype)
        sums = torch.zeros_like(centres).index_add_(0, assign, points)
        filled = counts > 0
        centres[filled] = sums[filled] / counts[filled, None]
    return centres


@register
class VQVAETokenizer(Tokenizer):
    kind = "vqvae"
    config_class = VQVAEConfig

    def __init__(self, config: VQVAEConfig | None = None, **overrides):
        super().__init__(config, **overrides)
        self.model: VQVAE | None = None  # built by fit or from_pretrained
        self.history: list[dict] = []  # usage and loss logged while fitting

    def _new_model(self) -> VQVAE:
        c = self.config
        return VQVAE(c.patch_len * self.n_features, c.hidden_dim, c.latent_dim, c.codebook_size)

    # ------------------------------------------------------------------------------------------- fitting
    def _fit_scaled(self, x_train: np.ndarray, *, progress: bool | None) -> None:
        with single_thread():
            self._train(torch.tensor(x_train.reshape(len(x_train), -1), dtype=torch.float32), progress)
        self._refresh_decode_table()

    def _train(self, x: torch.Tensor, progress: bool | None) -> None:
        c = self.config
        K = c.codebook_size
        with torch.random.fork_rng(devices=[]):  # seeded initialisation without touching the caller's RNG
            torch.manual_seed(c.seed)
            self.model = model = self._new_model()
        generator = torch.Generator().manual_seed(c.seed)
        model.train()
        with torch.no_grad():
            sample = x[torch.randperm(len(x), generator=generator)[:c.kmeans_sample]]
            model.codebook.copy_(kmeans(model.encoder(sample), K, c.kmeans_iters, generator))
            # EMA statistics start from the k-means clusters, so unpopular codes are not shielded at the start
            share = torch.bincount(model.nearest(model.encoder(sample)), minlength=K).float() / len(sample)
        ema_count = share * c.batch_size
        ema_sum = model.codebook.clone() * ema_count[:, None]
        optimizer = torch.optim.Adam(list(model.encoder.parameters()) + list(model.decoder.parameters()), lr=c.lr)
        restart_until = int(c.restart_until * c.steps)
        window_usage = torch.zeros(K, dtype=torch.long)  # picks since the last log line
        since_check = torch.zeros(K, dtype=torch.long)  # picks since the last restart check
        restarted = 0  # codes re-seeded since the last log line
        log_every = max(1, c.steps // 10)
        bar = _progress_bar(c.steps, progress)
        start = time.perf_counter()
        self.history = []
        for step in range(1, c.steps + 1):
            lr = c.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - 1) / c.steps)))
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch = x[torch.randint(len(x), (c.batch_size,), generator=generator)]
            z = model.encoder(batch)
            with torch.no_grad():
                codes = model.nearest(z)
                quantised = model.codebook[codes]
            commitment = F.mse_loss(z, quantised)
            decoded = model.decoder(z + (quantised - z).detach())
            recon = F.mse_loss(decoded, batch)
            loss = recon + c.beta * commitment
            if c.sum_weight:
                close = slice(0, None, self.n_features)
                loss = loss + c.sum_weight * F.mse_loss(decoded[:, close].sum(1), batch[:, close].sum(1)) / c.patch_len
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                z = z.detach()
                counts = self._ema_update(codes, z, ema_count, ema_sum)
                window_usage += counts
                since_check += counts
                if step % c.restart_every == 0:
                    if step <= restart_until:
                        restarted += self._restart_dead_codes(z, since_check, ema_count, ema_sum, generator)
                    since_check.zero_()
            if step % log_every == 0 or step == c.steps:
                used = int((window_usage > 0).sum())
                p = ema_count / ema_count.sum()
                perplexity = float(torch.exp(-(p * torch.log(p.clamp_min(1e-12))).sum()))
                record = {"step": step, "recon": recon.item(), "commitment": commitment.item(), "codes_used": used,
                          "perplexity": perplexity, "restarted": restarted}
                self.history.append(record)
                window_usage.zero_()
                restarted = 0
                if bar is None:
                    log.info("vqvae step %d/%d: recon %.4f, codes used %d/%d, perplexity %.1f (%.1fs)", step,
                             c.steps, record["recon"], used, K, perplexity, time.perf_counter() - start)
                else:
                    bar.set_postfix(recon=f"{record['recon']:.3f}", used=f"{used}/{K}", ppl=f"{perplexity:.0f}")
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        model.eval()

    def _ema_update(self, codes: torch.Tensor, z: torch.Tensor, ema_count: torch.Tensor,
                    ema_sum: torch.Tensor) -> torch.Tensor:
        """Move each code to the EMA mean of the latents assigned to it (Laplace-smoothed); returns the picks."""
        c, K = self.config, self.config.codebook_size
        counts = torch.bincount(codes, minlength=K)
        ema_count.mul_(c.ema_decay).add_(counts.to(torch.float32), alpha=1 - c.ema_decay)
        ema_sum.mul_(c.ema_decay).add_(torch.zeros_like(ema_sum).index_add_(0, codes, z), alpha=1 - c.ema_decay)
        total = ema_count.sum()
        smoothed = (ema_count + 1e-5) / (total + K * 1e-5) * total
        self.model.codebook.copy_(ema_sum / smoothed[:, None])
        return counts

    def _restart_dead_codes(self, z: torch.Tensor, picks_since_check: torch.Tensor, ema_count: torch.Tensor,
                            ema_sum: torch.Tensor, generator: torch.Generator) -> int:
        c, model = self.config, self.model
        fair_share = c.batch_size * c.restart_every / c.codebook_size
        dead = torch.nonzero(picks_since_check < c.dead_code_frac * fair_share).flatten()
        if len(dead) == 0:
            return 0
        error = ((z - model.codebook[model.nearest(z)]) ** 2).sum(1)
        weights = error + 1e-12
        take = min(len(dead), len(z))
        picks = torch.multinomial(weights / weights.sum(), take, replacement=False, generator=generator)
        dead = dead[:take]
        fresh = 1.0  # the weight of one pick: its first real assignments move the new code at once
        model.codebook[dead] = z[picks]
        ema_count[dead] = fresh
        ema_sum[dead] = z[picks] * fresh
        return take

    def _refresh_decode_table(self) -> None:
        with torch.no_grad():
            out = self.model.decoder(self.model.codebook).double().numpy()
        self.decode_table = out.reshape(self.vocab_size, self.patch_len, self.n_features)[:, :, 0].copy()

    # ------------------------------------------------------------------------------------------- encoding
    @torch.no_grad()
    def _encode_scaled(self, x: np.ndarray) -> np.ndarray:
        flat = x.reshape(len(x), -1)
        ids = np.empty(len(flat), dtype=np.int64)
        chunk = torch.zeros(ENCODE_CHUNK, flat.shape[1])
        view = chunk.numpy()
        with single_thread():  # small matmuls: one core is faster than two contending ones, and bit-stable
            for start in range(0, len(flat), ENCODE_CHUNK):
                part = flat[start:start + ENCODE_CHUNK]
                view[:len(part)] = part
                view[len(part):] = 0.0
                scores = self.model.scores(self.model.encoder(chunk)).numpy()
                ids[start:start + len(part)] = scores[:len(part)].argmin(1)  # numpy's argmin is SIMD, torch's not
        return ids

    # ------------------------------------------------------------------------------------------- files
    def _tensors(self) -> dict[str, torch.Tensor]:
        return dict(self.model.state_dict())

    def _load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        model = self._new_model()
        expected = model.state_dict()
        if set(tensors) != set(expected):
            raise ValueError(f"weights {sorted(tensors)} do not match a vqvae model {sorted(expected)}")
        for name, tensor in tensors.items():
            if tensor.shape != expected[name].shape or tensor.dtype != torch.float32:
                raise ValueError(f"tensor {name} has shape {tuple(tensor.shape)} {tensor.dtype}, expected "
                                 f"{tuple(expected[name].shape)} float32")
        model.load_state_dict(tensors)
        model.eval()
        self.model = model
        self._refresh_decode_table()


def _progress_bar(total: int, progress: bool | None):
    if progress is False or (progress is None and not sys.stderr.isatty()):
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="vqvae", unit="step", leave=False)


def benchmark_encode(n_bars: int = 10_000_000, *, tokenizer: VQVAETokenizer | None = None, from_frame: bool = False,
                     seed: int = 0) -> float:
    """Bars per second of the vqvae encoder + quantiser on one synthetic series of `n_bars` (Student-t returns).

    `from_frame=True` times `encode(frame)` instead, i.e. also the per-bar features and the patching. Without a
    `tokenizer`, a default one is fitted first on a short synthetic series (not timed)."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    if tokenizer is None:
        fit_bars = 20_000
        close = 100 * np.exp(np.cumsum(0.01 * rng.standard_t(4, fit_bars)))
        frame = pd.DataFrame({"timestamp": pd.date_range("2000-01-01", periods=fit_bars, freq="D", tz="UTC"),
                              "symbol": "SYN", "close": close})
        tokenizer = VQVAETokenizer().fit(frame, frame["timestamp"].iloc[-1], progress=False)
    returns = 0.01 * rng.standard_t(4, n_bars).astype(np.float64)
    if from_frame:
        frame = pd.DataFrame({"timestamp": pd.date_range("2000-01-01", periods=n_bars + 1, freq="min", tz="UTC"),
                              "symbol": "SYN", "close": 100 * np.exp(np.concatenate([[0.0], np.cumsum(returns)]))})
        start = time.perf_counter()
        tokenizer.encode(frame)
    else:
        patches = returns[: n_bars // tokenizer.patch_len * tokenizer.patch_len].reshape(-1, tokenizer.patch_len)
        start = time.perf_counter()
        tokenizer.encode_patches(patches, "SYN")
    return n_bars / (time.perf_counter() - start)
