"""Sampling continuations from a GPT: KV caches, the sampling rule, and the generation loop.

Generation of `num_samples` paths for each of B contexts:
1. crop each context to its last `sequence_len` tokens,
2. prefill the B contexts once (one cache row per context, not per sample),
3. decode all N = B * num_samples rows together, one token per step. The samples of a context share its prefix,
   so `PrefixKVCache` keeps the prefix keys once per context and only the generated tokens' keys per row; a
   model whose attention asks the cache to attend (`cache.attend`) scores the prefix as one matrix product per
   context and head. A model that only stores keys in the cache (`cache.update`) gets every row's own copy of its
   context's keys, made once.
   Rows of a context that drew the same tokens so far share every state of the model, so each step runs the
   model once per distinct path (`distinct_paths`; padded to as many per context, and to MIN_GEMM_ROWS rows in
   all) and hands its logits to each of its rows: the tiny preset's first decode step, where a context's 256
   samples hold about 90 distinct first tokens of 128, costs a third. Every row still draws its own random
   number, and its logits are bit for bit those it gets without the sharing, alone or among other contexts (as
   long as a matrix product rounds a row the same whatever its number of rows, see MIN_GEMM_ROWS).

Context window. Rotary positions must stay in [0, sequence_len), the lengths the model was trained on, so the
tokens the model sees form a window tokens[start:n] of at most sequence_len tokens. When one more token would
overflow it, the window restarts at the last `refill_len` tokens (default 3/4 of sequence_len) and a per-row
cache is re-prefilled from them: the context never shrinks below refill_len tokens, and the re-prefill costs
about refill_len / (sequence_len - refill_len) = 3 token-forwards per generated token, amortised.
`use_cache=False` recomputes a full forward over the same window every step: it is the reference the caches are
tested against, so both paths see exactly the same tokens at the same positions and draw the same random numbers.

Calendar. A calendar model (model.calendar) may get `calendar` (B, T + max_new_tokens, 2): the [time of day, day
of week] ids (data.calendar.calendar_ids of each token's last bar, -1 where unknown) of every context position and
every position to be generated. Each row reads the calendar of its context at exactly the positions of its window,
in the prefill, in every cached decode step and in every recomputed window alike. A token's calendar enters the
model with the token, so the last generated position's is never read (it is asked for so that a caller passes one
pair per token). None: no calendar input. A side model (model.side) may get `side` (B, T + max_new_tokens, 3) the
same way: each context token's side-channel ids (GPT.side_ids) and, for the positions to be generated, -1 (the
"unknown" rows: a sampled token has no range, gap or volume); None: all unknown.

Sampling draws one uniform number per row and step and inverts the row's cumulative distribution (see
`sample_next_token`). Seeds: one generator for all rows, or one per context (a list of seeds): a context's
paths then do not depend on the other contexts of the call, which is how many forecast origins share one call.

Arguments are checked before anything is allocated (bounds in config.py): temperature 0 (greedy) or in
[1e-3, 100], top_k >= 1, top_p in [1e-3, 1], a seed in [0, 2**64 - 1], at most 100,000 new tokens, and a
request whose estimated peak memory (`generation_bytes`) exceeds half of the free memory is a ConfigError.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..config import (
    MAX_GENERATOR_SEED,
    MAX_NUM_GENERATE,
    GPTConfig,
    check_int,
    check_memory,
    check_num_samples,
    check_temperature,
    check_top_k,
    check_top_p,
    memory_budget_bytes,
)
from ..errors import DataError
from .gpt import GPT, CalendarInputError, check_calendar, check_side, check_symbol, check_token_ids

# A decode step computes at least this many rows (or all of them): MKL's fp32 GEMM rounds a row otherwise when the
# product has few rows (measured: under 6 to 16 rows on one thread, under 348 rows at K=3072 on two), and a path
# must not depend on how many distinct paths the other contexts of its call have.
MIN_GEMM_ROWS = 512


class KVCache:
    """Keys and values of every layer, preallocated: k, v of shape (n_layer, rows, n_kv_head, max_len, head_dim).

    `pos` is how many positions are filled; each layer writes its new K/V at [pos, pos + T) and the model
    advances `pos` after its last layer. self.k[layer] is the (rows, n_kv_head, max_len, head_dim) cache of one layer.
    """

    def __init__(
        self,
        n_layer: int,
        rows: int,
        n_kv_head: int,
        max_len: int,
        head_dim: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ):
        shape = (n_layer, rows, n_kv_head, max_len, head_dim)
        self.k = torch.empty(shape, dtype=dtype, device=device)
        self.v = torch.empty(shape, dtype=dtype, device=device)
        self.max_len = max_len
        self.pos = 0

    @classmethod
    def for_model(cls, model: GPT, rows: int, max_len: int | None = None, dtype: torch.dtype | None = None) -> KVCache:
        """A cache for `model` in its weights' dtype, or `dtype` (the autocast dtype the keys are computed in)."""
        c = model.config
        weight = model.wte.weight
        return cls(c.n_layer, rows, c.n_kv_head, max_len or c.sequence_len, c.head_dim, dtype or weight.dtype,
                   weight.device)

    @property
    def rows(self) -> int:
        return self.k.size(1)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (rows, n_kv_head, T, head_dim) at [pos, pos + T); return the filled (.., pos + T, ..) views."""
        end = self.pos + k.size(2)
        assert end <= self.max_len, f"KV cache overflow: {end} positions > max_len {self.max_len}"
        self.k[layer, :, :, self.pos : end] = k
        self.v[layer, :, :, self.pos : end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Store k, v (rows, n_kv_head, T, D) and attend with q (rows, n_head, T, D) -> (rows, n_head, T, D): T
        tokens at a fresh cache (a prefill, causal) or one token over every filled position (a decode step)."""
        rows, H, T, D = q.shape
        Hkv = k.size(1)
        start = self.pos
        k_all, v_all = self.update(layer, k, v)
        if T == 1:
            # One query per head against the whole filled cache, no mask. Grouping the query heads of each kv
            # head along the "time" axis turns GQA into plain attention without repeating K/V.
            return F.scaled_dot_product_attention(q.reshape(rows, Hkv, H // Hkv, D), k_all, v_all).view(rows, H, 1, D)
        assert start == 0, f"multi-token forward with a KV cache needs an empty cache, got pos={start}"
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=Hkv != H)

    def advance(self, num_tokens: int) -> None:
        self.pos += num_tokens

    def reset(self) -> None:
        self.pos = 0

    def repeat_rows(self, repeats: int, max_len: int | None = None) -> KVCache:
        """A cache with each row repeated `repeats` times in a row (row r -> rows r*repeats ... r*repeats+repeats-1),
        holding `max_len` positions (default: as many as this one)."""
        rows = torch.arange(self.rows, device=self.k.device).repeat_interleave(repeats)
        return self.take_rows(rows, max_len)

    def take_rows(self, rows: torch.Tensor, max_len: int | None = None) -> KVCache:
        """A cache whose row i is row rows[i] of this one (a row may be taken several times or not at all),
        holding `max_len` positions (default: as many as this one)."""
        n_layer, _, n_kv_head, own_len, head_dim = self.k.shape
        max_len = own_len if max_len is None else max_len
        assert max_len >= self.pos, f"max_len {max_len} < the {self.pos} filled positions"
        out = KVCache(n_layer, rows.numel(), n_kv_head, max_len, head_dim, self.k.dtype, self.k.device)
        for src, dst in ((self.k, out.k), (self.v, out.v)):
            for layer in range(n_layer):  # the filled part only, one layer at a time: no whole-cache intermediate
                dst[layer, :, :, : self.pos] = src[layer, :, :, : self.pos].index_select(0, rows)
        out.pos = self.pos
        return out


class PrefixKVCache:
    """The decode cache of rows that share their context's prefix: the prefix keys and values once per context
    (`prefix`, a filled KVCache of B rows) and the generated tokens' per row, (n_layer, B * rows_per_context,
    n_kv_head, max_new, head_dim). Rows r*rows_per_context ... (r+1)*rows_per_context-1 belong to context r; it
    starts with rows_per_context = num_samples, and `keep_rows` keeps other rows (the engine keeps one row per
    distinct path).

    `attend` scores a decode step's queries against the prefix as one (rows_per_context * heads per kv head) x
    prefix matrix product per context and kv head, and against the row's own generated keys, with one softmax over
    both: the prefix is read once per context instead of once per row. `update` (for attention that only stores
    keys) copies the prefix to every row once and from then on is a plain per-row KVCache."""

    def __init__(self, prefix: KVCache, num_samples: int, max_new: int):
        n_layer, contexts, n_kv_head, _, head_dim = prefix.k.shape
        self.prefix, self.rows_per_context = prefix, num_samples
        shape = (2, n_layer, contexts * num_samples, n_kv_head, max_new, head_dim)
        # Keys and values in one tensor, kv, which lives in one of two buffers: `keep_rows` gathers into the other.
        self.buffers = [torch.empty(shape, dtype=prefix.k.dtype, device=prefix.k.device) for _ in range(2)]
        self.kv = self.buffers[0]
        self.generated = 0
        self.per_row: KVCache | None = None  # the plain cache `update` falls back to

    @property
    def pos(self) -> int:
        return self.prefix.pos + self.generated

    @property
    def k(self) -> torch.Tensor:
        return self.kv[0]

    @property
    def v(self) -> torch.Tensor:
        return self.kv[1]

    def advance(self, num_tokens: int) -> None:
        self.generated += num_tokens
        if self.per_row is not None:
            self.per_row.advance(num_tokens)

    def keep_rows(self, rows: torch.Tensor) -> None:
        """Keep rows `rows` (int64, B * rows_per_context of them for any rows_per_context; rows i*rows_per_context
        ... of context i): row j becomes row rows[j]. A row may be kept several times or dropped."""
        contexts = self.prefix.rows
        assert rows.numel() % contexts == 0, f"{rows.numel()} rows do not split into {contexts} contexts"
        if rows.numel() == self.kv.size(2) and torch.equal(rows, torch.arange(rows.numel(), device=rows.device)):
            return  # every row kept in place (each path has one continuation): nothing to gather
        self.rows_per_context = rows.numel() // contexts
        shape = (*self.kv.shape[:2], rows.numel(), *self.kv.shape[3:])
        spare = 1 if self.kv.data_ptr() == self.buffers[0].data_ptr() else 0
        if self.buffers[spare].numel() < math.prod(shape):
            self.buffers[spare] = self.kv.new_empty(shape)
        kept = self.buffers[spare].view(-1)[: math.prod(shape)].view(shape)
        # Whole rows, the positions not generated yet included: one contiguous gather is faster than a strided one.
        self.kv = torch.index_select(self.kv, 2, rows, out=kept) if self.generated else kept
        if self.per_row is not None:
            self.per_row = self.per_row.take_rows(rows)

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """One decode step: q (rows, n_head, 1, D), k, v (rows, n_kv_head, 1, D) -> (rows, n_head, 1, D)."""
        rows, H, T, D = q.shape
        assert T == 1, f"the prefix cache takes one token per step, got {T}"
        assert self.per_row is None, "a cache that copied its prefix to every row is a plain KVCache now"
        Hkv, S, P, n = k.size(1), self.rows_per_context, self.prefix.pos, self.generated + 1
        B, group = rows // S, H // Hkv
        self.k[layer, :, :, self.generated] = k[:, :, 0]
        self.v[layer, :, :, self.generated] = v[:, :, 0]
        q = q.view(B, S, Hkv, group, D).transpose(1, 2).reshape(B, Hkv, S * group, D) * D**-0.5
        prefix_k, prefix_v = self.prefix.k[layer, :, :, :P], self.prefix.v[layer, :, :, :P]  # (B, Hkv, P, D)
        own_k, own_v = self.k[layer, :, :, :n], self.v[layer, :, :, :n]  # (rows, Hkv, n, D)
        own_q = q.view(B, Hkv, S, group, D).transpose(1, 2).reshape(rows, Hkv, group, D)
        scores = torch.cat([q @ prefix_k.transpose(-1, -2),  # (B, Hkv, S * group, P)
                            (own_q @ own_k.transpose(-1, -2)).view(B, S, Hkv, group, n).transpose(1, 2)
                            .reshape(B, Hkv, S * group, n)], dim=-1)
        weights = torch.softmax(scores.float(), dim=-1).to(q.dtype)
        own_weights = weights[..., P:].reshape(B, Hkv, S, group, n).transpose(1, 2).reshape(rows, Hkv, group, n)
        y = (weights[..., :P] @ prefix_v).view(B, Hkv, S, group, D).transpose(1, 2).reshape(rows, Hkv, group, D)
        return (y + own_weights @ own_v).reshape(rows, H, 1, D)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """KVCache.update for attention that reads whole per-row keys: the prefix is copied to every row once."""
        if self.per_row is None:
            assert self.generated == 0, "update after attend: one model uses one protocol"
            self.per_row = self.prefix.repeat_rows(self.rows_per_context,
                                                   max_len=self.prefix.pos + self.k.size(3))
        return self.per_row.update(layer, k, v)


def distinct_paths(path: torch.Tensor, newest: torch.Tensor, vocab_size: int, rows_per_context: int,
                   min_rows: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """The rows of the next decode step, one per distinct path: sample rows of a context that drew the same tokens
    share every state of the model. path (N,): the cache row holding each of the N sample rows' path so far (a
    cache of `rows_per_context` rows per context, in context order); newest (N,): each sample row's newest token.

    -> path (N,): each sample row's row in the next step; parents (C * width,): the cache row each row of the
    next step extends; newest (C * width,): its newest token; width: rows per context (C contexts), the most
    distinct paths of any context, at least 2 (one row would make the prefix products matrix-vector products,
    rounded otherwise) and enough for `min_rows` rows in all. A context with fewer distinct paths repeats its last
    one; no sample row points at a repeat."""
    distinct, path = torch.unique(path * vocab_size + newest, sorted=True, return_inverse=True)
    context = distinct // vocab_size // rows_per_context
    counts = torch.bincount(context)  # the last context has paths too, so there is a count for every context
    width = max(int(counts.max()), -(-min_rows // counts.numel()), min(rows_per_context, 2))
    ends = counts.cumsum(0)
    rank = torch.arange(distinct.numel(), device=distinct.device) - (ends - counts)[context]  # within its context
    slot = context * width + rank
    padded = distinct[ends - 1].repeat_interleave(width)  # each context's last path in every slot, then its own
    padded[slot] = distinct
    return slot[path], padded // vocab_size, padded % vocab_size, width


def sample_next_token(
    logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """logits (N, V) -> token ids (N,) int64; or logits (U, V) and `rows` (N,): draw i from logits row rows[i] (the
    distribution is computed once for the draws that share it).

    temperature 0 is greedy (argmax). Otherwise logits / temperature, then top-k (keep the k largest logits;
    ties with the k-th are kept), then top-p (keep the smallest set of most likely tokens whose probability
    reaches top_p), then one draw per row by inversion: a uniform u, and the first token whose cumulative
    probability exceeds u times the total (never a token of probability 0). One random number per row, not one
    per token. `generator` is one generator for all rows, or a sequence of G generators for G equal contiguous
    groups of rows: each group's numbers come from its own generator, so a group's draws do not depend on the
    other groups (one group per forecast origin). Settings outside the bounds of config.check_temperature /
    check_top_k / check_top_p are ConfigErrors.
    """
    temperature, top_k, top_p = check_temperature(temperature), check_top_k(top_k), check_top_p(top_p)
    if temperature == 0:
        tokens = logits.argmax(dim=-1)
        return tokens if rows is None else tokens.index_select(0, rows)
    logits = logits.float() if temperature == 1.0 else logits.float() / temperature  # x / 1 == x: one pass less
    if top_k is not None and top_k < logits.size(-1):
        kth_largest = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth_largest, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        sorted_probs = torch.softmax(sorted_logits, dim=-1)
        # A token stays if the more likely tokens before it have not yet reached top_p (so the first always stays).
        mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
        sorted_logits = sorted_logits.masked_fill(mass_before >= top_p, float("-inf"))
        logits = torch.empty_like(logits).scatter_(-1, order, sorted_logits)
    cumulative = torch.softmax(logits, dim=-1).cumsum(dim=-1)
    total = cumulative[:, -1:].contiguous()
    # u * total rounds up to the total about once in 2**24 draws: take the first token where the cumulative
    # probability reaches the total then (its probability is not 0: it raised the sum to the total).
    last_possible = torch.searchsorted(cumulative, total)
    if rows is not None:
        cumulative, total, last_possible = (x.index_select(0, rows) for x in (cumulative, total, last_possible))
    uniforms = draw_uniforms(cumulative.size(0), generator, cumulative.device)
    tokens = torch.searchsorted(cumulative, uniforms.unsqueeze(-1) * total, right=True)
    return torch.minimum(tokens, last_possible).squeeze(-1)


def draw_uniforms(rows: int, generator, device: torch.device | str = "cpu") -> torch.Tensor:
    """(rows,) uniforms in [0, 1) from one generator, or from a sequence of generators, one per equal group."""
    if generator is None or isinstance(generator, torch.Generator):
        return torch.rand(rows, generator=generator, device=device)
    groups = len(generator)
    assert groups > 0 and rows % groups == 0, f"{rows} rows do not split into {groups} groups"
    uniforms = torch.empty(rows, device=device)
    for block, group_generator in zip(uniforms.view(groups, -1), generator):
        block.uniform_(generator=group_generator)
    return uniforms


def check_sampling_args(max_new_tokens, num_samples, temperature, top_k, top_p) -> dict:
    """The sampling settings as plain Python numbers, or a ConfigError naming the argument, value and bound."""
    return dict(max_new_tokens=check_int(max_new_tokens, "number of tokens to generate (--num-generate)", 0,
                                         MAX_NUM_GENERATE),
                num_samples=check_num_samples(num_samples, "num_samples (--num-samples)"),
                temperature=check_temperature(temperature, "temperature (--temperature)"),
                top_k=check_top_k(top_k, "top_k (--top-k)"), top_p=check_top_p(top_p, "top_p (--top-p)"))


def generation_bytes(config: GPTConfig, batch: int, context_len: int, num_samples: int, max_new_tokens: int,
                     use_cache: bool = True, dtype_bytes: int = 4) -> int:
    """Estimated peak memory of Engine.generate: the KV caches, the token buffers, one sampling step over the
    vocabulary, and the largest forward (the prefill, or a full window per row when the window refills or
    without a cache; attention scores counted as materialised)."""
    c, rows = config, batch * num_samples
    L = c.sequence_len
    T = min(context_len, L)
    per_position = 4 * (c.n_embd * (4 + c.mlp_ratio) + c.vocab_size)
    refills = T + max_new_tokens - 1 > L
    # The prefix once per context; the generated keys per row, twice (PrefixKVCache.keep_rows gathers from one
    # buffer into another); and a whole window per row once the window refills.
    positions = batch * T + rows * (2 * min(max_new_tokens - 1, L - T) + (L if refills else 0))
    kv = 2 * c.n_layer * positions * c.n_kv_head * c.head_dim * dtype_bytes if use_cache else 0
    tokens = 2 * rows * (T + max_new_tokens) * 8  # the buffer and the returned copy
    sampling = 6 * rows * c.vocab_size * 4  # logits, sorted, softmax, cumsum, masks
    forward = batch * T * (per_position + 4 * c.n_head * T)
    if not use_cache or T + max_new_tokens - 1 > L:
        forward = max(forward, rows * L * (per_position + 4 * c.n_head * L))
    return kv + tokens + sampling + forward


def as_contexts(idx, device: torch.device | str = "cpu") -> torch.Tensor:
    """A (B, T) int64 tensor from a (B, T) or (T,) integer tensor or a list of ints (one context)."""
    if not isinstance(idx, torch.Tensor):
        try:
            idx = torch.tensor(idx, dtype=torch.long)
        except (TypeError, ValueError, RuntimeError) as err:
            raise DataError(f"context tokens must be a list of integers or an integer tensor ({err})") from err
    if idx.dim() == 1:
        idx = idx[None, :]
    if idx.dim() != 2 or idx.size(1) == 0:
        raise DataError(
            f"context tokens must have shape (batch, time) or (time,) with at least one token, got {tuple(idx.shape)}"
        )
    if idx.dtype.is_floating_point or idx.dtype.is_complex or idx.dtype == torch.bool:
        raise DataError(f"context tokens must be integers, got dtype {idx.dtype}")
    return idx.to(device=device, dtype=torch.long)


def as_calendar(calendar, batch: int, length: int, model: GPT,
                device: torch.device | str = "cpu") -> torch.Tensor | None:
    """The (batch, length, 2) int64 calendar of a generate call from a tensor or array of that shape (or (length, 2)
    for one context), checked against the model (CalendarInputError); None stays None."""
    def check(values):
        check_calendar(values, (batch, length), model.config.calendar,
                       "calendar (one [time of day, day of week] pair per context token and per generated token)")

    return _as_positions(calendar, batch, device, "calendar", "[time of day, day of week]", check)


def as_side(side, batch: int, length: int, model: GPT, device: torch.device | str = "cpu") -> torch.Tensor | None:
    """The (batch, length, 3) int64 side-channel ids of a generate call from a tensor or array of that shape (or
    (length, 3) for one context), checked against the model (CalendarInputError); None stays None."""
    def check(values):
        check_side(values, (batch, length), model.config.side,
                   "side (one row of side-channel ids per context token and per generated token)")

    return _as_positions(side, batch, device, "side", "side-channel", check)


def as_symbol(symbol, batch: int, length: int, model: GPT,
              device: torch.device | str = "cpu") -> torch.Tensor | None:
    """The (batch, length) int64 symbol ids of a generate call (every position of a context carries its symbol)
    from one id per context, a (batch,) tensor, array or list (-1: unknown), checked against the model
    (CalendarInputError); None stays None."""
    if symbol is None:
        return None
    if isinstance(symbol, numbers.Integral) and not isinstance(symbol, bool):
        symbol = [int(symbol)] * batch
    values = _as_tensor(symbol, "symbol must be one integer id per context")
    check_symbol(values, (batch, length), model.config)
    values = values.to(device=device, dtype=torch.long)
    return values[:, None].expand(batch, length) if values.dim() == 1 else values


def _as_tensor(values, mistake: str) -> torch.Tensor:
    """`values` as a tensor (a tensor stays itself), or a CalendarInputError `mistake` (with torch's reason)."""
    if isinstance(values, torch.Tensor):
        return values
    try:
        return torch.as_tensor(values)
    except (TypeError, ValueError, RuntimeError) as err:
        raise CalendarInputError(f"{mistake} ({err})") from err


def _as_positions(values, batch: int, device, what: str, ids_text: str, check) -> torch.Tensor | None:
    """A per-position input as an int64 tensor on `device` after `check`; an array becomes a tensor and a 2-D input
    of one context gets its batch axis."""
    if values is None:
        return None
    values = _as_tensor(values, f"{what} must be an integer array of {ids_text} ids")
    if values.dim() == 2 and batch == 1:
        values = values[None]
    check(values)
    return values.to(device=device, dtype=torch.long)


def make_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator seeded with `seed`, or from OS entropy when seed is None (different paths every call)."""
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(check_int(seed, "seed", 0, MAX_GENERATOR_SEED))
    return generator


def make_generators(seed, batch: int, device: torch.device | str = "cpu"):
    """The sampling generator(s) of a generate call: one for all rows when `seed` is None or a whole number, else
    (a list or tuple of `batch` seeds) one per context, so a context's samples do not depend on the others."""
    hint = "a user's --seed is in [0, 4294967295]"  # derived per-origin seeds (config.derive_seed) use torch's range
    if not isinstance(seed, (list, tuple)):
        return make_generator(None if seed is None else check_int(seed, "seed", 0, MAX_GENERATOR_SEED, hint), device)
    if len(seed) != batch:
        raise DataError(f"got {len(seed)} seeds for {batch} contexts; give one seed per context or a single seed")
    return [make_generator(check_int(s, "seed", 0, MAX_GENERATOR_SEED, hint), device) for s in seed]


class Engine:
    """Generation around one model: `Engine(model).generate(contexts, 50, num_samples=100, seed=0)`."""

    def __init__(self, model: GPT):
        self.model = model

    def check_memory(self, batch: int, context_len: int, num_samples: int, max_new_tokens: int,
                     use_cache: bool = True) -> None:
        """ConfigError when a generate call of this size would need more than half of the free memory of the
        model's device (host RAM, or the GPU's free memory)."""
        model = self.model
        device = model.wte.weight.device
        needed = generation_bytes(model.config, batch, context_len, num_samples, max_new_tokens, use_cache,
                                  model.wte.weight.element_size())
        budget, where = memory_budget_bytes(), "this machine"
        if device.type == "cuda":
            budget, where = torch.cuda.mem_get_info(device)[0] // 2, str(device)
        check_memory(needed, f"sampling {batch * num_samples:,} paths of {max_new_tokens:,} tokens",
                     "ask for fewer samples (--num-samples) or fewer tokens (--num-generate), or split the work "
                     "into several calls", budget, where)

    def generate(
        self,
        idx,
        max_new_tokens: int,
        *,
        num_samples: int = 1,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | Sequence[int] | None = None,
        use_cache: bool = True,
        refill_len: int | None = None,
        autocast: torch.dtype | None = None,
        calendar=None,
        side=None,
        symbol=None,
    ) -> torch.Tensor:
        """Sample `num_samples` continuations of each context: idx (B, T) -> (B, num_samples, max_new_tokens).

        idx may also be a (T,) tensor or a list of ints (B = 1). Contexts longer than sequence_len keep their
        last sequence_len tokens. `refill_len` (default 3/4 sequence_len) is the window kept when it is full,
        see the module docstring. Same seed -> same paths; seed None -> fresh randomness. `seed` may also be a
        list of B seeds, one per context: each context's samples are then those it gets alone with that seed
        (whatever the other contexts), which is how many forecast origins share one call.
        `autocast` (e.g. torch.bfloat16): run the model under torch.autocast in that dtype, KV cache included;
        faster on CPUs with bf16 matrix instructions, but the rounding changes which paths a seed gives, and
        bf16 matrix products are not reproducible row by row across batch sizes, so with several contexts a
        context's paths then also depend on the others.
        `calendar` (B, T + max_new_tokens, 2) (or (T + max_new_tokens, 2) for one context): the calendar ids of
        every context token and every generated token, for a calendar model (see the module docstring); the
        samples of a context share its calendar. None: no calendar input.
        `side` (B, T + max_new_tokens, 3) (or (T + max_new_tokens, 3)): the side-channel ids of every position, for
        a side model, -1 where unknown (the generated positions); None: all unknown.
        `symbol` (B,) (or one int for every context): each context's symbol id (GPT.symbol_ids; -1 unknown), for a
        model with a symbol embedding; None: unknown.
        """
        with torch.inference_mode():
            paths = self._generate(idx, max_new_tokens, num_samples, temperature, top_k, top_p, seed, use_cache,
                                   refill_len, autocast, calendar, side, symbol)
        return paths.clone()  # cloned outside inference mode: callers get an ordinary, writable tensor

    def _generate(self, idx, max_new_tokens, num_samples, temperature, top_k, top_p, seed, use_cache, refill_len,
                  autocast, calendar, side, symbol):
        model, L = self.model, self.model.config.sequence_len
        args = check_sampling_args(max_new_tokens, num_samples, temperature, top_k, top_p)
        max_new_tokens, num_samples = args["max_new_tokens"], args["num_samples"]
        temperature, top_k, top_p = args["temperature"], args["top_k"], args["top_p"]
        refill_len = refill_len if refill_len is not None else max(1, L - L // 4)
        refill_len = check_int(refill_len, "refill_len", 1, L, f"at most sequence_len={L}")
        device = model.wte.weight.device
        contexts = as_contexts(idx, device)
        check_token_ids(contexts, model.config.vocab_size, "context tokens")
        length = contexts.size(1) + max_new_tokens
        inputs = {name: values[:, max(0, contexts.size(1) - L):]  # cropped with its context
                  for name, values in (("calendar", as_calendar(calendar, contexts.size(0), length, model, device)),
                                       ("side", as_side(side, contexts.size(0), length, model, device)),
                                       ("symbol", as_symbol(symbol, contexts.size(0), length, model, device)))
                  if values is not None}
        contexts = contexts[:, -L:]
        B, T = contexts.shape
        rows = B * num_samples
        generator = make_generators(seed, B, device)
        if max_new_tokens == 0:
            return torch.empty(B, num_samples, 0, dtype=torch.long, device=device)
        self.check_memory(B, T, num_samples, max_new_tokens, use_cache)

        # Every row's context followed by its samples; the model always reads a window tokens[:, start:n].
        tokens = torch.empty(rows, T + max_new_tokens, dtype=torch.long, device=device)
        tokens[:, :T] = contexts.repeat_interleave(num_samples, dim=0)
        sample = dict(temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)

        was_training = model.training
        model.eval()
        try:
            with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
                self._decode(contexts, tokens, max_new_tokens, num_samples, use_cache, refill_len, sample, autocast,
                             inputs)
        finally:
            model.train(was_training)
        return tokens[:, T:].reshape(B, num_samples, max_new_tokens)

    def _decode(self, contexts, tokens, max_new_tokens, num_samples, use_cache, refill_len, sample, autocast,
                inputs):
        """Fill tokens[:, T:] of the (rows, T + max_new_tokens) buffer in place, one token per step. inputs: the
        model's per-position inputs per context, (B, T + max_new_tokens, ...) each ("calendar", "side"; maybe
        none)."""
        model, L = self.model, self.model.config.sequence_len
        (B, T), rows = contexts.shape, tokens.size(0)

        def window(lo: int, hi: int, repeats: int = num_samples) -> dict:
            """The inputs at buffer positions [lo, hi), each context's repeated for its `repeats` rows."""
            return {name: values[:, lo:hi].repeat_interleave(repeats, dim=0) for name, values in inputs.items()}

        start = 0
        if use_cache:
            prefix = KVCache.for_model(model, rows=B, max_len=T, dtype=autocast)
            logits = model(contexts, kv_cache=prefix, **window(0, T, 1))[:, -1]
            logits_of = torch.arange(rows, device=tokens.device) // num_samples  # each sample row's logits row
            # The keys of the tokens fed back: all but the last generated, up to the end of the first window.
            cache = PrefixKVCache(prefix, num_samples, max_new=min(max_new_tokens - 1, L - T))
            # The cache row holding each sample row's path so far: its context's first, all paths being empty.
            path = logits_of * num_samples
        else:
            logits, logits_of = model(tokens[:, :T], **window(0, T))[:, -1], None
        tokens[:, T] = sample_next_token(logits, rows=logits_of, **sample)
        for n in range(T + 1, T + max_new_tokens):  # n tokens known, predict token n
            refill = n - start > L
            if refill:
                start = n - refill_len
            logits_of = None  # a logits row per sample row, unless rows share their path
            if not use_cache:
                logits = model(tokens[:, start:n], **window(start, n))[:, -1]
            elif refill:  # the rows no longer share a prefix: one cache row per sample row from now on
                if not isinstance(cache, KVCache):
                    cache = KVCache.for_model(model, rows=rows, max_len=L, dtype=autocast)
                cache.reset()
                logits = model(tokens[:, start:n], kv_cache=cache, **window(start, n))[:, -1]
            elif isinstance(cache, PrefixKVCache):  # one forward per distinct path, its logits for each of its rows
                path, parents, newest, width = distinct_paths(path, tokens[:, n - 1], model.config.vocab_size,
                                                              cache.rows_per_context, min(rows, MIN_GEMM_ROWS))
                cache.keep_rows(parents)
                logits, logits_of = model(newest[:, None], kv_cache=cache, **window(n - 1, n, width))[:, -1], path
            else:
                logits = model(tokens[:, n - 1 : n], kv_cache=cache, **window(n - 1, n))[:, -1]
            tokens[:, n] = sample_next_token(logits, rows=logits_of, **sample)


def generate(model: GPT, idx, max_new_tokens: int, **sampling) -> torch.Tensor:
    """Sample continuations of `model`: idx (B, T) (or a 1-D tensor / list of ints) -> (B, num_samples,
    max_new_tokens). `sampling`: num_samples, temperature, top_k, top_p, seed, use_cache, calendar (B, T +
    max_new_tokens, 2) for a calendar model, side (B, T + max_new_tokens, 3) for a side model (Engine.generate)."""
    return Engine(model).generate(idx, max_new_tokens, **sampling)
