"""Token analysis: what the "language" of a token stream looks like.

`pricegpt analyze --tokens DIR|FILE.txt [--out DIR] [--tokenizer DIR]`, or from Python:

    result = analyze("runs/x/tokens")        # every number, as a dict (matrices as numpy arrays)
    write_plots(result, "some/dir")          # token_frequency.png, transition_matrix.png
    result, out, names = analyze_to_dir("runs/x/tokens")   # what the command does: analysis.json and the PNGs
(cli/text.py's `format_report(result)` is the command's text: aligned tables, one heading per section.)

Definitions (all counts are taken within each symbol: no pair, n-gram or block crosses a symbol boundary)
- vocabulary: count and frequency of each of the K codes (K = the store's vocab_size), unused codes, and per
  symbol its tokens, distinct codes and unigram entropy.
- transitions: counts of token -> next token, row-normalised into P(next | token); a code that is never followed
  by anything has an all-zero row.
- patterns: bigrams are compared with independence, expected = R_a C_b / N (the product of the first- and
  second-position marginals). Trigrams are compared with the first-order Markov chain, expected = N_ab N_bc / N_b
  (given the middle token, first and last are independent), so a trigram is significant only when it is more
  frequent than its two bigrams explain. Test: one-sided Poisson, p = P(X >= count | expected). Multiple testing:
  Benjamini-Hochberg at q = 0.05 over every n-gram with a positive expected count (unseen ones are hypotheses
  with p = 1); `q_value` is the BH-adjusted p.
- outliers: rare tokens are used codes with frequency below 1/(10 K), a tenth of the uniform share. With a
  tokenizer (given, or the store's own copy) each code is decoded alone (global scale) and its return is the sum
  over the patch; a used code with |z| > 3 against the usage-weighted mean and standard deviation of those
  returns is extreme.
- entropy, in bits, plug-in: unigram H(X), and H(X_t | X_{t-k..t-1}) for k = 0..3 as H(block of k+1) minus
  H(its first k tokens) over the same blocks (k = 1 is the conditional entropy given the previous token).
  Plug-in entropies are biased low by about (B - 1) / (2 N ln 2) bits for B distinct blocks among N; the
  Miller-Madow column adds that back. The entropy-rate estimate is the Miller-Madow value at the largest k
  whose blocks were each seen at least 10 times on average: a longer context is undersampled, and its plug-in
  entropy drops far below the rate (N blocks can never show more than log2 N bits). The maximum is log2 K.

With `--run RUN` (a calendar model: model.calendar) the analysis also shows what the model learned about the
clock (`calendar_profile`): for each 30-minute time-of-day slot s, the standard deviation of the next token's
decoded return under the model's predicted distribution, when the last context token's time of day is set to s
(its weekday and the rest of the window as in the data), pooled over up to 256 windows spread evenly over the
store's validation split (its train split when it has none); relative to the mean over slots, with the same
number when that time of day is unknown (-1), and how many of the store's tokens end in each slot. A flat profile
is a model that learned nothing of the time of day.

Output: `--out DIR`, else `<store>/analysis` for a store directory and `<stem>_analysis/` beside a token file.
The directory is built atomically and replaces an existing one only if that is empty or an earlier analysis
(analysis.json of kind "pricegpt.analysis", PNGs and pricegpt's marker file, nothing else); under a user-named
--out, only an earlier analysis of the same input. Anything else there is an error and is never touched.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import torch

from . import plots
from .errors import DataError, OutputExistsError, TokenizerError
from .fileio import OUTPUT_MARKER, atomic_dir, write_json
from .tokenizer import TokenStore, load_tokenizer

KIND = "pricegpt.analysis"
FDR_Q = 0.05  # Benjamini-Hochberg false discovery rate
RARE_SHARE = 0.1  # rare: frequency below RARE_SHARE / K
Z_EXTREME = 3.0
MAX_CONTEXT = 3  # entropy H(X_t | k previous) for k = 0..MAX_CONTEXT
MIN_PER_BLOCK = 10  # average samples per observed block for a context length to count as reliable
TOP = 10  # rows in the printed "most frequent" tables
MAX_LISTED = 1000  # significant n-grams / rare / extreme tokens kept in the result
MAX_DENSE = 1 << 24  # count with bincount (dense) up to this many cells, else sort
JSON_NAME = "analysis.json"
PLOT_NAMES = ("token_frequency.png", "transition_matrix.png")


# --------------------------------------------------------------------------------------------------- input
def _check_exists(path: Path) -> None:
    if not path.exists():
        raise DataError(f"{path} does not exist; --tokens takes a token store directory or a .txt file of token ids")


def _open(store_or_path, tokenizer):
    """(store, input path or None, tokenizer object or None) from what the caller passed."""
    source = None
    store = store_or_path
    if isinstance(store_or_path, (str, os.PathLike)):
        path = Path(store_or_path)
        _check_exists(path)
        store, source = TokenStore.open(path), str(path.resolve())
    if tokenizer is None and getattr(store, "tokenizer_dir", None) is not None:
        tokenizer = store.tokenizer_dir
    if isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = load_tokenizer(tokenizer)
    if tokenizer is not None and getattr(tokenizer, "vocab_size", None) not in (None, store.vocab_size):
        raise DataError(f"the tokenizer has {tokenizer.vocab_size} codes but the tokens {store.vocab_size}: they "
                        "come from different tokenizers; pass the tokenizer the tokens were written with")
    return store, source, tokenizer


def _sequences(store, where: str) -> tuple[list[str], list[np.ndarray], int]:
    vocab_size = int(store.vocab_size)
    symbols = [str(s) for s in store.symbols]
    seqs = [np.asarray(store.tokens(s)).astype(np.int64, copy=False).ravel() for s in store.symbols]
    used = [s for s in seqs if s.size]
    if not used:
        raise DataError(f"{where} holds no tokens; tokenize some prices first (`pricegpt tokenize`)")
    lo, hi = min(int(s.min()) for s in used), max(int(s.max()) for s in used)
    if lo < 0 or hi >= vocab_size:
        raise DataError(f"{where}: token ids must lie in [0, {vocab_size}) (the vocabulary size); found {lo}..{hi}")
    if vocab_size * vocab_size > MAX_DENSE:
        raise DataError(f"{where}: a vocabulary of {vocab_size} codes is too large for a dense transition matrix "
                        f"(at most {math.isqrt(MAX_DENSE)})")
    return symbols, seqs, vocab_size


# ---------------------------------------------------------------------------------------------- counting
def _block_counts(tokens: np.ndarray, remaining: np.ndarray, n: int, K: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct n-blocks inside symbols as sorted (codes, counts), code = sum_j tokens[i+j] * K**(n-1-j).

    `remaining[i]` is the number of tokens from i to the end of its symbol: a block starting at i stays inside
    the symbol iff remaining[i] >= n.
    """
    starts = tokens.size - n + 1
    if starts <= 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    codes = tokens[:starts].copy()
    for j in range(1, n):
        codes *= K
        codes += tokens[j:j + starts]
    codes = codes[remaining[:starts] >= n]
    if K**n <= MAX_DENSE:
        counts = np.bincount(codes, minlength=K**n)
        nonzero = np.flatnonzero(counts)
        return nonzero, counts[nonzero]
    return np.unique(codes, return_counts=True)


def _entropy_bits(counts: np.ndarray) -> float:
    counts = np.asarray(counts, dtype=np.float64)
    counts = counts[counts > 0]
    if counts.size == 0:
        return 0.0
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum()) + 0.0  # + 0.0 turns -0.0 into 0.0


def _conditional_entropy(codes: np.ndarray, counts: np.ndarray, K: int, k: int) -> dict:
    """H(X_t | k previous tokens) from the (k+1)-blocks: H(blocks) - H(their first k tokens), within [0, log2 K]."""
    samples = int(counts.sum())
    _, context_of = np.unique(codes // K, return_inverse=True)
    context_counts = np.bincount(context_of, weights=counts)
    plug_in = max(_entropy_bits(counts) - _entropy_bits(context_counts), 0.0)
    correction = (codes.size - context_counts.size) / (2 * samples * math.log(2)) if samples else 0.0
    per_block = samples / codes.size if codes.size else 0.0
    return {"k": k, "plug_in_bits": plug_in, "miller_madow_bits": min(plug_in + correction, math.log2(K)),
            "samples": samples,
            "distinct_blocks": int(codes.size), "samples_per_block": per_block,
            "reliable": bool(samples) and (k == 0 or per_block >= MIN_PER_BLOCK)}


# -------------------------------------------------------------------------------------------- patterns
def _poisson_upper_tail(counts: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """P(X >= count) for X ~ Poisson(expected), count >= 1: the regularized lower incomplete gamma P(count, mu)
    (torch's; scipy is not a dependency)."""
    return torch.special.gammainc(torch.as_tensor(counts, dtype=torch.float64),
                                  torch.as_tensor(expected, dtype=torch.float64)).numpy()


def _benjamini_hochberg(p_values: np.ndarray, hypotheses: int) -> np.ndarray:
    """BH-adjusted p-values (q-values) when `hypotheses` - len(p_values) further hypotheses have p = 1."""
    order = np.argsort(p_values, kind="stable")
    ranks = np.arange(1, p_values.size + 1)
    adjusted = np.minimum.accumulate((p_values[order] * hypotheses / ranks)[::-1])[::-1]
    q_values = np.empty_like(p_values)
    q_values[order] = np.minimum(adjusted, 1.0)
    return q_values


def _ngram_rows(tokens, counts, expected, p_values, q_values, index) -> list[dict]:
    return [{"tokens": [int(t) for t in tokens[i]], "count": int(counts[i]), "expected": float(expected[i]),
             "ratio": float(counts[i] / expected[i]), "p_value": float(p_values[i]), "q_value": float(q_values[i])}
            for i in index]


def _patterns(codes: np.ndarray, counts: np.ndarray, n: int, K: int) -> dict:
    """Most frequent n-grams (n = 2, 3) and those significantly above their expected count."""
    digits = [codes // K**(n - 1 - j) % K for j in range(n)]  # the n tokens of each code
    weights = counts.astype(np.float64)
    if n == 2:
        first, second = digits
        rows, cols = np.bincount(first, weights, K), np.bincount(second, weights, K)
        expected = rows[first] * cols[second] / weights.sum()
        hypotheses = int(np.count_nonzero(rows)) * int(np.count_nonzero(cols))
        expected_from = "independence: product of the first- and second-position marginals, R_a C_b / N"
    else:
        first, middle, last = digits
        head, tail = first * K + middle, middle * K + last
        head_counts, tail_counts = np.bincount(head, weights, K * K), np.bincount(tail, weights, K * K)
        middle_counts = np.bincount(middle, weights, K)
        expected = head_counts[head] * tail_counts[tail] / middle_counts[middle]
        heads_per_middle = np.count_nonzero(head_counts.reshape(K, K), axis=0)
        tails_per_middle = np.count_nonzero(tail_counts.reshape(K, K), axis=1)
        hypotheses = int((heads_per_middle * tails_per_middle).sum())
        expected_from = "first-order Markov chain: N_ab N_bc / N_b"
    p_values = _poisson_upper_tail(counts, expected) if counts.size else np.zeros(0)
    q_values = _benjamini_hochberg(p_values, hypotheses)
    grams = np.stack(digits, axis=1) if counts.size else np.zeros((0, n), np.int64)
    significant = np.flatnonzero(q_values <= FDR_Q)
    significant = significant[np.lexsort((-counts[significant], p_values[significant]))]
    frequent = np.lexsort((codes, -counts))[:TOP]
    return {"n": n, "total": int(counts.sum()), "distinct": int(counts.size), "expected_from": expected_from,
            "test": f"one-sided Poisson P(X >= count | expected), Benjamini-Hochberg q = {FDR_Q}",
            "hypotheses": hypotheses, "n_significant": int(significant.size),
            "most_frequent": _ngram_rows(grams, counts, expected, p_values, q_values, frequent),
            "significant": _ngram_rows(grams, counts, expected, p_values, q_values, significant[:MAX_LISTED])}


# -------------------------------------------------------------------------------------------- outliers
def _decoded_returns(tokenizer, counts: np.ndarray) -> dict:
    """Each code decoded alone (global scale), summed over its patch, z-scored against usage-weighted moments."""
    codebook = int(tokenizer.vocab_size)
    used = np.flatnonzero(counts)
    if used[-1] >= codebook:
        raise TokenizerError(f"the tokenizer has {codebook} codes but the tokens go up to {used[-1]}; "
                             "pass the tokenizer these tokens were made with (--tokenizer DIR)")
    patches = tokenizer.decode(np.arange(codebook, dtype=np.int64)[:, None])
    if hasattr(patches, "detach"):
        patches = patches.detach().cpu().numpy()
    returns = np.asarray(patches, dtype=np.float64).reshape(codebook, -1).sum(axis=1)
    weights = counts[:codebook].astype(np.float64)
    mean = float(np.average(returns, weights=weights))
    std = float(np.sqrt(np.average((returns - mean) ** 2, weights=weights)))
    result = {"returns": returns, "mean": mean, "std": std, "threshold_z": Z_EXTREME, "extreme": []}
    if std > 0:
        z = (returns[used] - mean) / std
        extreme = np.flatnonzero(np.abs(z) > Z_EXTREME)
        extreme = extreme[np.argsort(-np.abs(z[extreme]), kind="stable")][:MAX_LISTED]
        result["extreme"] = [{"token": int(used[i]), "count": int(counts[used[i]]),
                              "decoded_return": float(returns[used[i]]), "z": float(z[i])} for i in extreme]
    return result


# ---------------------------------------------------------------------------------------------- analyze
def analyze(store_or_path, tokenizer=None) -> dict:
    """All the numbers of a token analysis (see the module docstring for the definitions).

    `store_or_path`: a token store directory, a .txt file of token ids, or an opened TokenStore.
    `tokenizer`: a tokenizer directory or object, to flag tokens with extreme decoded returns; default: the
    store's own copy when it has one. Matrices are numpy arrays: transitions["counts"] and
    transitions["probabilities"] are (K, K), vocabulary["counts"] is (K,).
    """
    store, source, tokenizer = _open(store_or_path, tokenizer)
    symbols, seqs, K = _sequences(store, source or "the token store")
    lengths = np.array([s.size for s in seqs], dtype=np.int64)
    tokens = np.concatenate(seqs)
    ends = np.cumsum(lengths)
    remaining = np.repeat(ends, lengths) - np.arange(tokens.size)
    blocks = {n: _block_counts(tokens, remaining, n, K) for n in range(1, MAX_CONTEXT + 2) if K**n < 2**62}

    counts = np.bincount(tokens, minlength=K)
    frequencies = counts / tokens.size
    rare = np.flatnonzero((counts > 0) & (frequencies < RARE_SHARE / K))
    rare = rare[np.lexsort((rare, counts[rare]))]
    per_symbol = []
    for symbol, seq in zip(symbols, seqs):
        symbol_counts = np.bincount(seq, minlength=K)
        per_symbol.append({"symbol": symbol, "tokens": int(seq.size),
                           "distinct_codes": int(np.count_nonzero(symbol_counts)),
                           "most_common": int(symbol_counts.argmax()) if seq.size else None,
                           "unigram_entropy_bits": _entropy_bits(symbol_counts)})

    pair_codes, pair_counts = blocks[2]
    transition_counts = np.zeros(K * K, dtype=np.int64)
    transition_counts[pair_codes] = pair_counts
    transition_counts = transition_counts.reshape(K, K)
    row_totals = transition_counts.sum(axis=1, keepdims=True)
    probabilities = np.round(transition_counts / np.maximum(row_totals, 1), 6)
    top_pairs = pair_codes[np.lexsort((pair_codes, -pair_counts))[:TOP]]
    n_pairs = int(pair_counts.sum())

    conditional = [_conditional_entropy(*blocks[k + 1], K, k) for k in range(MAX_CONTEXT + 1) if k + 1 in blocks]
    rate = [c for c in conditional if c["reliable"]][-1]

    return {
        "kind": KIND,
        "input": source,
        "vocab_size": K,
        "n_tokens": int(tokens.size),
        "n_symbols": len(symbols),
        "vocabulary": {"counts": counts, "frequencies": frequencies, "codes_used": int(np.count_nonzero(counts)),
                       "unused_codes": np.flatnonzero(counts == 0).tolist(),
                       "most_frequent": [{"token": int(t), "count": int(counts[t]), "frequency": float(frequencies[t])}
                                         for t in np.lexsort((np.arange(K), -counts))[:TOP]]},
        "symbols": per_symbol,
        "transitions": {
            "n_pairs": n_pairs,
            "self_transition_share": float(np.trace(transition_counts) / n_pairs) if n_pairs else 0.0,
            "counts": transition_counts, "probabilities": probabilities,
            "most_frequent": [{"from": int(c // K), "to": int(c % K), "count": int(transition_counts.flat[c]),
                               "probability": float(probabilities.flat[c])} for c in top_pairs]},
        "patterns": {name: _patterns(*blocks[n], n, K) for name, n in (("bigrams", 2), ("trigrams", 3))},
        "outliers": {
            "rare_definition": f"used codes with frequency below {RARE_SHARE:g}/K",
            "rare_threshold": RARE_SHARE / K,
            "rare": [{"token": int(t), "count": int(counts[t]), "frequency": float(frequencies[t])}
                     for t in rare[:MAX_LISTED]],
            "n_rare": int(rare.size),
            "decoded_returns": None if tokenizer is None else _decoded_returns(tokenizer, counts)},
        "entropy": {
            "max_bits": math.log2(K),
            "unigram_bits": _entropy_bits(counts),
            "conditional_bits": conditional[1]["plug_in_bits"] if len(conditional) > 1 else None,
            "rate_bits": rate["miller_madow_bits"],
            "rate_context": rate["k"],
            "rate_method": (f"Miller-Madow H(X_t | k previous) at the largest k <= {MAX_CONTEXT} whose blocks were "
                            f"seen >= {MIN_PER_BLOCK} times each on average"),
            "by_context": conditional},
    }


# ------------------------------------------------------------------------------------- calendar profile
PROFILE_WINDOWS = 256
PROFILE_NAME = "calendar_profile.png"


@torch.no_grad()
def calendar_profile(store, model, tokenizer, max_windows: int = PROFILE_WINDOWS) -> dict:
    """The learned time-of-day profile of calendar model `model` on the windows of token store `store` (module
    docstring). `tokenizer` decodes each code to its return (in the scale's units)."""
    from .data.calendar import TOD_SLOTS, calendar_ids

    if not getattr(model.config, "calendar", False):
        raise DataError("the run's model has no calendar embeddings (model.calendar=false): it learned nothing of "
                        "the clock to show; drop --run, or train with --set model.calendar=true")
    if tokenizer is None or getattr(tokenizer, "decode_table", None) is None:
        raise DataError("a calendar profile needs the tokens' tokenizer (the store's own copy or --tokenizer)")
    if not getattr(store, "has_patch_ends", False):
        raise DataError("a calendar profile needs a token store with timestamps; tokenize with `pricegpt tokenize`")
    length = model.config.sequence_len
    split = "val" if any(np.subtract(*store.split_bounds(s)["val"][::-1]) >= length for s in store.symbols) \
        else "train"
    starts = [(s, a) for s in store.symbols
              for a in range(store.split_bounds(s)[split][0], store.split_bounds(s)[split][1] - length + 1)]
    if not starts:
        raise DataError(f"no symbol has {length} consecutive tokens (model.sequence_len) for a calendar profile")
    picks = np.unique(np.linspace(0, len(starts) - 1, min(max_windows, len(starts))).round().astype(int))
    idx = np.stack([np.asarray(store.tokens(starts[i][0])[starts[i][1]:starts[i][1] + length]) for i in picks])
    ends = np.stack([store.patch_times_ns(starts[i][0])[starts[i][1]:starts[i][1] + length] for i in picks])
    tod, dow = calendar_ids(ends.astype(np.int64).view("datetime64[ns]"))
    calendar = torch.as_tensor(np.stack([tod, dow], axis=-1), dtype=torch.long)
    values = torch.as_tensor(np.asarray(tokenizer.decode_table, dtype=np.float64).sum(axis=1))
    device = next(model.parameters()).device
    idx_t = torch.as_tensor(idx, dtype=torch.long, device=device)
    was_training = model.training
    model.eval()

    def spread(slot: int) -> float:
        window = calendar.clone()
        window[:, -1, 0] = slot
        p = torch.softmax(model(idx_t, calendar=window.to(device))[:, -1].double().cpu(), dim=-1)
        mean = p @ values
        return float(torch.sqrt(torch.mean(p @ values**2 - mean**2)))

    try:
        std = [spread(slot) for slot in range(TOD_SLOTS)]
        unknown = spread(-1)
    finally:
        model.train(was_training)
    all_ends = np.concatenate([np.asarray(store.patch_times_ns(s), dtype=np.int64) for s in store.symbols])
    observed = np.bincount(calendar_ids(all_ends.view("datetime64[ns]"))[0], minlength=TOD_SLOTS)
    mean = float(np.mean(std))
    return {"slots": [f"{(i * 30) // 60:02d}:{(i * 30) % 60:02d}" for i in range(TOD_SLOTS)],
            "std": std, "relative": [x / mean for x in std], "unknown_relative": unknown / mean,
            "observed_tokens": observed.tolist(), "n_windows": int(len(picks)), "split": split,
            "definition": "std of the next token's decoded return (scale units) under the model, the last "
                          "context token's time of day set to each slot, pooled over the windows; relative to "
                          "the mean over slots"}


def _check_run_tokens(run, source: Path, model) -> None:
    """DataError unless the tokens at `source` were written by the run's own tokenizer (same hash, when both are
    known) and fit its model's vocabulary: another tokenizer's ids mean other returns."""
    store = TokenStore.open(source)
    run_tokenizer = Path(run) / "tokenizer"
    theirs = load_tokenizer(run_tokenizer).hash if (run_tokenizer / "config.json").is_file() else None
    mine = getattr(store, "tokenizer_hash", None)
    if store.vocab_size > model.config.vocab_size or (theirs is not None and mine is not None and theirs != mine):
        raise DataError(f"--tokens {source} was not written with the tokenizer of --run {run} (tokenizer hash "
                        f"{mine}, vocabulary {store.vocab_size}; the run's {theirs}, {model.config.vocab_size}); "
                        f"pass that run's tokens, e.g. --tokens {Path(run) / 'tokens'}")


# ----------------------------------------------------------------------------------------------- plots
def write_plots(result: dict, out_dir) -> list[Path]:
    """token_frequency.png (histogram by token id + rank plot) and transition_matrix.png (heatmap) in out_dir."""
    paths = [Path(out_dir) / name for name in PLOT_NAMES]
    plots.token_frequency(paths[0], np.asarray(result["vocabulary"]["counts"]))
    plots.transition_matrix(paths[1], np.asarray(result["transitions"]["probabilities"]))
    profile = result.get("calendar_profile")
    if profile:
        paths.append(Path(out_dir) / PROFILE_NAME)
        plots.calendar_profile(paths[-1], profile["slots"], profile["relative"], profile["observed_tokens"])
    return paths


# ------------------------------------------------------------------------------------------------- output
def default_out_dir(tokens_path) -> Path:
    """`<store>/analysis` for a store directory, `<stem>_analysis` beside a token file."""
    path = Path(tokens_path)
    return path / "analysis" if path.is_dir() else path.with_name(f"{path.stem}_analysis")


def _check_out_dir(out: Path, source: str | None, user_named: bool) -> None:
    """Raise OutputExistsError unless `out` is absent, empty, or an earlier analysis it may replace."""
    if not out.exists():
        return
    if not out.is_dir():
        raise OutputExistsError(f"{out} exists and is not a directory; choose another --out")
    names = [p.name for p in out.iterdir()]
    if not names:
        return
    earlier = None
    if JSON_NAME in names and all(n in (JSON_NAME, OUTPUT_MARKER) or n.endswith(".png") for n in names):
        try:
            meta = json.loads((out / JSON_NAME).read_text())
            earlier = meta.get("input") if meta.get("kind") == KIND else None
        except (OSError, ValueError, AttributeError):
            earlier = None
    if earlier is None:
        raise OutputExistsError(f"{out} already exists and is not an earlier token analysis; "
                                "choose another --out or remove it")
    if user_named and earlier != source:
        raise OutputExistsError(f"{out} holds an analysis of {earlier}, not of {source}; "
                                "choose another --out or remove it")


def _write_outputs(result: dict, out: Path, user_named: bool) -> list[str]:
    _check_out_dir(out, result["input"], user_named)
    if out.is_dir() and not out.is_symlink() and not any(out.iterdir()):
        out.rmdir()  # an empty folder holds nothing to protect (and has no marker for atomic_dir to replace it)
    with atomic_dir(out, overwrite=True) as tmp:
        write_json(tmp / JSON_NAME, result)
        written = write_plots(result, tmp)
    return [JSON_NAME, *(p.name for p in written)]


def analyze_to_dir(source, out=None, tokenizer=None, run=None) -> tuple[dict, Path, list[str]]:
    """What `pricegpt analyze` does: analyse the token store directory or .txt file `source` and write
    analysis.json and the PNGs to `out` (default: `default_out_dir(source)`). The output folder is checked before
    the work, not after (module docstring). With `run` (a run directory of a calendar model), its learned
    time-of-day profile too (`calendar_profile`). Returns (the result, the output folder, the names written)."""
    source = Path(source)
    _check_exists(source)
    model = None
    if run is not None:  # loaded (and checked) before any work
        from .model import GPT

        if not (Path(run) / "model").is_dir():
            raise DataError(f"--run {run}: no model/ folder; give a run directory written by `pricegpt train`")
        model = GPT.from_pretrained(Path(run) / "model")
        if not model.config.calendar:
            raise DataError(f"--run {run}: its model has no calendar embeddings (model.calendar=false), so it "
                            "learned nothing of the clock to show; drop --run")
        _check_run_tokens(run, source, model)
    out_dir = Path(out) if out else default_out_dir(source)
    _check_out_dir(out_dir, str(source.resolve()), user_named=bool(out))
    result = analyze(source, tokenizer=tokenizer)
    if model is not None:
        store, _, tokenizer_obj = _open(source, tokenizer)
        result["calendar_profile"] = calendar_profile(store, model, tokenizer_obj)
    names = _write_outputs(result, out_dir, user_named=bool(out))
    return result, out_dir, names
