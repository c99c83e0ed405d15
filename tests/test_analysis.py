"""Token analysis: entropies against hand-computed values, symbol boundaries, planted patterns, outliers, the CLI."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest

from conftest import assert_user_error, run_cli
from pricegpt.analysis import PLOT_NAMES, analyze, analyze_to_dir
from pricegpt.cli.text import format_report
from pricegpt.errors import OutputExistsError
from test_reliability import cli


class Store:
    """The part of the TokenStore interface analysis reads, over in-memory arrays."""

    def __init__(self, arrays: dict[str, np.ndarray], vocab_size: int, tokenizer_dir=None):
        self.arrays, self.vocab_size, self.tokenizer_dir = arrays, vocab_size, tokenizer_dir
        self.symbols = list(arrays)

    def tokens(self, symbol):
        return np.asarray(self.arrays[symbol])

    def split_bounds(self, symbol):
        return len(self.arrays[symbol]), len(self.arrays[symbol])


def one(tokens, vocab_size):
    return Store({"ONLY": np.asarray(tokens)}, vocab_size)


def markov_chain(transitions: np.ndarray, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    cumulative = np.cumsum(transitions, axis=1)
    states = np.zeros(n, dtype=np.int64)
    draws = rng.random(n)
    for t in range(1, n):
        states[t] = np.searchsorted(cumulative[states[t - 1]], draws[t], side="right")
    return states


def h2(p: float) -> float:
    return -p * math.log2(p) - (1 - p) * math.log2(1 - p)


# ------------------------------------------------------------------------------------------------- entropy
def test_uniform_iid_stream_has_entropy_log2_k_at_every_order():
    tokens = np.random.default_rng(0).integers(0, 16, 40_000)
    entropy = analyze(one(tokens, 16))["entropy"]
    assert entropy["max_bits"] == 4.0
    assert entropy["unigram_bits"] == pytest.approx(4.0, abs=0.01)
    assert entropy["conditional_bits"] == pytest.approx(4.0, abs=0.02)
    assert entropy["rate_bits"] == pytest.approx(4.0, abs=0.02)
    # the undersampled 4-blocks are flagged and not used: their plug-in estimate is far below the truth
    longest = entropy["by_context"][3]
    assert not longest["reliable"] and longest["plug_in_bits"] < 3.5 and entropy["rate_context"] < 3


def test_deterministic_cycle_has_zero_conditional_entropy():
    tokens = np.tile(np.arange(8), 100)
    entropy = analyze(one(tokens, 8))["entropy"]
    assert entropy["unigram_bits"] == pytest.approx(3.0, abs=1e-12)
    assert entropy["conditional_bits"] == pytest.approx(0.0, abs=1e-12)
    assert entropy["rate_bits"] == pytest.approx(0.0, abs=1e-12)


def test_two_state_markov_chain_entropy_rate():
    a, b = 0.1, 0.3  # P(0 -> 1), P(1 -> 0)
    tokens = markov_chain(np.array([[1 - a, a], [b, 1 - b]]), 30_000, seed=1)
    stationary = np.array([b, a]) / (a + b)
    rate = stationary[0] * h2(a) + stationary[1] * h2(b)  # 0.572 bits
    entropy = analyze(one(tokens, 2))["entropy"]
    assert entropy["unigram_bits"] == pytest.approx(h2(stationary[1]), abs=0.02)  # 0.811 bits
    assert entropy["conditional_bits"] == pytest.approx(rate, abs=0.02)
    assert entropy["rate_bits"] == pytest.approx(rate, abs=0.02)
    assert entropy["rate_context"] == 3  # 16 possible 4-blocks are well sampled


# ---------------------------------------------------------------------------------------- symbol boundaries
def test_transitions_and_ngrams_never_cross_a_symbol_boundary():
    arrays = {"AAA": np.zeros(4, np.int64), "BBB": np.ones(4, np.int64)}
    result = analyze(Store(arrays, 2))
    counts = result["transitions"]["counts"]
    assert counts.tolist() == [[3, 0], [0, 3]]
    assert result["transitions"]["n_pairs"] == 6
    np.testing.assert_array_equal(result["transitions"]["probabilities"], np.eye(2))
    assert result["patterns"]["trigrams"]["total"] == 4
    assert [s["distinct_codes"] for s in result["symbols"]] == [1, 1]
    assert result["entropy"]["conditional_bits"] == 0.0
    # the same tokens as one symbol do have the 0 -> 1 step
    joined = analyze(one(np.concatenate(list(arrays.values())), 2))
    assert joined["transitions"]["counts"][0, 1] == 1


# ------------------------------------------------------------------------------------------------ patterns
def test_planted_trigram_is_significant():
    tokens = np.random.default_rng(2).integers(0, 8, 20_000)
    for start in range(0, tokens.size - 3, 50):
        tokens[start:start + 3] = [2, 5, 7]
    trigrams = analyze(one(tokens, 8))["patterns"]["trigrams"]
    assert trigrams["significant"][0]["tokens"] == [2, 5, 7]
    top = trigrams["significant"][0]
    assert top["count"] >= 400 and top["ratio"] > 2 and top["q_value"] < 1e-10
    assert top["expected"] == pytest.approx(top["count"] / top["ratio"])
    assert trigrams["hypotheses"] == 8**3


@pytest.mark.parametrize("seed", [3, 4, 5])
def test_iid_stream_has_no_significant_patterns(seed):
    tokens = np.random.default_rng(seed).integers(0, 8, 20_000)
    patterns = analyze(one(tokens, 8))["patterns"]
    assert patterns["bigrams"]["n_significant"] + patterns["trigrams"]["n_significant"] <= 1


# ------------------------------------------------------------------------------------------------ outliers
class SummedTokenizer:
    """Each code decodes to a patch of 4 equal returns, summing to `returns[code]`."""

    def __init__(self, returns):
        self.returns = np.asarray(returns, dtype=np.float64)
        self.vocab_size = self.returns.size

    def decode(self, tokens, symbol=None):
        ids = np.asarray(tokens)
        return np.repeat(self.returns[ids] / 4, 4, axis=-1)


def test_rare_tokens_and_extreme_decoded_returns():
    tokens = np.random.default_rng(6).integers(0, 31, 20_000)
    tokens[100] = 31  # used once: far below 1/(10K)
    returns = np.random.default_rng(7).normal(0, 0.001, 32)
    returns[5] = 0.05
    result = analyze(one(tokens, 32), tokenizer=SummedTokenizer(returns))
    outliers = result["outliers"]
    assert [r["token"] for r in outliers["rare"]] == [31]
    decoded = outliers["decoded_returns"]
    assert [r["token"] for r in decoded["extreme"]] == [5]
    assert decoded["extreme"][0]["z"] > 3
    np.testing.assert_allclose(decoded["returns"], returns)
    assert "extreme decoded returns" in format_report(result)


def test_store_directory_uses_its_symbols_and_its_tokenizer_copy(stocks_frame, tmp_path):
    from pricegpt.tokenizer import create_tokenizer, write_token_store

    tokenizer = create_tokenizer("quantile", codebook_size=16).fit(stocks_frame)
    write_token_store(tokenizer, stocks_frame, tmp_path / "tokens")
    result = analyze(tmp_path / "tokens")
    encoded = tokenizer.encode(stocks_frame)
    assert [s["symbol"] for s in result["symbols"]] == list(encoded)
    assert result["transitions"]["n_pairs"] == sum(len(t) - 1 for t in encoded.values())
    decoded = result["outliers"]["decoded_returns"]
    np.testing.assert_allclose(decoded["returns"], tokenizer.decode(np.arange(16)[:, None]).sum(axis=1))
    assert np.all(np.diff(decoded["returns"]) > 0)  # quantile bins are ordered by summed return


# ------------------------------------------------------------------------------------------------- report
def test_report_names_entropies_and_aligns_tables():
    report = format_report(analyze(one(np.tile(np.arange(8), 50), 8)))
    assert re.search(r"^unigram entropy: +3\.00 bits \(max 3\.00\)$", report, re.M)
    assert re.search(r"^conditional entropy H\(X_t\|X_\{t-1\}\): 0\.00 bits", report, re.M)
    assert re.search(r"^entropy rate estimate: +0\.00 bits", report, re.M)
    for heading in ("vocabulary", "transitions", "patterns: bigrams", "patterns: trigrams", "outliers", "entropy"):
        assert f"== {heading}" in report
    table = report.split("== vocabulary: most frequent tokens ==\n")[1].split("\nunused codes")[0].splitlines()
    assert len(table) == 9 and len({len(line) for line in table}) == 1  # right-aligned numbers: equal widths


# ---------------------------------------------------------------------------------------------------- CLI
def write_tokens(path, tokens, per_line=20):
    tokens = [str(t) for t in tokens]
    path.write_text("\n".join(" ".join(tokens[i:i + per_line]) for i in range(0, len(tokens), per_line)) + "\n")
    return path


def test_cli_analyze_token_file(tmp_path):
    tokens = write_tokens(tmp_path / "all_tokens.txt", np.random.default_rng(8).integers(0, 32, 3000))
    result = run_cli("analyze", "--tokens", tokens, "--out", tmp_path / "report")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    for line in ("unigram entropy:", "conditional entropy H(X_t|X_{t-1}):", "entropy rate estimate:"):
        assert line in result.stdout
    saved = json.loads((tmp_path / "report" / "analysis.json").read_text())
    assert saved["n_tokens"] == 3000 and saved["vocab_size"] >= 32
    assert saved["entropy"]["unigram_bits"] == pytest.approx(5.0, abs=0.05)
    assert len(saved["transitions"]["counts"]) == saved["vocab_size"]
    for name in ("token_frequency.png", "transition_matrix.png"):
        assert (tmp_path / "report" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("content", ["1 2 x 4\n", "3 -1 2\n", ""], ids=["non-integer", "negative", "empty"])
def test_cli_bad_token_file_is_a_user_error(tmp_path, content):
    path = tmp_path / "bad.txt"
    path.write_text(content)
    result = run_cli("analyze", "--tokens", path, "--out", tmp_path / "report")
    assert_user_error(result, "bad.txt")
    assert not (tmp_path / "report").exists()


def test_default_output_is_replaced_but_foreign_out_dir_is_never_touched(tmp_path):
    tokens = write_tokens(tmp_path / "toks.txt", np.tile(np.arange(4), 50))
    for _ in range(2):  # the second run replaces the first analysis in the default location
        result, out, names = analyze_to_dir(tokens)
    assert out == tmp_path / "toks_analysis" and names == ["analysis.json", *PLOT_NAMES]
    assert json.loads((out / "analysis.json").read_text())["n_tokens"] == result["n_tokens"] == 200

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(OutputExistsError, match="mine"):
        analyze_to_dir(tokens, out=foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"

    other = write_tokens(tmp_path / "other.txt", np.tile(np.arange(4), 10))
    with pytest.raises(OutputExistsError, match="analysis of"):  # an analysis of another input under --out
        analyze_to_dir(other, out=tmp_path / "toks_analysis")


def test_cli_prints_the_report_then_what_it_wrote(tmp_path, capsys):
    tokens = write_tokens(tmp_path / "toks.txt", np.tile(np.arange(4), 50))
    printed = cli(capsys, "analyze", "--tokens", tokens)
    assert printed.returncode == 0, printed.stderr
    result, out, names = analyze_to_dir(tokens)  # replaces the analysis the command wrote
    assert printed.stdout == f"{format_report(result)}\n\nwrote {out}/: {', '.join(names)}\n"
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    assert_user_error(cli(capsys, "analyze", "--tokens", tokens, "--out", tmp_path / "mine"), "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
