"""Every config value and generate flag is checked before any work; damaged model, tokenizer and token files are
named, not crashed on (issue 13, sections 4 to 6).

Each case runs the real command (in-process through `pricegpt.cli.main`, a few in a subprocess) or the Python API
and checks: exit code 2, exactly one `error:` line naming the problem, no traceback, and no user file changed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import assert_user_error, run_cli
from pricegpt.config import GPTConfig, TrainConfig, check_seed, derive_seed, load_config, resolve_config
from pricegpt.errors import CheckpointError, ConfigError, PriceGPTError, TokenizerError
from pricegpt.model import GPT, Engine, generate, sample_next_token
from pricegpt.runs import find_tokenizer_dir
from pricegpt.tokenizer import TokenStore, load_tokenizer
from train_helpers import cli_main as cli
from train_helpers import markov_tokens, torch_threads_kept, tree, write_token_file

RUN_SETTINGS = ["model.sequence_len=16", "model.n_layer=1", "model.n_embd=32", "model.n_head=2", "model.n_kv_head=1",
                "train.batch_size=8", "train.eval_batches=2", "train.eval_every=5", "train.save_every=5",
                "train.warmup_steps=2", "train.num_threads=1"]


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def prices_csv(tmp_path_factory, stocks_frame) -> Path:
    frame = stocks_frame[stocks_frame["symbol"].isin(["IBM", "MSFT"])
                         & (stocks_frame["timestamp"] >= pd.Timestamp("2008-01-01", tz="UTC"))]
    path = tmp_path_factory.mktemp("prices") / "prices.csv"
    frame.to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, prices_csv) -> Path:
    """A real run, built once: quantile tokenizer (K=16), token store, 5 steps of a one-layer GPT."""
    from pricegpt.data import load_prices, time_splits
    from pricegpt.tokenizer import fit_to_dir, write_token_store
    from pricegpt.train import train_run

    frame = load_prices(prices_csv)
    splits = time_splits(frame)
    run = tmp_path_factory.mktemp("tiny") / "run"
    fit_to_dir(frame, run / "tokenizer", kind="quantile", codebook_size=16, train_end=splits.train_end,
               val_end=splits.val_end)
    write_token_store(load_tokenizer(run / "tokenizer"), frame, run / "tokens", splits)
    with torch_threads_kept():
        train_run(tokens=run / "tokens", out=run, preset="tiny", overrides=RUN_SETTINGS, max_steps=5,
                  allow_existing=True)
    return run


@pytest.fixture
def run_copy(tiny_run, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(tiny_run, copy)
    return copy


@pytest.fixture(scope="module")
def token_file(tmp_path_factory) -> Path:
    return write_token_file(tmp_path_factory.mktemp("tok") / "tokens.txt", markov_tokens(2000, 16, seed=3))


# ------------------------------------------------------------------------------------- 5. config values
BAD_SETTINGS = [
    ("train.num_threads=100000", "train.num_threads must be a whole number in [0, 1024]"),
    ("train.num_threads=-1", "train.num_threads"),
    ("model.logit_softcap=inf", "model.logit_softcap must be a finite number"),
    ("model.logit_softcap=nan", "model.logit_softcap"),
    ("model.logit_softcap=-3", "0 or null disables"),
    ("model.rope_base=inf", "model.rope_base"),
    ("model.rope_base=1e300", "model.rope_base must be a finite number in (1, 1e+09]"),
    ("model.rope_base=0.5", "model.rope_base"),
    ("model.embedding_init_std=1e300", "model.embedding_init_std"),
    ("model.embedding_init_std=0", "model.embedding_init_std"),
    ("model.init_std=inf", "model.init_std"),
    ("model.init_std=nan", "model.init_std"),
    ("train.seed=1e23", "train.seed must be a whole number in [0, 4294967295]"),
    ("train.seed=1.5", "train.seed must be a whole number"),
    ("train.seed=-1", "train.seed must be a whole number in [0, 4294967295]"),
    ("train.seed=4294967296", "train.seed"),
    ("train.seed=99999999999999999999", "train.seed"),
    ("train.lr=nan", "train.lr must be a finite number in (0, 10]"),
    ("train.lr=100", "train.lr"),
    ("train.muon_lr=0", "train.muon_lr"),
    ("train.weight_decay=-1", "train.weight_decay"),
    ("train.weight_decay=inf", "train.weight_decay"),
    ("train.grad_clip=nan", "train.grad_clip"),
    ("train.beta2=1", "train.beta2 must be a finite number in [0, 1)"),
    ("train.min_lr_frac=2", "train.min_lr_frac"),
    ("train.batch_size=100000000", "train.batch_size must be a whole number in [1, 65536]"),
    ("train.global_batch_size=-8", "train.global_batch_size"),
    ("train.max_steps=10000000000", "train.max_steps"),
    ("train.eval_every=0", "train.eval_every"),
    ("train.peak_flops=inf", "train.peak_flops"),
    ("train.compile=maybe", "train.compile"),
    ("model.dropout=1", "model.dropout must be a finite number in [0, 1)"),
    ("model.dropout=nan", "model.dropout"),
    ("model.n_layer=100000", "model.n_layer must be a whole number in [1, 1024]"),
    ("model.n_embd=10000000", "model.n_embd"),
    ("model.sequence_len=100000000", "model.sequence_len"),
    ("model.n_kv_head=3", "n_kv_head"),
    ("model.zero_init_head=2", "model.zero_init_head"),
]


@pytest.mark.parametrize("setting,fragment", BAD_SETTINGS, ids=[s for s, _ in BAD_SETTINGS])
def test_bad_set_values_stop_train_before_any_output(setting, fragment, token_file, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = tree(tmp_path)
    assert_user_error(cli(capsys, "train", "--tokens", token_file, "--out", "run", "--preset", "tiny",
                          "--set", setting), fragment)
    assert tree(tmp_path) == before


def test_a_huge_model_is_refused_by_the_memory_bound(token_file, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # every value within its own bound, together 4.4e12 parameters
    result = cli(capsys, "train", "--tokens", token_file, "--out", "run", "--preset", "tiny",
                 "--set", "model.n_layer=1024", "--set", "model.n_embd=65536", "--set", "model.n_head=64",
                 "--set", "model.n_kv_head=64")
    assert_user_error(result, "memory", "model.n_layer")
    assert not (tmp_path / "run").exists()


CONFIG_FILES = {
    "softcap_inf.yaml": ("model:\n  logit_softcap: .inf\n", "model.logit_softcap"),
    "seed_float.yaml": ("train:\n  seed: 1.0e+23\n", "train.seed"),
    "threads.yaml": ("train:\n  num_threads: 100000\n", "train.num_threads"),
    "nested.yaml": ("train:\n  lr: " + "{a: " * 3000 + "1" + "}" * 3000 + "\n", "nested too deeply"),
    "nested_lists.yaml": ("[" * 5000 + "]" * 5000 + "\n", "nested too deeply"),
    "section_list.yaml": ("train: [1, 2]\n", "section 'train'"),
    "value_mapping.yaml": ("train:\n  lr: {a: [[[[[1]]]]]}\n", "train.lr must be a number"),
    "numeric_keys.yaml": ("1: 2\ntrain: {}\n", "unknown config section"),
    "latin1.yaml": (b"train:\n  lr: 0.001 # caf\xe9\n", "UTF-8"),
    "huge.yaml": ("# " + "x" * 2_000_000 + "\n", "bytes"),
}


@pytest.mark.parametrize("name", list(CONFIG_FILES))
def test_bad_config_files_stop_train_before_any_output(name, token_file, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    content, fragment = CONFIG_FILES[name]
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    before = tree(tmp_path)
    assert_user_error(cli(capsys, "train", "--tokens", token_file, "--out", "run", "--config", name), fragment)
    assert tree(tmp_path) == before


def test_config_file_errors_name_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  rope_base: 1.0e+300\n")
    with pytest.raises(ConfigError, match=r"c\.yaml.*model\.rope_base.*\(1, 1e\+09\]"):
        load_config(path)


def test_the_thread_count_that_segfaulted_is_refused_in_a_real_process(token_file, tmp_path):
    result = run_cli("train", "--tokens", token_file, "--out", tmp_path / "run", "--preset", "tiny",
                     "--set", "train.num_threads=100000", timeout=120)
    assert_user_error(result, "train.num_threads", "1024")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("kwargs,fragment", [
    (dict(logit_softcap=float("inf")), "logit_softcap"), (dict(rope_base=float("nan")), "rope_base"),
    (dict(init_std=1e9), "init_std"), (dict(n_layer=True), "n_layer"), (dict(n_embd="512"), "n_embd"),
    (dict(dropout=None), "dropout"), (dict(vocab_size=2**40), "vocab_size"),
])
def test_gpt_config_api_raises_config_errors(kwargs, fragment):
    with pytest.raises(ConfigError, match=fragment):
        GPTConfig(**kwargs)


@pytest.mark.parametrize("kwargs,fragment", [
    (dict(seed=2**32), "train.seed"), (dict(seed=-1), "train.seed"), (dict(num_threads=5000), "num_threads"),
    (dict(lr=float("inf")), "train.lr"), (dict(beta1=1.0), "beta1"), (dict(optimizer=["adamw"]), "optimizer"),
])
def test_train_config_api_raises_config_errors(kwargs, fragment):
    with pytest.raises(ConfigError, match=fragment):
        TrainConfig(**kwargs)


def test_valid_boundaries_are_accepted_and_seeds_derive_in_range():
    config = resolve_config("tiny", overrides=["model.logit_softcap=0", "model.init_std=null", "train.seed=0",
                                               "train.num_threads=0", "model.dropout=0.5"])
    assert config.model.logit_softcap == 0 and config.model.init_std is None
    assert TrainConfig(seed=2**32 - 1).seed == 2**32 - 1
    assert check_seed(np.int64(7)) == 7
    seeds = {derive_seed(2**32 - 1, origin) for origin in range(100)}
    assert len(seeds) == 100 and all(0 <= s < 2**63 for s in seeds)
    with pytest.raises(ConfigError, match="--max-steps"):
        resolve_config("tiny", max_steps=0)


# ----------------------------------------------------------------------------------------------- generate
GENERATE_FLAGS = [
    (["--seed", "-1"], ["--seed", "[0, 4"]),
    (["--seed", "99999999999999999999"], ["--seed", "[0, 4"]),
    (["--temperature", "1e-300"], ["--temperature", "0.001"]),
    (["--temperature", "1e300"], ["--temperature", "100"]),
    (["--top-p", "1e-300"], ["--top-p", "0.001"]),
    (["--num-samples", "1000000000"], ["--num-samples"]),
    (["--num-samples", "900000", "--num-generate", "90000"], ["memory", "--num-samples"]),
    (["--num-generate", "1000000000"], ["--num-generate"]),
    (["--decode", "--symbol", "UNKNOWN"], ["UNKNOWN", "IBM", "MSFT"]),
    (["--decode", "--start-price", "-5"], ["--start-price"]),
    (["--decode", "--start-price", "0"], ["--start-price"]),
    (["--decode", "--start-price", "inf"], ["--start-price"]),
    (["--decode", "--start-price", "nan"], ["--start-price"]),
    (["--seed-tokens", "3 99999999999999999999999"], ["outside the vocabulary"]),
]


@pytest.mark.parametrize("flags,fragments", GENERATE_FLAGS, ids=[" ".join(f) for f, _ in GENERATE_FLAGS])
def test_bad_generate_flags_are_one_clean_error(tiny_run, flags, fragments, capsys):
    before = tree(tiny_run)
    args = ["generate", "--run", tiny_run, "--seed-tokens", "1 2 3", "--num-generate", "4", *flags]
    assert_user_error(cli(capsys, *args), *fragments)
    assert tree(tiny_run) == before


def test_generate_decodes_with_a_known_symbol_and_greedy_temperature(tiny_run, capsys):
    result = cli(capsys, "generate", "--run", tiny_run, "--seed-tokens", "1 2 3", "--num-generate", 3,
                 "--decode", "--symbol", "IBM", "--temperature", 0, "--seed", 2**32 - 1, "--start-price", 50)
    assert result.returncode == 0, result.stderr
    assert "prices from 50" in result.stdout


@pytest.mark.parametrize("kwargs,fragment", [
    (dict(temperature=1e-300), "temperature"), (dict(temperature=float("nan")), "temperature"),
    (dict(temperature=float("inf")), "temperature"), (dict(top_p=1e-300), "top_p"), (dict(top_p=float("nan")), "top_p"),
    (dict(top_k=True), "top_k"), (dict(top_k=2.5), "top_k"), (dict(num_samples=-1), "num_samples"),
    (dict(num_samples=2.0), "num_samples"), (dict(seed=-1), "seed"), (dict(seed=2**64), "seed"),
    (dict(num_samples=10**6, max_new_tokens=90_000), "memory"),
])
def test_the_generation_api_raises_price_gpt_errors(kwargs, fragment):
    torch.manual_seed(0)
    model = GPT(GPTConfig(sequence_len=16, vocab_size=16, n_layer=1, n_head=2, n_kv_head=1, n_embd=16)).eval()
    kwargs = {"max_new_tokens": 3, **kwargs}
    with pytest.raises(ConfigError, match=fragment):
        generate(model, [1, 2], **kwargs)
    assert generate(model, [1, 2], 2, num_samples=np.int64(2), top_k=np.int64(3), seed=np.int64(1)).shape == (1, 2, 2)
    with pytest.raises(ConfigError, match="temperature"):
        sample_next_token(torch.zeros(2, 16), temperature=-1.0)
    assert Engine(model).generate([1, 2], 2, temperature=1e-3, top_p=1e-3, seed=0).shape == (1, 1, 2)


# ------------------------------------------------------------------------------------- 6. damaged files
def _edit_json(path: Path, **changes) -> None:
    config = json.loads(path.read_text())
    for key, value in changes.items():
        if value is _DELETE:
            del config[key]
        else:
            config[key] = value
    path.write_text(json.dumps(config))


_DELETE = object()


def _damage_weights(path: Path, how: str) -> None:
    from safetensors.torch import load_file, save_file

    state = load_file(str(path))
    # the first weight tensor proper (not an integer table, not the within-code decoding tables)
    name = sorted(k for k in state if state[k].is_floating_point() and not k.startswith("decode."))[0]
    if how == "nan":
        state[name] = state[name].clone()
        state[name].view(-1)[0] = float("nan")
    elif how == "inf":
        state[name] = torch.full_like(state[name], float("inf"))
    elif how == "int":
        state[name] = state[name].to(torch.int32)
    save_file(state, str(path), metadata={"format": "pt"})


def damage(run: Path, what: str) -> tuple[str, ...]:
    """Damage one file of a run copy; return fragments the error must contain."""
    model, tok = run / "model", find_tokenizer_dir(run)
    if what == "nan weights":
        _damage_weights(model / "model.safetensors", "nan")
        return "model.safetensors", "NaN", "retrain"
    if what == "inf weights":
        _damage_weights(model / "model.safetensors", "inf")
        return "model.safetensors", "infinite"
    if what == "int weights":
        _damage_weights(model / "model.safetensors", "int")
        return "model.safetensors", "int32"
    if what == "garbage weights":
        (model / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{\"a\":1}" + b"\xff" * 100)
        return "model.safetensors", "truncated or corrupted"
    if what == "softcap Infinity":
        (model / "config.json").write_text((model / "config.json").read_text().replace(
            '"logit_softcap": 15.0', '"logit_softcap": Infinity'))
        assert "Infinity" in (model / "config.json").read_text()
        return "config.json", "model.logit_softcap", "damaged"
    if what == "missing key":
        _edit_json(model / "config.json", n_layer=_DELETE)
        return "config.json", "n_layer"
    if what == "extra key":
        _edit_json(model / "config.json", block_size=16)
        return "config.json", "block_size"
    if what == "wrong type":
        _edit_json(model / "config.json", n_layer="1")
        return "config.json", "model.n_layer"
    if what == "wrong vocab":
        _edit_json(model / "config.json", vocab_size=32)
        return "config.json", "wrong shape"
    if what == "nested model config":
        (model / "config.json").write_text("[" * 100_000 + "]" * 100_000)
        return "config.json", "nested too deeply"
    if what == "latin-1 model config":
        (model / "config.json").write_bytes(b'{"n_layer": "\xe9"}')
        return "config.json",
    if what == "truncated model config":
        text = (model / "config.json").read_text()
        (model / "config.json").write_text(text[: len(text) // 2])
        return "config.json",
    if what == "nested run.json":
        (run / "run.json").write_text('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}")
        return "run.json", "nested too deeply"
    if what == "nan bin edges":
        _damage_weights(tok / "model.safetensors", "nan")
        return "model.safetensors", "NaN", "tokenizer"
    if what == "nan scale":
        _edit_json(tok / "config.json", scales={"global": [float("nan")], "symbols": {}})
        return "config.json", "scale"
    if what == "bad train_end":
        _edit_json(tok / "config.json", train_end="the day before yesterday")
        return "config.json", "train_end"
    if what == "nested tokenizer config":
        (tok / "config.json").write_text('{"kind": ' + "[" * 100_000 + "]" * 100_000 + "}")
        return "config.json", "nested too deeply"
    if what == "utf-16 tokenizer config":
        (tok / "config.json").write_bytes((tok / "config.json").read_text().encode("utf-16")[:-40])
        return "config.json",
    if what == "truncated tokenizer config":
        text = (tok / "config.json").read_text()
        (tok / "config.json").write_text(text[: len(text) // 2])
        return "config.json", "fit it again"
    if what == "garbage tokenizer weights":
        (tok / "model.safetensors").write_bytes(b"\x00" * 64)
        return "model.safetensors", "tokenizer"
    raise AssertionError(what)


DAMAGES = ["nan weights", "inf weights", "int weights", "garbage weights", "softcap Infinity", "missing key",
           "extra key", "wrong type", "wrong vocab", "nested model config", "latin-1 model config",
           "truncated model config", "nested run.json", "nan bin edges", "nan scale", "bad train_end",
           "nested tokenizer config", "utf-16 tokenizer config", "truncated tokenizer config",
           "garbage tokenizer weights"]


@pytest.mark.parametrize("what", DAMAGES)
def test_damaged_run_files_are_named(run_copy, what, capsys):
    fragments = damage(run_copy, what)
    before = tree(run_copy)
    result = cli(capsys, "generate", "--run", run_copy, "--seed-tokens", "1 2 3", "--num-generate", 2)
    assert_user_error(result, *fragments)
    assert str(run_copy) in result.stderr
    assert tree(run_copy) == before


def test_nan_weights_are_named_in_a_real_process(run_copy):
    damage(run_copy, "nan weights")
    result = run_cli("generate", "--run", run_copy, "--seed-tokens", "1 2 3", timeout=120)
    assert_user_error(result, "model.safetensors", "NaN")


def test_a_nan_vqvae_codebook_is_refused_instead_of_writing_zero_tokens(prices_csv, tmp_path, capsys):
    from pricegpt.data import load_prices
    from pricegpt.tokenizer import create_tokenizer

    frame = load_prices(prices_csv)
    tokenizer = create_tokenizer("vqvae", codebook_size=8, steps=20, batch_size=64, kmeans_iters=2,
                                 hidden_dim=8, latent_dim=4)
    tokenizer.fit(frame, frame["timestamp"].quantile(0.7), progress=False)
    tokenizer.model.codebook[3] = float("nan")
    tokenizer.save_pretrained(tmp_path / "tok")
    before = tree(tmp_path)
    result = cli(capsys, "tokenize", "--tokenizer", tmp_path / "tok", "--data", prices_csv, "--out",
                 tmp_path / "tokens")
    assert_user_error(result, "model.safetensors", "codebook", "NaN")
    assert tree(tmp_path) == before
    with pytest.raises(TokenizerError):
        load_tokenizer(tmp_path / "tok")


def test_damaged_files_raise_price_gpt_errors_from_the_api(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    damage(run, "softcap Infinity")
    with pytest.raises(CheckpointError, match="logit_softcap"):
        GPT.from_pretrained(run / "model")
    damage(run, "bad train_end")
    with pytest.raises(TokenizerError, match="train_end") as err:
        load_tokenizer(find_tokenizer_dir(run))
    assert isinstance(err.value, PriceGPTError)


# ------------------------------------------------------------------------------------------ 4. token files
def test_a_bom_at_the_start_of_a_token_file_is_accepted(tmp_path):
    tokens = markov_tokens(100, 16, seed=1)
    path = tmp_path / "bom.txt"
    path.write_bytes(b"\xef\xbb\xbf" + " ".join(map(str, tokens)).encode())
    store = TokenStore.open(path)
    assert np.array_equal(store.tokens("all"), tokens)


def test_a_bad_token_after_a_bom_is_reported_without_invisible_characters(tmp_path, capsys):
    path = tmp_path / "bom.txt"
    path.write_bytes(b"\xef\xbb\xbfx1 2 3\n")
    before = tree(tmp_path)
    result = cli(capsys, "train", "--tokens", path, "--out", tmp_path / "run", "--preset", "tiny")
    assert_user_error(result, "line 1, token 1", "'x1'")
    assert "\ufeff" not in result.stderr
    assert tree(tmp_path) == before


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-32"])
def test_utf16_token_files_say_to_save_as_utf8(encoding, tmp_path, capsys):
    path = tmp_path / "tokens.txt"
    path.write_bytes(" ".join(map(str, markov_tokens(500, 16))).encode(encoding))
    before = tree(tmp_path)
    result = cli(capsys, "train", "--tokens", path, "--out", tmp_path / "run", "--preset", "tiny")
    assert_user_error(result, "UTF-" + encoding[4:6], "save it as UTF-8")
    assert tree(tmp_path) == before
