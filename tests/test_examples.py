"""`examples.py` runs for real, end to end, as a user would run it (about 20-60 s on 2 CPU cores)."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import REPO

EXAMPLES = REPO / "examples.py"


def tiny_model_facts() -> list[str]:
    """What section 3 must print about the tiny preset, computed here from the library itself."""
    from pricegpt.model import GPT, preset_model_config

    config = preset_model_config("tiny")
    model = GPT(config)
    shape = (4, config.sequence_len, config.vocab_size)
    return [f"parameters: {model.num_params():,}", f"training FLOPs per token: {model.flops_per_token():,}",
            f"inputs {shape[:2]} -> logits {shape}"]


# Each section's heading, followed by what that section must have shown.
SECTIONS = {
    "== 1. data:": ["sample:stocks-daily: 11,958 bars", "splits: train_end", "train ", "val ", "test "],
    "== 2. tokenizer:": ["fitted VQVAETokenizer(K=128, patch_len=4", "codes used on train:",
                         "vs quantile baseline", "token store tokens/:", "== per symbol ==", "== entropy (bits) =="],
    "== 3. model:": ["loss 4.8520 = ln(128) = 4.8520", *tiny_model_facts()],
    "== 4. generation:": ["-> (1, 3, 12) (batch, samples, new tokens)", "same seed again -> identical paths: True",
                          "top_p=0.9, seed=1 -> first sample:", "48 daily log returns"],
    "== 5. training:": ["trained 60 steps in", "best val loss", "metrics.csv:", "step  60", "model, tokenizer"],
    "== 6. forecast:": ["calibrated temperature", "32 rows (symbol x step)",
                        "(4, 256, 8) (symbols, samples, horizon); same quantiles as above: True",
                        "AAPL: 256 sampled paths for the next 8 bars", "P(up over 8 bars)", "VaR 95%", "ES 99%",
                        "P(touch +5%)"],
}


def run_examples(*args, cwd):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, str(EXAMPLES), *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=600)


def test_examples_script_runs_every_section(tmp_path):
    out = tmp_path / "kept"
    result = run_examples("--out", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    text = result.stdout

    positions = [text.find(title) for title in SECTIONS]
    assert all(p >= 0 for p in positions), [t for t, p in zip(SECTIONS, positions) if p < 0]
    assert positions == sorted(positions), "sections are printed out of order"
    bounds = positions[1:] + [len(text)]
    for (title, expected), start, stop in zip(SECTIONS.items(), positions, bounds):
        body = text[start:stop]
        missing = [fragment for fragment in expected if fragment not in body]
        assert not missing, f"section {title!r} lacks {missing}:\n{body}"
    assert "all examples done in" in text and f"outputs kept in {out}" in text

    # --out keeps a usable tokenizer, token store and run, and nothing is written anywhere else.
    for path in ("tokenizer/config.json", "tokens/index.json", "run/model/model.safetensors",
                 "run/calibration.json", "run/metrics.csv"):
        assert (out / path).is_file(), path
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept"]


def test_examples_refuses_an_existing_out_directory(tmp_path):
    mine = tmp_path / "mine.txt"
    mine.write_text("keep me")
    result = run_examples("--out", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "already exists and is not an empty directory" in result.stderr
    assert mine.read_text() == "keep me" and sorted(p.name for p in tmp_path.iterdir()) == ["mine.txt"]
