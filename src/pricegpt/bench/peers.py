"""The peers pricegpt is measured against: one training step of pricegpt's GPT, of Hugging Face's
`LlamaForCausalLM` of the same shape and parameter count, and of `LeanGPT`, a plain GPT-2-style model written here
(issue 19), with each model's training FLOPs per token.

LeanGPT is the fast peer: learned positions, LayerNorm (weight and bias), one fused q/k/v matmul, one causal
`F.scaled_dot_product_attention` call, a GELU (tanh) MLP of mlp_ratio x width, a final LayerNorm and an untied
head, as pricegpt's is. Its Linear layers have no biases, as pricegpt's have none, so both run the same weight
matmuls; the extra parameters are the positional table and the LayerNorms' (under 1% at the seed shape). No
rotary, no QK-norm, no ReLU^2, no softcap: what those cost is what the ratio shows.

`compiled=True` wraps the model in `torch.compile` as the trainer does with `train.compile=true` (the module:
forward and backward; the optimizer step stays eager), for pricegpt and LeanGPT alike.

transformers is the optional `bench` extra: it is imported inside the functions that build the Llama peer.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import TrainConfig
from ..model import GPT, KVCache
from ..train.optim import build_optimizers
from .harness import cpu_autocast


def llama_config(config, intermediate_size: int | None = None):
    """A transformers LlamaConfig of the GPT's shape. The default intermediate size, 2/3 of pricegpt's MLP width
    rounded to a multiple of 8, gives SwiGLU's three matrices the parameters and FLOPs of pricegpt's two."""
    from transformers import LlamaConfig  # the optional bench extra

    if intermediate_size is None:
        intermediate_size = round(2 * config.mlp_ratio * config.n_embd / 3 / 8) * 8
    return LlamaConfig(vocab_size=config.vocab_size, hidden_size=config.n_embd, intermediate_size=intermediate_size,
                       num_hidden_layers=config.n_layer, num_attention_heads=config.n_head,
                       num_key_value_heads=config.n_kv_head, max_position_embeddings=config.sequence_len,
                       rope_parameters={"rope_theta": config.rope_base, "rope_type": "default"},
                       tie_word_embeddings=False, attention_bias=False, mlp_bias=False, attn_implementation="sdpa",
                       bos_token_id=None, eos_token_id=None, pad_token_id=0)


def llama_flops_per_token(model, config) -> float:
    """Llama's own 6N + attention, counted as GPT.flops_per_token counts pricegpt's (N without the embedding)."""
    n = sum(p.numel() for p in model.parameters()) - model.get_input_embeddings().weight.numel()
    return 6 * n + 12 * config.n_layer * config.n_embd * config.sequence_len


def _random_windows(config, batch_size: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, config.vocab_size, (batch_size, config.sequence_len + 1), generator=generator)


def pricegpt_train_step(config, batch_size: int, autocast: torch.dtype | None, seed: int = 0,
                        compiled: bool = False):
    """(one optimizer step as a function, training FLOPs per token) of a fresh GPT with the trainer's AdamW."""
    torch.manual_seed(seed)
    model = GPT(config)
    optimizers = build_optimizers(model, TrainConfig())
    return _windows_step(model, optimizers, config, batch_size, autocast, seed, compiled), model.flops_per_token(
        config.sequence_len)


def _windows_step(model, optimizers, config, batch_size: int, autocast: torch.dtype | None, seed: int,
                  compiled: bool = False):
    """One training step as a function: `model(inputs, targets)` -> loss on fixed random windows, backward, and
    every optimizer stepped and zeroed (pricegpt's and the lean GPT's steps alike). `compiled`: the model runs
    through `torch.compile` (compiled on the first call)."""
    windows = _random_windows(config, batch_size, seed)
    inputs, targets = windows[:, :-1], windows[:, 1:]
    if compiled:
        model = torch.compile(model)

    def step():
        with cpu_autocast(autocast):
            loss = model(inputs, targets)
        loss.backward()
        for optimizer in optimizers:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    return step


def llama_train_step(config, batch_size: int, autocast: torch.dtype | None, seed: int = 0):
    """The same for transformers' LlamaForCausalLM (loss from its own `labels` path) and torch AdamW."""
    from transformers import LlamaForCausalLM  # the optional bench extra

    torch.manual_seed(seed)
    model = LlamaForCausalLM(llama_config(config)).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    inputs = _random_windows(config, batch_size, seed)[:, :-1]

    def step():
        with cpu_autocast(autocast):
            loss = model(input_ids=inputs, labels=inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step, llama_flops_per_token(model, config)


# ------------------------------------------------------------------------------------------------- lean GPT
class _LeanBlock(nn.Module):
    def __init__(self, config):
        super().__init__()
        e, self.n_head = config.n_embd, config.n_head
        self.ln_1, self.ln_2 = nn.LayerNorm(e), nn.LayerNorm(e)
        self.c_attn = nn.Linear(e, 3 * e, bias=False)
        self.attn_proj = nn.Linear(e, e, bias=False)
        self.c_fc = nn.Linear(e, config.mlp_ratio * e, bias=False)
        self.mlp_proj = nn.Linear(config.mlp_ratio * e, e, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, E = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).view(B, T, 3, self.n_head, E // self.n_head).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.attn_proj(y.transpose(1, 2).reshape(B, T, E))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class LeanGPT(nn.Module):
    """A plain GPT-2-style decoder of a GPTConfig's width, depth, heads (all key/value heads: no GQA), vocabulary
    and sequence length. idx (B, T) -> logits (B, T, V), or with targets (B, T) the mean cross-entropy."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.sequence_len, config.n_embd)
        self.blocks = nn.ModuleList([_LeanBlock(config) for _ in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        for name, p in self.named_parameters():  # GPT-2's init: N(0, 0.02), residual projections / sqrt(2 L)
            if p.dim() == 2:
                std = 0.02 / math.sqrt(2 * config.n_layer) if name.endswith("proj.weight") else 0.02
                nn.init.normal_(p, mean=0.0, std=std)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        T = idx.size(1)
        x = self.wte(idx) + self.wpe(torch.arange(T, device=idx.device))
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        if targets is None:
            return logits
        return F.cross_entropy(logits.flatten(0, 1).float(), targets.reshape(-1))

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Counted as GPT.flops_per_token counts pricegpt's: 6 x the matmul weights (every Linear) plus
        12 * n_layer * n_embd * T for the attention scores and weighted values."""
        c = self.config
        T = c.sequence_len if seq_len is None else seq_len
        matmul = sum(m.weight.numel() for m in self.modules() if isinstance(m, nn.Linear))
        return 6 * matmul + 12 * c.n_layer * c.n_embd * T


def lean_optimizer(model: nn.Module, train: TrainConfig | None = None) -> torch.optim.AdamW:
    """AdamW as pricegpt's trainer builds it (build_optimizers with the default TrainConfig): the same lr, betas,
    eps and weight decay on 2-D tensors only (the LayerNorms' weights and biases are not decayed)."""
    train = train or TrainConfig()
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": train.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=train.lr, betas=(train.beta1, train.beta2), eps=1e-8)


def lean_train_step(config, batch_size: int, autocast: torch.dtype | None, seed: int = 0, compiled: bool = False):
    """The same for LeanGPT: the same windows, the same autocast and the trainer's AdamW settings."""
    torch.manual_seed(seed)
    model = LeanGPT(config).train()
    optimizers = [lean_optimizer(model)]
    return _windows_step(model, optimizers, config, batch_size, autocast, seed, compiled), model.flops_per_token(
        config.sequence_len)


def decode_before_issue15(model: GPT, context: torch.Tensor, max_new_tokens: int, num_samples: int,
                          seed: int) -> torch.Tensor:
    """The decode loop the forecaster ran when issue 15 was filed (the engine of commit 1446cd9), on today's model:
    one call per forecast origin, the context's keys and values copied to every sample row after the prefill, every
    row decoded on its own (no shared prefix, no merging of equal paths) and `torch.multinomial` sampling at
    temperature 1. context (T,) -> (num_samples, max_new_tokens). Kept frozen as the peer of "3x the decode
    throughput of then" (the model's own forward is today's, so the ratio credits only the engine)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.inference_mode():
        cache = KVCache.for_model(model, rows=1, max_len=context.numel() + max_new_tokens)
        logits = model(context[None], kv_cache=cache)[:, -1].repeat_interleave(num_samples, dim=0)
        cache = cache.repeat_rows(num_samples)
        tokens = torch.empty(num_samples, max_new_tokens, dtype=torch.long)
        for n in range(max_new_tokens):
            tokens[:, n] = torch.multinomial(torch.softmax(logits.float(), dim=-1), 1, generator=generator)[:, 0]
            if n + 1 < max_new_tokens:
                logits = model(tokens[:, n : n + 1], kv_cache=cache)[:, -1]
    return tokens
