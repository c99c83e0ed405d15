"""The GPT that reads market tokens: model, bookkeeping, save/load (GPTConfig and the presets live in config.py).

A nanochat-style decoder-only transformer:
- token embedding (no learned positions) followed by a parameter-free RMSNorm; with `calendar`, learned
  time-of-day and weekday embeddings of each token's last bar are added to it (zero at initialisation, so a fresh
  calendar model computes exactly what the model without them does); with `side`, learned embeddings of each
  token's side channels (its bars' range, open gap and volume change, binned; tokenizer/side.py) are added too,
  one learned "unknown" row per channel standing in where a value is missing and at generated positions (zero at
  initialisation as well),
- rotary position embeddings (cos/sin tables precomputed once, non-persistent buffers),
- pre-norm blocks of grouped-query attention with QK-norm and a ReLU^2 MLP, no biases and no norm weights,
- a final RMSNorm, an untied lm_head and a tanh logit softcap computed in fp32,
- with `vol_bars`, a volatility head on the same final hidden state: one linear map to the log of the mean
  squared return of the next vol_bars bars in units of the origin's volatility scale (zero at initialisation:
  variance 1, a standardised shock's), trained with the QLIKE loss (`vol_loss`);
- with `shock_bins`, a shock head: one linear map to the logits of the next bar's absolute-shock class (zero at
  initialisation: every class equally likely), trained with a cross-entropy (`shock_loss`).

Shapes: B batch, T time, V vocab, E n_embd, H query heads, Hkv key/value heads, D head_dim = E // H.

Token ids are checked against the vocabulary in user-facing paths (`generate`, the engine, and
`check_token_ids` which the trainer calls once per dataset), not in `forward`: `idx.max()` is a host sync on
an accelerator and training runs forward millions of times on data validated up front. Calendar inputs are
checked in `forward` for shape always and for range on the CPU (no host sync there); on an accelerator their
range is checked by the user-facing paths (`check_calendar`).

Loading trusts nothing in the files: the config goes through GPTConfig's bounds, the weights must match it in
names, shapes and dtype and be finite; each problem is a CheckpointError naming the damaged file.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import ARCHITECTURE_KEYS, GPTConfig, check_memory, preset_model_config
from ..config import MODEL_PRESETS as PRESETS
from ..config.schema import SIDE_BINS, SIDE_CHANNELS
from ..data.calendar import TOD_SLOTS
from ..errors import CheckpointError, ConfigError, DataError
from ..fileio import atomic_path, write_json
from ..tokenizer.side import side_ids

__all__ = ["GPT", "GPTConfig", "PRESETS", "preset_model_config", "check_token_ids", "check_calendar", "check_side",
           "CalendarInputError", "CALENDAR_SIZES", "SIDE_CHANNELS", "SIDE_BINS", "CONFIG_FILE", "WEIGHTS_FILE"]

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
WEIGHT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
CALENDAR_SIZES = (TOD_SLOTS, 7)  # the calendar inputs [time of day, day of week] take values 0 .. size - 1, or -1
VOL_FLOOR = 1e-4  # added to the volatility head's squared-return targets (in units of a squared scale)
INTEGER_DTYPES = (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8)


def check_token_ids(ids: torch.Tensor, vocab_size: int, what: str = "token ids", allow_ignore: bool = False):
    """Raise DataError unless every id is in [0, vocab_size) (or -1 when `allow_ignore`). One host sync."""
    if ids.dtype not in INTEGER_DTYPES:
        raise DataError(f"{what} must be an integer tensor, got dtype {ids.dtype}")
    if ids.numel() == 0:
        return
    lo, hi = int(ids.min()), int(ids.max())
    if lo < (-1 if allow_ignore else 0) or hi >= vocab_size:
        raise DataError(
            f"{what} must lie in [0, {vocab_size}) for this model (vocab_size={vocab_size}), "
            f"found values in [{lo}, {hi}]; the tokens and the model come from different tokenizers?"
        )


class CalendarInputError(DataError, ValueError):
    """Calendar inputs that do not fit the model: given to a model without calendar embeddings, of the wrong shape
    or dtype, or out of range. A ValueError for library callers, a DataError (one `error:` line) for the CLI."""


def check_calendar(calendar: torch.Tensor, shape: tuple[int, int], calendar_model: bool,
                   what: str = "calendar", check_range: bool = True) -> None:
    """Raise CalendarInputError unless `calendar` is an integer tensor of shape (*shape, 2) holding [time of day in
    0..TOD_SLOTS-1, day of week in 0..6] or -1 (unknown) per position, for a model built with calendar=True.
    With `check_range` (one host sync on an accelerator) the values are checked too."""
    if not calendar_model:
        raise CalendarInputError(f"{what} given to a model without calendar embeddings (model.calendar=false); "
                                 "pass calendar=None, or train a model with --set model.calendar=true")
    _check_position_ids(calendar, shape, tuple(zip(("time of day", "day of week"), CALENDAR_SIZES)),
                        "[time of day, day of week]", what, check_range,
                        "compute them with pricegpt.data.calendar.calendar_ids")


def check_symbol(symbol: torch.Tensor, shape: tuple[int, int], config, check_range: bool = True) -> None:
    """CalendarInputError unless `symbol` is (B,) or (B, T) integer ids in [-1, config.symbol_rows - 1) for a model
    with a symbol embedding."""
    if not config.symbol_embedding:
        raise CalendarInputError("symbol ids given to a model without a symbol embedding "
                                 "(model.symbol_embedding=false); pass symbol=None, or train a model with --set "
                                 "model.symbol_embedding=true")
    if not isinstance(symbol, torch.Tensor) or tuple(symbol.shape) not in (shape[:1], tuple(shape)):
        raise CalendarInputError(f"symbol must be integer ids of shape {shape[:1]} or {tuple(shape)}, got "
                                 f"{getattr(symbol, 'dtype', type(symbol).__name__)} "
                                 f"{tuple(getattr(symbol, 'shape', ()))}")
    # one id per row or per position: the per-position check of one column of ids
    _check_position_ids(symbol[..., None], tuple(symbol.shape), (("symbol", config.symbol_rows - 1),), "symbol",
                        "symbol", check_range, "map names with GPT.symbol_ids")


def check_side(side: torch.Tensor, shape: tuple[int, int], side_model: bool, what: str = "side",
               check_range: bool = True) -> None:
    """Raise CalendarInputError unless `side` is an integer tensor of shape (*shape, SIDE_CHANNELS) of side-channel
    ids in 0..SIDE_BINS-1 or -1 (unknown), for a model built with side=True. With `check_range` (one host sync on
    an accelerator) the values are checked too."""
    if not side_model:
        raise CalendarInputError(f"{what} given to a model without side channels (model.side=false); pass side=None, "
                                 "or train a model with --set model.side=true")
    _check_position_ids(side, shape, tuple((f"{name} side-channel", SIDE_BINS) for name in ("range", "gap", "volume")),
                        "[range, gap, volume]", what, check_range, "compute them with GPT.side_ids")


def _check_position_ids(values, shape: tuple[int, int], columns: tuple, ids_text: str, what: str,
                        check_range: bool, hint: str) -> None:
    """The checks of a per-position id input of `columns` ((name, size) each): integer dtype, shape (*shape,
    len(columns)), and with `check_range` every id in [0, size) or -1 (unknown)."""
    if not isinstance(values, torch.Tensor) or values.dtype not in INTEGER_DTYPES:
        kind = values.dtype if isinstance(values, torch.Tensor) else type(values).__name__
        raise CalendarInputError(f"{what} must be an integer tensor of {ids_text} ids, got {kind}")
    if tuple(values.shape) != (*shape, len(columns)):
        raise CalendarInputError(f"{what} must have shape {(*shape, len(columns))} ({ids_text} for each of the "
                                 f"{shape} token positions), got {tuple(values.shape)}")
    if not check_range or values.numel() == 0:
        return
    for i, (name, size) in enumerate(columns):
        lo, hi = int(values[..., i].min()), int(values[..., i].max())
        if lo < -1 or hi >= size:
            raise CalendarInputError(f"{what}: {name} ids must lie in [0, {size}) or be -1 (unknown), found values "
                                     f"in [{lo}, {hi}]; {hint}")


def _rms_norm(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x / rms(x) over the last dimension, and 1 / rms(x) (fp32 for bf16 x): one reduction pass and one product
    (F.rms_norm decomposes into five passes on CPU)."""
    accumulate = torch.promote_types(x.dtype, torch.float32)  # bf16 inputs reduce in fp32
    mean_square = torch.linalg.vector_norm(x, dim=-1, keepdim=True, dtype=accumulate).square_().div_(x.size(-1))
    rstd = mean_square.add_(torch.finfo(x.dtype).eps).rsqrt_()  # same eps as F.rms_norm
    return x * rstd.to(x.dtype), rstd


class _RMSNorm(torch.autograd.Function):
    """F.rms_norm without a weight, with a hand-written backward: 2 passes instead of ~8 on CPU eager."""

    @staticmethod
    def forward(ctx, x):
        y, rstd = _rms_norm(x)
        ctx.save_for_backward(y, rstd)
        return y

    @staticmethod
    def backward(ctx, grad):
        y, rstd = ctx.saved_tensors
        # d/dx of x * rstd(x): rstd * (g - y * mean(g * y))
        mean_gy = torch.linalg.vecdot(grad, y, dim=-1).unsqueeze(-1) / y.size(-1)
        return torch.addcmul(grad, y, mean_gy, value=-1).mul_(rstd.to(grad.dtype))


class _ReluSquare(torch.autograd.Function):
    """relu(x)^2 saving relu(x) only: half the time of F.relu(x).square() fwd+bwd on CPU eager."""

    @staticmethod
    def forward(ctx, x):
        r = torch.relu(x)
        ctx.save_for_backward(r)
        return r * r

    @staticmethod
    def backward(ctx, grad):
        (r,) = ctx.saved_tensors
        return (grad * r).mul_(2)


def norm(x: torch.Tensor) -> torch.Tensor:
    """Parameter-free RMSNorm over the last dimension."""
    if torch.is_grad_enabled():
        return _RMSNorm.apply(x)
    return _rms_norm(x)[0]  # the same arithmetic as training's


def relu_square(x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """relu(x)^2; `inplace` (x is a fresh intermediate nobody else reads): without autograd, overwrite x instead
    of allocating two tensors of its size (a third of the ReLU^2 time when decoding on CPU)."""
    if torch.is_grad_enabled():
        return _ReluSquare.apply(x)
    return x.relu_().square_() if inplace else torch.relu(x).square()


def rotary_tables(length: int, head_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape (1, length, 1, head_dim // 2), fp32."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    angles = torch.outer(torch.arange(length, dtype=torch.float64), inv_freq)
    return angles.cos().float()[None, :, None, :], angles.sin().float()[None, :, None, :]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[..., i], x[..., i + D/2]) of x (B, T, heads, D) by the angles of cos/sin (1, T, 1, D/2)."""
    d = x.size(-1) // 2
    x1, x2 = x[..., :d], x[..., d:]
    if torch.is_grad_enabled():
        return torch.cat([torch.addcmul(x1 * cos, x2, sin), torch.addcmul(x2 * cos, x1, sin, value=-1)], dim=-1)
    # Without autograd the two halves are written in place: no temporaries and no concatenation (the same
    # arithmetic, so the same values)
    out = torch.empty_like(x)
    first, second = out[..., :d], out[..., d:]
    torch.mul(x1, cos, out=first).addcmul_(x2, sin)
    torch.mul(x2, cos, out=second).addcmul_(x1, sin, value=-1)
    return out


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, config.head_dim
        self.dropout = config.dropout
        # One matmul for q, k and v: same parameters as three Linears, one weight read and one GEMM each way.
        qkv_out = (config.n_head + 2 * config.n_kv_head) * config.head_dim
        self.c_qkv = nn.Linear(config.n_embd, qkv_out, bias=False)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, kv_cache=None) -> torch.Tensor:
        """x (B, T, E) -> (B, T, E). With a kv_cache: T tokens at a fresh cache (prefill) or 1 token (decode),
        attended by the cache's `attend(layer, q, k, v)`."""
        B, T, _ = x.shape
        H, Hkv, D = self.n_head, self.n_kv_head, self.head_dim
        qk, v = self.c_qkv(x).split([(H + Hkv) * D, Hkv * D], dim=-1)
        # q and k are adjacent in the fused output, so rotary and QK-norm run once over both.
        qk = norm(apply_rotary(qk.view(B, T, H + Hkv, D), cos.to(qk.dtype), sin.to(qk.dtype)))
        q, k = qk.split([H, Hkv], dim=2)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.view(B, T, Hkv, D).transpose(1, 2)
        if kv_cache is None:
            y = self._attend_causal(q, k, v)
        else:  # the cache stores this step's keys and values and attends over what it holds (model/engine.py)
            y = kv_cache.attend(self.layer_idx, q, k, v)
        y = y.transpose(1, 2).reshape(B, T, H * D)
        return self.c_proj(y)

    def _attend_causal(self, q, k, v):
        dropout_p = self.dropout if self.training else 0.0
        if self.n_kv_head != self.n_head:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout_p, enable_gqa=True)
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout_p)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, config.mlp_ratio * config.n_embd, bias=False)
        self.c_proj = nn.Linear(config.mlp_ratio * config.n_embd, config.n_embd, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(relu_square(self.c_fc(x), inplace=True))


class Block(nn.Module):
    def __init__(self, config: GPTConfig, layer_idx: int):
        super().__init__()
        self.attn = CausalSelfAttention(config, layer_idx)
        self.mlp = MLP(config)
        self.dropout = config.dropout

    def forward(self, x, cos, sin, kv_cache=None):
        x = x + F.dropout(self.attn(norm(x), cos, sin, kv_cache), self.dropout, self.training)
        x = x + F.dropout(self.mlp(norm(x)), self.dropout, self.training)
        return x


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        if torch.get_default_device().type != "meta":  # a meta model (shapes only) allocates nothing
            check_memory(4 * config.num_params(), f"a model of {config.num_params():,} parameters",
                         "choose a smaller model.n_layer, model.n_embd or model.vocab_size")
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.blocks = nn.ModuleList([Block(config, i) for i in range(config.n_layer)])
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.vol_bars:  # skip_init draws no random numbers: the other weights are as without a head
            self.vol_head = nn.utils.skip_init(nn.Linear, config.n_embd, 1, bias=False)
        if config.shock_bins:
            self.shock_head = nn.utils.skip_init(nn.Linear, config.n_embd, config.shock_bins, bias=False)
        if config.calendar:  # built from zeros, drawing no random numbers: the other weights are as without them
            self.calendar_tod = nn.Embedding.from_pretrained(torch.zeros(CALENDAR_SIZES[0], config.n_embd), False)
            self.calendar_dow = nn.Embedding.from_pretrained(torch.zeros(CALENDAR_SIZES[1], config.n_embd), False)
        if config.side:  # one table per channel: SIDE_BINS bins and a last "unknown" row; zeros, as the calendar's
            self.side_tables = nn.ModuleList(
                nn.Embedding.from_pretrained(torch.zeros(SIDE_BINS + 1, config.n_embd), False)
                for _ in range(SIDE_CHANNELS))
        if config.symbol_embedding:  # one row per training symbol and a last "unknown" row; zeros, as above
            self.symbol_table = nn.Embedding.from_pretrained(torch.zeros(config.symbol_rows, config.n_embd), False)
        self._symbol_rows = {name: i for i, name in enumerate(config.symbols or ())}  # symbol_ids' lookup
        # Not saved with the weights: they are a pure function of the config.
        cos, sin = rotary_tables(config.sequence_len, config.head_dim, config.rope_base)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self):
        c = self.config
        nn.init.normal_(self.wte.weight, mean=0.0, std=c.embedding_init_std)
        for table in self.calendar_tables() + self.side_embedding_tables() + self.symbol_tables():
            nn.init.zeros_(table.weight)  # a fresh calendar / side / symbol model is the model without them
        for module in self.modules():
            if isinstance(module, nn.Linear):
                fan_out, fan_in = module.weight.shape
                # https://arxiv.org/abs/2310.17022: keeps activations O(1) whatever the aspect ratio.
                std = min(1.0, math.sqrt(fan_out / fan_in)) / math.sqrt(fan_in) if c.init_std is None else c.init_std
                nn.init.normal_(module.weight, mean=0.0, std=std)
        if c.zero_init_proj:
            for block in self.blocks:
                nn.init.zeros_(block.attn.c_proj.weight)
                nn.init.zeros_(block.mlp.c_proj.weight)
        if c.zero_init_head:
            nn.init.zeros_(self.lm_head.weight)
        if c.vol_bars:
            nn.init.zeros_(self.vol_head.weight)  # log variance 0: a standardised shock's variance
        if c.shock_bins:
            nn.init.zeros_(self.shock_head.weight)  # every shock class equally likely

    def _rotary(self, start: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin for positions [start, start + length); tables grow (doubling) past sequence_len."""
        if start + length > self.cos.size(1):
            size = max(start + length, 2 * self.cos.size(1))
            cos, sin = rotary_tables(size, self.config.head_dim, self.config.rope_base)
            self.cos, self.sin = cos.to(self.cos.device), sin.to(self.sin.device)
        return self.cos[:, start : start + length], self.sin[:, start : start + length]

    def calendar_tables(self) -> list[nn.Embedding]:
        """[time-of-day table, weekday table] of a calendar model, [] otherwise."""
        return [self.calendar_tod, self.calendar_dow] if self.config.calendar else []

    def calendar_embedding(self, calendar: torch.Tensor) -> torch.Tensor:
        """calendar (B, T, 2) [time of day, day of week] ids, -1 for unknown -> (B, T, E): the sum of the two
        embeddings, an unknown id contributing zero."""
        out = 0
        for i, table in enumerate(self.calendar_tables()):
            ids = calendar[..., i].long()
            known = (ids >= 0).unsqueeze(-1)
            out = out + table(ids.clamp(min=0)) * known.to(table.weight.dtype)
        return out

    def side_embedding_tables(self) -> list[nn.Embedding]:
        """The side channels' tables (range, gap, volume) of a side model, [] otherwise."""
        return list(self.side_tables) if self.config.side else []

    def side_embedding(self, side: torch.Tensor) -> torch.Tensor:
        """side (B, T, SIDE_CHANNELS) ids, -1 for unknown -> (B, T, E): the sum of the channels' embeddings, an
        unknown id reading its channel's learned "unknown" row."""
        ids = side.long()
        ids = torch.where(ids < 0, SIDE_BINS, ids)
        out = 0
        for i, table in enumerate(self.side_embedding_tables()):
            out = out + table(ids[..., i])
        return out

    def symbol_tables(self) -> list[nn.Embedding]:
        """[the symbol embedding] of a model with asset identity (model.symbol_embedding), [] otherwise."""
        return [self.symbol_table] if self.config.symbol_embedding else []

    def symbol_ids(self, names) -> torch.Tensor:
        """Symbol names -> (len(names),) int64 rows of the symbol embedding, -1 (the "unknown" row) for a symbol
        the model was not trained on."""
        return torch.tensor([self._symbol_rows.get(str(name), -1) for name in names], dtype=torch.long)

    def symbol_embedding(self, symbol: torch.Tensor) -> torch.Tensor:
        """symbol (B,) or (B, T) ids, -1 for unknown -> (B, 1, E) or (B, T, E) rows of the symbol embedding."""
        ids = symbol.long()
        ids = torch.where(ids < 0, self.config.symbol_rows - 1, ids)
        out = self.symbol_table(ids)
        return out.unsqueeze(1) if ids.dim() == 1 else out

    def side_ids(self, values) -> torch.Tensor:
        """(..., SIDE_CHANNELS) side values (tokenizer/side.py; NaN unknown) -> int64 ids through the model's bin
        edges (model.side_edges, copied from its training store), -1 where unknown."""
        if not self.config.side or self.config.side_edges is None:
            raise CalendarInputError("this model has no side channels (or was never trained: no side_edges)")
        return torch.as_tensor(side_ids(values, self.config.side_edges), dtype=torch.long)

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, *, kv_cache=None, reduction: str = "mean",
        calendar: torch.Tensor | None = None, side: torch.Tensor | None = None, symbol: torch.Tensor | None = None,
        vol_targets: torch.Tensor | None = None, shock_targets: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """idx (B, T) int64 -> logits (B, T, V) fp32, or with targets (B, T) the cross-entropy loss; with
        vol_targets (B, T) and/or shock_targets (B, T) too (a model with heads, in training), the losses
        [cross-entropy, the volatility head's QLIKE (`vol_loss`) if given, the shock head's cross-entropy
        (`shock_loss`) if given] as one tensor (one forward, so DDP and torch.compile see one call).

        targets equal to -1 are ignored. `reduction` is F.cross_entropy's ("mean" -> scalar, "none" -> (B*T,)).
        kv_cache (see engine.KVCache) makes positions start at kv_cache.pos and appends this call's K/V to it.
        calendar (B, T, 2): [time of day, day of week] ids (data.calendar.calendar_ids) of the last bar of each
        token of idx, -1 where unknown; None is no calendar input (the same as all -1). Only for a model built
        with calendar=True (CalendarInputError otherwise). side (B, T, SIDE_CHANNELS): each token's side-channel ids
        (`side_ids`), -1 where unknown; None: all unknown. Only for a model built with side=True. symbol (B,) or
        (B, T): each row's symbol id (`symbol_ids`), -1 for unknown; None: unknown. Only for a model built with
        symbol_embedding=True.
        """
        x = self.hidden(idx, kv_cache=kv_cache, calendar=calendar, side=side, symbol=symbol)
        B, T = idx.shape
        logits = self.lm_head(x).float()
        softcap = self.config.logit_softcap
        if softcap:
            logits = softcap * torch.tanh(logits / softcap)
        if targets is None:
            return logits
        loss = F.cross_entropy(logits.view(B * T, -1), targets.reshape(B * T), ignore_index=-1, reduction=reduction)
        if vol_targets is None and shock_targets is None:
            return loss
        losses = [loss] + ([self.vol_loss(x, vol_targets)] if vol_targets is not None else []) \
            + ([self.shock_loss(x, shock_targets)] if shock_targets is not None else [])
        return torch.stack(losses)

    def hidden(self, idx: torch.Tensor, *, kv_cache=None, calendar: torch.Tensor | None = None,
               side: torch.Tensor | None = None, symbol: torch.Tensor | None = None) -> torch.Tensor:
        """The trunk: idx (B, T) -> the final normed hidden states (B, T, E) that the heads read (arguments as
        `forward`'s)."""
        B, T = idx.shape
        start = 0 if kv_cache is None else kv_cache.pos
        cos, sin = self._rotary(start, T)
        x = norm(self.wte(idx))
        if calendar is not None:
            check_calendar(calendar, (B, T), self.config.calendar,
                           check_range=calendar.device.type == "cpu" and not torch.compiler.is_compiling())
            x = x + self.calendar_embedding(calendar).to(x.dtype)
        if side is not None:
            check_side(side, (B, T), self.config.side,
                       check_range=side.device.type == "cpu" and not torch.compiler.is_compiling())
            x = x + self.side_embedding(side).to(x.dtype)
        elif self.config.side:  # no side input: every position reads the "unknown" rows
            x = x + sum(table.weight[SIDE_BINS] for table in self.side_tables).to(x.dtype)
        if symbol is not None:
            check_symbol(symbol, (B, T), self.config,
                         check_range=symbol.device.type == "cpu" and not torch.compiler.is_compiling())
            x = x + self.symbol_embedding(symbol).to(x.dtype)
        elif self.config.symbol_embedding:  # no symbol given: the "unknown" row
            x = x + self.symbol_table.weight[-1].to(x.dtype)
        for block in self.blocks:
            x = block(x, cos, sin, kv_cache)
        if kv_cache is not None:
            kv_cache.advance(T)
        return norm(x)

    def log_variance(self, hidden: torch.Tensor) -> torch.Tensor:
        """The volatility head: hidden states (B, T, E) -> (B, T) fp32, the predicted log of the mean squared
        return of the next vol_bars bars after each position, in units of the volatility scale at the first of
        them (the origin's). Only for a model built with vol_bars > 0."""
        assert self.config.vol_bars, "this model has no volatility head (model.vol_bars=0)"
        return self.vol_head(hidden).squeeze(-1).float()

    def vol_loss(self, hidden: torch.Tensor, realised: torch.Tensor) -> torch.Tensor:
        """Mean QLIKE loss v / exp(h) + h of the head's log variance h against `realised` (B, T) mean squared
        returns in origin-scale units (NaN: no target, e.g. too close to the window's end); minimised by
        exp(h) = E[v]. A small floor keeps an all-zero target from driving h to minus infinity."""
        h = self.log_variance(hidden)
        known = torch.isfinite(realised)
        v = realised.float().clamp(min=0.0)[known] + VOL_FLOOR
        h = h[known]
        if h.numel() == 0:
            return h.sum()  # zero, and still part of the graph
        return (v * torch.exp(-h) + h).mean()

    def shock_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The shock head: hidden states (B, T, E) -> (B, T, shock_bins) fp32 logits of the class of the next
        bar's absolute shock after each position. Only for a model built with shock_bins > 0."""
        assert self.config.shock_bins, "this model has no shock head (model.shock_bins=0)"
        return self.shock_head(hidden).float()

    def shock_loss(self, hidden: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of the shock head against `classes` (B, T) int64 (-1: no target)."""
        logits = self.shock_logits(hidden)
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), classes.reshape(-1), ignore_index=-1)

    # ---------------------------------------------------------------- bookkeeping

    def num_params(self, non_embedding: bool = False) -> int:
        """All parameters, or without the input embeddings (token and calendar: lookups, no FLOPs) when
        `non_embedding`."""
        n = sum(p.numel() for p in self.parameters())
        return n - sum(p.numel() for p in self.embedding_params()) if non_embedding else n

    def param_breakdown(self) -> dict[str, int]:
        """Parameter counts: embedding + attention + mlp + head == total (attention/mlp summed over layers; the
        embedding includes the calendar tables, which a calendar model also counts alone as "calendar")."""
        attention_per_layer = sum(p.numel() for p in self.blocks[0].attn.parameters())
        mlp_per_layer = sum(p.numel() for p in self.blocks[0].mlp.parameters())
        counts = {
            "embedding": sum(p.numel() for p in self.embedding_params()),
            "attention": sum(p.numel() for b in self.blocks for p in b.attn.parameters()),
            "mlp": sum(p.numel() for b in self.blocks for p in b.mlp.parameters()),
            "head": sum(p.numel() for p in self.head_params()),
            "attention_per_layer": attention_per_layer,
            "mlp_per_layer": mlp_per_layer,
        }
        if self.config.calendar:
            counts["calendar"] = sum(t.weight.numel() for t in self.calendar_tables())
        if self.config.side:
            counts["side"] = sum(t.weight.numel() for t in self.side_embedding_tables())
        if self.config.symbol_embedding:
            counts["symbol"] = self.symbol_table.weight.numel()
        counts["total"] = self.num_params()
        return counts

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Training FLOPs per token (forward + backward), as in PaLM appendix B and nanochat.

        6 * (matmul parameters: everything but the embedding lookup) for the weight matmuls, plus
        12 * n_layer * n_embd * T for the attention scores and weighted values (QK^T and AV, 2 FLOPs per MAC,
        x3 for forward + backward), counted over the full T x T square as is conventional, not the causal half.
        """
        c = self.config
        T = c.sequence_len if seq_len is None else seq_len
        return 6 * self.num_params(non_embedding=True) + 12 * c.n_layer * c.n_embd * T

    def estimate_mfu(self, tokens_per_second: float, peak_flops: float, seq_len: int | None = None) -> float:
        """Model FLOPs utilisation: achieved training FLOP/s over the hardware's peak FLOP/s."""
        return self.flops_per_token(seq_len) * tokens_per_second / peak_flops

    def matrix_params(self) -> list[nn.Parameter]:
        """The transformer blocks' 2-D weights (the ones a Muon optimizer takes)."""
        return [p for p in self.blocks.parameters()]

    def embedding_params(self) -> list[nn.Parameter]:
        """The input lookups: the token embedding and, in a calendar or side model, their tables."""
        return [self.wte.weight] + [t.weight for t in self.calendar_tables() + self.side_embedding_tables()
                                    + self.symbol_tables()]

    def head_params(self) -> list[nn.Parameter]:
        return [self.lm_head.weight] + ([self.vol_head.weight] if self.config.vol_bars else []) \
            + ([self.shock_head.weight] if self.config.shock_bins else [])

    def param_groups(self, weight_decay: float) -> list[dict]:
        """AdamW parameter groups named "matrix", "embedding", "side" (a side model's tables and a symbol model's
        table), "head" (so each can get its own lr or optimizer).

        Weight decay applies to 2-D tensors only; 1-D tensors (none in this architecture) would go in "no_decay".
        """
        groups = []
        for name, params in (
            ("matrix", self.matrix_params()),
            ("embedding", [self.wte.weight] + [t.weight for t in self.calendar_tables()]),
            # the side channels' and the symbol's tables (zero-initialised): the trainer may give them a larger lr
            ("side", [t.weight for t in self.side_embedding_tables() + self.symbol_tables()]),
            ("head", self.head_params()),
        ):
            decay = [p for p in params if p.dim() >= 2]
            no_decay = [p for p in params if p.dim() < 2]
            if decay:
                groups.append({"name": name, "params": decay, "weight_decay": weight_decay})
            if no_decay:
                groups.append({"name": f"{name}_no_decay", "params": no_decay, "weight_decay": 0.0})
        n_grouped = sum(p.numel() for g in groups for p in g["params"])
        assert n_grouped == self.num_params(), f"param groups hold {n_grouped} of {self.num_params()} parameters"
        return groups

    # ---------------------------------------------------------------- save / load

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write directory/config.json and directory/model.safetensors, each atomically."""
        from safetensors.torch import save_file

        directory = Path(directory)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        with atomic_path(directory / WEIGHTS_FILE) as tmp:
            save_file(state, str(tmp), metadata={"format": "pt"})
        write_json(directory / CONFIG_FILE, self.config.to_dict())

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, map_location: str | torch.device = "cpu") -> GPT:
        """Rebuild a model from save_pretrained's directory; every problem with the files is a CheckpointError."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        directory = Path(directory)
        config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
        for path in (config_path, weights_path):
            if not path.is_file():
                raise CheckpointError(
                    f"{path} not found; point at a model directory written by training (it holds "
                    f"{CONFIG_FILE} and {WEIGHTS_FILE})"
                )
        damaged = "the model is damaged: restore the folder from a backup or retrain"
        try:
            raw = json.loads(config_path.read_bytes())
        except (json.JSONDecodeError, UnicodeDecodeError, OSError, RecursionError) as err:
            reason = "nested too deeply" if isinstance(err, RecursionError) else str(err)
            raise CheckpointError(f"{config_path} is not a valid model config ({reason}); {damaged}") from None
        try:
            config = GPTConfig.from_dict(raw, where=str(config_path), require=ARCHITECTURE_KEYS)
        except (ConfigError, TypeError) as err:
            raise CheckpointError(f"{config_path} is not a valid model config ({err}); {damaged}") from None
        try:
            state = load_file(str(weights_path), device="cpu")
        except (SafetensorError, OSError, ValueError, RuntimeError) as err:
            raise CheckpointError(
                f"{weights_path} is truncated or corrupted ({err}); restore it from a backup or retrain"
            ) from err
        with torch.device("meta"):  # shapes only: a config.json naming a huge model allocates nothing here
            expected = cls(config).state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if missing or unexpected:
            raise CheckpointError(
                f"{weights_path} does not match {config_path}: missing tensors {missing}, unexpected tensors "
                f"{unexpected}; the two files come from different models, re-save the model"
            )
        wrong = [
            f"{k}: file {tuple(state[k].shape)} vs config {tuple(v.shape)}"
            for k, v in expected.items()
            if state[k].shape != v.shape
        ]
        if wrong:
            raise CheckpointError(
                f"{weights_path} has tensors of the wrong shape for {config_path} ({'; '.join(wrong)}); "
                f"the two files come from different models, re-save the model"
            )
        for name, tensor in state.items():
            if tensor.dtype not in WEIGHT_DTYPES:
                raise CheckpointError(f"{weights_path}: tensor {name} is {tensor.dtype}, not floating point; "
                                      f"{damaged}")
            if not bool(torch.isfinite(tensor).all()):
                raise CheckpointError(
                    f"{weights_path}: tensor {name} holds NaN or infinite values (training diverged or the file "
                    f"was corrupted); {damaged}"
                )
        try:
            model = cls(config)
        except ConfigError as err:
            raise CheckpointError(f"{config_path} describes a model too large for this machine ({err})") from None
        except (RuntimeError, MemoryError) as err:
            raise CheckpointError(f"{config_path} describes a model too large to build here ({err})") from err
        model.load_state_dict(state)
        return model.to(map_location)
