"""The peers pricegpt is measured against: one training step of pricegpt's GPT and of Hugging Face's
`LlamaForCausalLM` of the same shape and parameter count, and each model's training FLOPs per token.

transformers is the optional `bench` extra: it is imported inside the functions that build the Llama peer.
"""

from __future__ import annotations

import torch

from ..config import TrainConfig
from ..model import GPT
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


def pricegpt_train_step(config, batch_size: int, autocast: torch.dtype | None, seed: int = 0):
    """(one optimizer step as a function, training FLOPs per token) of a fresh GPT with the trainer's AdamW."""
    torch.manual_seed(seed)
    model = GPT(config)
    optimizers = build_optimizers(model, TrainConfig())
    windows = _random_windows(config, batch_size, seed)
    inputs, targets = windows[:, :-1], windows[:, 1:]

    def step():
        with cpu_autocast(autocast):
            loss = model(inputs, targets)
        loss.backward()
        for optimizer in optimizers:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    return step, model.flops_per_token(config.sequence_len)


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
