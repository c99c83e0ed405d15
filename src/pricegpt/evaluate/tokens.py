"""Token metrics on one split: cross-entropy loss (nats), perplexity, top-1 and top-5 accuracy of the next token,
for the model and for two count baselines, all over exactly the same target tokens; and the model's size.

Tokens come from encoding the price data with the run's tokenizer (a patch belongs to the split of its last bar,
as in training). A target is every token of the split except a symbol's very first token (nothing precedes it).
The model sees up to `sequence_len` preceding tokens of the same symbol (earlier splits included: they are the
past); windows are strided by half the context so every target has at least sequence_len / 2 tokens of context
(except near a symbol's start).

Baselines, fit on the TRAIN split's tokens only: unigram p(t) and bigram p(t | previous token) with add-k
smoothing, k = 0.5 fixed in advance (not tuned on any split). Ties in the top-k ranking are broken by token id.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ..config.schema import SIDE_CHANNELS
from ..data import SPLIT_NAMES, Splits
from ..data.calendar import calendar_ids
from ..tokenizer.side import patch_side, side_values

ADD_K = 0.5
TOP_K = 5
EVAL_BATCH = 64


def token_streams(tokenizer, frame: pd.DataFrame, splits: Splits,
                  with_ends: bool = False) -> dict[str, tuple[np.ndarray, ...]]:
    """Per symbol: (token ids (n,) int64, split labels (n,) of each token's last bar[, its end time])."""
    out = {}
    for symbol, patches in tokenizer.patchify(frame).items():
        if len(patches) == 0:
            continue
        ids = tokenizer.encode_patches(patches, symbol)
        out[symbol] = (ids, splits.label(pd.to_datetime(patches.ends, utc=True))) + \
            ((patches.ends,) if with_ends else ())
    return out


@torch.inference_mode()
def model_logits_at(model, stream: np.ndarray, positions: np.ndarray, calendar: np.ndarray | None = None,
                    side: np.ndarray | None = None, symbol: str | None = None) -> torch.Tensor:
    """Logits (len(positions), V) predicting stream[q] from up to sequence_len tokens before q, positions >= 1.
    calendar: (n, 2) [time of day, weekday] of every token of the stream, for a calendar model; side: (n, 3)
    side-channel ids of every token, for a side model; symbol: the stream's symbol, for a model with asset identity
    (its row, or the "unknown" row for a symbol it was not trained on)."""
    T = model.config.sequence_len
    group = max(1, T // 2)
    device = next(model.parameters()).device
    windows, picks = [], []  # (start, stop) of each input window, and where each target's logits sit in it
    for g in range(0, len(positions), group):
        chunk = positions[g:g + group]
        stop = int(chunk[-1])  # inputs stream[start:stop] end just before the last target
        start = max(0, stop - T)
        assert int(chunk[0]) - 1 >= start, "a target's own predecessor fell outside its window"
        windows.append((start, stop))
        picks.append(chunk - 1 - start)
    stream_t = torch.as_tensor(stream, dtype=torch.long)
    inputs = {name: torch.as_tensor(np.asarray(values), dtype=torch.long)
              for name, values in (("calendar", calendar), ("side", side)) if values is not None}
    row = model.symbol_ids([symbol]).to(device) \
        if getattr(model.config, "symbol_embedding", False) and symbol is not None else None
    out = [None] * len(windows)
    by_len: dict[int, list[int]] = {}
    for w, (start, stop) in enumerate(windows):
        by_len.setdefault(stop - start, []).append(w)
    for members in by_len.values():
        for b in range(0, len(members), EVAL_BATCH):
            batch = members[b:b + EVAL_BATCH]
            idx = torch.stack([stream_t[windows[w][0]:windows[w][1]] for w in batch]).to(device)
            extra = {name: torch.stack([values[windows[w][0]:windows[w][1]] for w in batch]).to(device)
                     for name, values in inputs.items()}
            if row is not None:
                extra["symbol"] = row.expand(len(batch))
            logits = model(idx, **extra).float().cpu()
            for j, w in enumerate(batch):
                out[w] = logits[j, torch.as_tensor(picks[w])]
    return torch.cat(out) if out else torch.zeros(0, model.config.vocab_size)


def _scores(log_probs: torch.Tensor, targets: torch.Tensor) -> dict:
    """loss, perplexity, top1, top5 from log-probabilities (n, V) and targets (n,)."""
    loss = float(F.nll_loss(log_probs, targets))
    k = min(TOP_K, log_probs.shape[-1])
    # Stable ranking: a higher probability first, ties broken by the lower token id.
    order = torch.argsort(-log_probs, dim=-1, stable=True)
    hits = order[:, :k] == targets[:, None]
    return {"loss": loss, "perplexity": math.exp(loss), "top1": float(hits[:, 0].float().mean()),
            "top5": float(hits.any(dim=-1).float().mean())}


def ngram_log_probs(streams: dict, vocab_size: int, k: float = ADD_K):
    """Unigram (V,) and bigram (V, V) log-probabilities with add-k smoothing, from train-split tokens only."""
    unigram = np.full(vocab_size, k)
    bigram = np.full((vocab_size, vocab_size), k)
    for ids, labels in streams.values():
        train = ids[labels == 0]
        np.add.at(unigram, train, 1.0)
        if len(train) > 1:  # train tokens are a prefix of the stream, so consecutive ones are consecutive bars
            np.add.at(bigram, (train[:-1], train[1:]), 1.0)
    return (np.log(unigram / unigram.sum()), np.log(bigram / bigram.sum(axis=1, keepdims=True)))


def token_metrics(model, tokenizer, frame: pd.DataFrame, splits: Splits, split: str) -> dict:
    """{"n_tokens", "model", "unigram", "bigram" (each {loss, perplexity, top1, top5}), "smoothing", "usage",
    "size"}."""
    code = SPLIT_NAMES.index(split)
    uses_calendar = bool(getattr(model.config, "calendar", False))
    streams = token_streams(tokenizer, frame, splits, with_ends=uses_calendar)
    sides = token_side(model, tokenizer, frame, streams)
    V = model.config.vocab_size
    unigram, bigram = ngram_log_probs({s: v[:2] for s, v in streams.items()}, V)
    model_lp, uni_lp, bi_lp, targets = [], [], [], []
    for symbol, (ids, labels, *ends) in streams.items():
        calendar = np.stack(calendar_ids(ends[0]), axis=-1) if ends else None
        positions = np.flatnonzero(labels == code)
        positions = positions[positions >= 1]
        if len(positions) == 0:
            continue
        side = None if sides is None else sides[symbol]
        model_lp.append(torch.log_softmax(model_logits_at(model, ids, positions, calendar, side, symbol),
                                          dim=-1))
        uni_lp.append(torch.as_tensor(np.broadcast_to(unigram, (len(positions), V)).copy()))
        bi_lp.append(torch.as_tensor(bigram[ids[positions - 1]]))
        targets.append(torch.as_tensor(ids[positions]))
    if not targets:
        return {"n_tokens": 0, "model": None, "unigram": None, "bigram": None,
                "note": f"no {split} tokens: the split is shorter than one patch per symbol"}
    y = torch.cat(targets)
    return {"n_tokens": int(len(y)), "model": _scores(torch.cat(model_lp), y),
            "unigram": _scores(torch.cat(uni_lp), y), "bigram": _scores(torch.cat(bi_lp), y),
            "smoothing": f"add-{ADD_K:g} (fixed, not tuned), fit on train-split tokens",
            "usage": code_usage(y.numpy(), V), "size": model_size(model)}


def token_side(model, tokenizer, frame: pd.DataFrame, streams: dict) -> dict[str, np.ndarray] | None:
    """Per symbol of `streams`, the side-channel ids (n, 3) of its tokens for a side model (None otherwise); a frame
    without open/high/low gives every token unknown ids."""
    if not getattr(model.config, "side", False):
        return None
    values = side_values(frame)
    return {s: np.full((len(v[0]), SIDE_CHANNELS), -1) if values is None else
            model.side_ids(patch_side(values[s], tokenizer.patch_len)).numpy() for s, v in streams.items()}


def code_usage(ids: np.ndarray, vocab_size: int) -> dict:
    """Counts per token id, codes used, and the usage perplexity exp(entropy) of the empirical distribution."""
    counts = np.bincount(ids, minlength=vocab_size)
    p = counts[counts > 0] / counts.sum()
    return {"counts": counts.tolist(), "codes_used": int((counts > 0).sum()),
            "usage_perplexity": float(np.exp(-(p * np.log(p)).sum()))}


def model_size(model) -> dict:
    """Parameters per component and the weights' memory in fp32 and bf16."""
    breakdown = model.param_breakdown()
    total = int(breakdown["total"])
    return {"params": {k: int(v) for k, v in breakdown.items()}, "n_params": total,
            "bytes_fp32": 4 * total, "bytes_bf16": 2 * total}
