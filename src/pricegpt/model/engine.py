"""Sampling continuations from a GPT: a preallocated KV cache, the sampling rule, and the generation loop.

Generation of `num_samples` paths for each of B contexts:
1. crop each context to its last `sequence_len` tokens,
2. prefill the B contexts once (one cache row per context, not per sample),
3. copy each cache row to its `num_samples` sample rows (N = B * num_samples rows),
4. decode all N rows together, one token per step, attending over the filled part of the cache.

Context window. Rotary positions must stay in [0, sequence_len), the lengths the model was trained on, so the
tokens the model sees form a window tokens[start:n] of at most sequence_len tokens. When one more token would
overflow it, the window restarts at the last `refill_len` tokens (default 3/4 of sequence_len) and the cache is
re-prefilled from them: the context never shrinks below refill_len tokens, and the re-prefill costs about
refill_len / (sequence_len - refill_len) = 3 token-forwards per generated token, amortised. `use_cache=False`
recomputes a full forward over the same window every step: it is the reference the cache is tested against,
so both paths see exactly the same tokens at the same positions and draw random numbers in the same order.

Arguments are checked before anything is allocated (bounds in config.py): temperature 0 (greedy) or in
[1e-3, 100], top_k >= 1, top_p in [1e-3, 1], a seed in [0, 2**64 - 1], at most 100,000 new tokens, and a
request whose estimated peak memory (`generation_bytes`) exceeds half of the free memory is a ConfigError.
"""

from __future__ import annotations

import torch

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
from .gpt import GPT, check_token_ids


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
    def for_model(cls, model: GPT, rows: int, max_len: int | None = None) -> KVCache:
        c = model.config
        weight = model.wte.weight
        return cls(c.n_layer, rows, c.n_kv_head, max_len or c.sequence_len, c.head_dim, weight.dtype, weight.device)

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

    def advance(self, num_tokens: int) -> None:
        self.pos += num_tokens

    def reset(self) -> None:
        self.pos = 0

    def repeat_rows(self, repeats: int) -> KVCache:
        """A cache with each row repeated `repeats` times in a row (row r -> rows r*repeats ... r*repeats+repeats-1)."""
        n_layer, rows, n_kv_head, max_len, head_dim = self.k.shape
        out = KVCache(n_layer, rows * repeats, n_kv_head, max_len, head_dim, self.k.dtype, self.k.device)
        for src, dst in ((self.k, out.k), (self.v, out.v)):
            # Broadcast copy of the filled part only; no repeated intermediate tensor.
            dst.view(n_layer, rows, repeats, n_kv_head, max_len, head_dim)[..., : self.pos, :] = src[
                :, :, None, :, : self.pos
            ]
        out.pos = self.pos
        return out


def sample_next_token(
    logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """logits (N, V) -> token ids (N,) int64.

    temperature 0 is greedy (argmax). Otherwise logits / temperature, then top-k (keep the k largest logits;
    ties with the k-th are kept), then top-p (keep the smallest set of most likely tokens whose probability
    reaches top_p), then one multinomial draw per row from `generator`. Settings outside the bounds of
    config.check_temperature / check_top_k / check_top_p are ConfigErrors.
    """
    temperature, top_k, top_p = check_temperature(temperature), check_top_k(top_k), check_top_p(top_p)
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
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
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


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
    kv = 2 * c.n_layer * (rows + batch) * c.n_kv_head * L * c.head_dim * dtype_bytes if use_cache else 0
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


def make_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator seeded with `seed`, or from OS entropy when seed is None (different paths every call)."""
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(check_int(seed, "seed", 0, MAX_GENERATOR_SEED))
    return generator


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
        seed: int | None = None,
        use_cache: bool = True,
        refill_len: int | None = None,
    ) -> torch.Tensor:
        """Sample `num_samples` continuations of each context: idx (B, T) -> (B, num_samples, max_new_tokens).

        idx may also be a (T,) tensor or a list of ints (B = 1). Contexts longer than sequence_len keep their
        last sequence_len tokens. `refill_len` (default 3/4 sequence_len) is the window kept when it is full,
        see the module docstring. Same seed -> same paths; seed None -> fresh randomness.
        """
        with torch.inference_mode():
            paths = self._generate(
                idx, max_new_tokens, num_samples, temperature, top_k, top_p, seed, use_cache, refill_len
            )
        return paths.clone()  # cloned outside inference mode: callers get an ordinary, writable tensor

    def _generate(self, idx, max_new_tokens, num_samples, temperature, top_k, top_p, seed, use_cache, refill_len):
        model, L = self.model, self.model.config.sequence_len
        args = check_sampling_args(max_new_tokens, num_samples, temperature, top_k, top_p)
        max_new_tokens, num_samples = args["max_new_tokens"], args["num_samples"]
        temperature, top_k, top_p = args["temperature"], args["top_k"], args["top_p"]
        if seed is not None:  # derived per-call seeds (config.derive_seed) use torch's whole range
            seed = check_int(seed, "seed", 0, MAX_GENERATOR_SEED, "a user's --seed is in [0, 4294967295]")
        refill_len = refill_len if refill_len is not None else max(1, L - L // 4)
        refill_len = check_int(refill_len, "refill_len", 1, L, f"at most sequence_len={L}")
        device = model.wte.weight.device
        contexts = as_contexts(idx, device)
        check_token_ids(contexts, model.config.vocab_size, "context tokens")
        contexts = contexts[:, -L:]
        B, T = contexts.shape
        rows = B * num_samples
        if max_new_tokens == 0:
            return torch.empty(B, num_samples, 0, dtype=torch.long, device=device)
        self.check_memory(B, T, num_samples, max_new_tokens, use_cache)

        # Every row's context followed by its samples; the model always reads a window tokens[:, start:n].
        tokens = torch.empty(rows, T + max_new_tokens, dtype=torch.long, device=device)
        tokens[:, :T] = contexts.repeat_interleave(num_samples, dim=0)
        generator = make_generator(seed, device)
        sample = dict(temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)

        was_training = model.training
        model.eval()
        try:
            start = 0
            if use_cache:
                cache = KVCache.for_model(model, rows=B, max_len=L)
                logits = model(contexts, kv_cache=cache)[:, -1].repeat_interleave(num_samples, dim=0)
                cache = cache.repeat_rows(num_samples)
            else:
                logits = model(tokens[:, :T])[:, -1]
            tokens[:, T] = sample_next_token(logits, **sample)
            for n in range(T + 1, T + max_new_tokens):  # n tokens known, predict token n
                refill = n - start > L
                if refill:
                    start = n - refill_len
                if not use_cache:
                    logits = model(tokens[:, start:n])[:, -1]
                elif refill:
                    cache.reset()
                    logits = model(tokens[:, start:n], kv_cache=cache)[:, -1]
                else:
                    logits = model(tokens[:, n - 1 : n], kv_cache=cache)[:, -1]
                tokens[:, n] = sample_next_token(logits, **sample)
        finally:
            model.train(was_training)
        return tokens[:, T:].reshape(B, num_samples, max_new_tokens)


def generate(model: GPT, idx, max_new_tokens: int, **sampling) -> torch.Tensor:
    """Sample continuations of `model`: idx (B, T) (or a 1-D tensor / list of ints) -> (B, num_samples,
    max_new_tokens). `sampling`: num_samples, temperature, top_k, top_p, seed, use_cache (Engine.generate)."""
    return Engine(model).generate(idx, max_new_tokens, **sampling)
