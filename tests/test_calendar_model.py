"""Calendar conditioning: a fresh calendar model is the plain model, the KV cache reads the calendar of every
decoded position, the token store records each token's last bar, and a calendar model trains end to end."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from pricegpt.config import GPTConfig, TrainConfig, resolve_config
from pricegpt.config.schema import CALENDAR_ROWS
from pricegpt.data import time_splits
from pricegpt.data.calendar import TOD_SLOTS, calendar_ids
from pricegpt.errors import ConfigError, DataError
from pricegpt.model import GPT, generate
from pricegpt.model.gpt import CalendarInputError
from pricegpt.tokenizer import TokenStore, fit_to_dir, load_tokenizer, write_token_store
from pricegpt.train import TokenData, Trainer, WindowSet, latest_checkpoint, read_token_source, train_run
from test_model import tiny_config, tiny_model
from train_helpers import (
    TINY,
    assert_close_weights,
    assert_same_weights,
    markov_tokens,
    quantile_store,
    read_weights,
    single_and_two_process_weights,
    torch_threads_kept,
    write_token_file,
)

VOCAB, L = 32, 16


def random_calendar(batch: int, length: int, seed: int = 0, unknown: bool = True) -> torch.Tensor:
    """(batch, length, 2) calendar ids, about a tenth of them -1 (unknown) when `unknown`."""
    g = torch.Generator().manual_seed(seed)
    calendar = torch.stack([torch.randint(0, TOD_SLOTS, (batch, length), generator=g),
                            torch.randint(0, 7, (batch, length), generator=g)], dim=-1)
    if unknown:
        calendar[torch.rand(batch, length, 2, generator=g) < 0.1] = -1
    return calendar


def trained_calendar_model(seed: int = 0) -> GPT:
    """A calendar model whose calendar tables are not zero, as after training."""
    model = tiny_model(seed, calendar=True)
    with torch.no_grad():
        for table in model.calendar_tables():
            table.weight.normal_(generator=torch.Generator().manual_seed(seed + 1))
    return model


def test_a_fresh_calendar_model_is_the_plain_model():
    plain, calendar = tiny_model(0), tiny_model(0, calendar=True)
    idx = torch.randint(0, VOCAB, (3, L))
    with torch.no_grad():
        expected = plain(idx)
        assert torch.equal(calendar(idx), expected)
        assert torch.equal(calendar(idx, calendar=random_calendar(3, L)), expected)
    assert torch.equal(generate(plain, idx[:, :5], 8, num_samples=2, seed=3),
                       generate(calendar, idx[:, :5], 8, num_samples=2, seed=3, calendar=random_calendar(3, 13)))


def test_calendar_bookkeeping_and_optimizer_group():
    config = tiny_config(calendar=True)
    model = GPT(config)
    tables = model.calendar_tables()
    assert [tuple(t.weight.shape) for t in tables] == [(TOD_SLOTS, 32), (7, 32)]
    assert all(bool((t.weight == 0).all()) for t in tables)
    assert CALENDAR_ROWS == TOD_SLOTS + 7 and model.num_params() == config.num_params()
    breakdown = model.param_breakdown()
    assert breakdown["calendar"] == CALENDAR_ROWS * 32
    assert breakdown["embedding"] == (VOCAB + CALENDAR_ROWS) * 32
    assert breakdown["total"] == GPT(tiny_config()).num_params() + CALENDAR_ROWS * 32
    assert model.num_params(non_embedding=True) == GPT(tiny_config()).num_params(non_embedding=True)
    embedding = next(g for g in model.param_groups(0.1) if g["name"] == "embedding")
    assert all(any(p is t.weight for p in embedding["params"]) for t in tables)


def test_calendar_changes_the_output_and_unknown_is_no_calendar():
    model = trained_calendar_model()
    idx = torch.randint(0, VOCAB, (2, L))
    calendar = random_calendar(2, L, unknown=False)
    with torch.no_grad():
        without = model(idx)
        assert not torch.allclose(model(idx, calendar=calendar), without)
        assert torch.equal(model(idx, calendar=torch.full((2, L, 2), -1)), without)
        # an unknown time of day leaves the weekday's contribution
        half = calendar.clone()
        half[..., 0] = -1
        assert not torch.allclose(model(idx, calendar=half), without)


@pytest.mark.parametrize("context_len, new_tokens", [(5, 8), (12, 30)])  # (12, 30) overflows: the window refills
def test_cached_and_uncached_generation_with_calendar_are_identical(context_len, new_tokens):
    model = trained_calendar_model()
    contexts = torch.randint(0, VOCAB, (2, context_len))
    calendar = random_calendar(2, context_len + new_tokens)
    kwargs = dict(num_samples=3, temperature=1.0, seed=11, calendar=calendar)
    cached = generate(model, contexts, new_tokens, **kwargs)
    uncached = generate(model, contexts, new_tokens, use_cache=False, **kwargs)
    assert torch.equal(cached, uncached)
    assert not torch.equal(cached, generate(model, contexts, new_tokens, num_samples=3, seed=11))


def test_each_generated_position_reads_its_own_calendar():
    # Greedy paths step by step: token n is the argmax of a plain forward over tokens[:n] with calendar[:n], and
    # changing only the calendar of the last generated position's input changes nothing before it.
    model = trained_calendar_model()
    context = torch.randint(0, VOCAB, (1, 6))
    calendar = random_calendar(1, 6 + 5, unknown=False)
    path = generate(model, context, 5, temperature=0.0, calendar=calendar)[0, 0]
    tokens = torch.cat([context[0], path])
    with torch.no_grad():
        for n in range(6, 11):
            assert model(tokens[None, :n], calendar=calendar[:, :n])[0, -1].argmax() == tokens[n]
    moved = calendar.clone()
    moved[0, 9] = torch.tensor([(int(calendar[0, 9, 0]) + 7) % TOD_SLOTS, (int(calendar[0, 9, 1]) + 3) % 7])
    other = generate(model, context, 5, temperature=0.0, calendar=moved)[0, 0]
    assert torch.equal(other[:4], path[:4])  # position 9 is read only when predicting the last token


def test_long_contexts_crop_their_calendar_with_them():
    model = trained_calendar_model()
    contexts = torch.randint(0, VOCAB, (2, 40))
    calendar = random_calendar(2, 40 + 6)
    for use_cache in (True, False):
        a = generate(model, contexts, 6, num_samples=2, seed=0, use_cache=use_cache, calendar=calendar)
        b = generate(model, contexts[:, -L:], 6, num_samples=2, seed=0, use_cache=use_cache,
                     calendar=calendar[:, -(L + 6):])
        assert torch.equal(a, b)


def test_bad_calendar_inputs_are_clear_errors():
    plain, model = tiny_model(), trained_calendar_model()
    idx = torch.randint(0, VOCAB, (2, 8))
    with pytest.raises(ValueError, match="model.calendar=false"):
        plain(idx, calendar=random_calendar(2, 8))
    with pytest.raises(DataError, match="model.calendar=false"):  # a user error too: one `error:` line in the CLI
        generate(plain, idx, 3, calendar=random_calendar(2, 11))
    bad = [(random_calendar(2, 7), r"shape \(2, 8, 2\)"),
           (random_calendar(2, 8).float(), "integer tensor"),
           (torch.full((2, 8, 2), TOD_SLOTS), rf"time of day ids must lie in \[0, {TOD_SLOTS}\)"),
           (torch.stack([torch.zeros(2, 8), torch.full((2, 8), 7)], -1).long(), r"day of week ids must lie in \[0, 7"),
           (torch.full((2, 8, 2), -2), "-1 \\(unknown\\)")]
    for calendar, message in bad:
        with pytest.raises(CalendarInputError, match=message):
            model(idx, calendar=calendar)
    with pytest.raises(CalendarInputError, match=r"shape \(2, 11, 2\)"):
        generate(model, idx, 3, calendar=random_calendar(2, 10))  # the generated positions need a calendar too
    one = generate(model, idx[0], 3, seed=0, calendar=random_calendar(1, 11)[0].numpy())  # (T + n, 2), an array
    assert one.shape == (1, 1, 3)


def test_old_model_configs_load_without_a_calendar(tmp_path):
    plain = tiny_model()
    plain.save_pretrained(tmp_path / "old")
    saved = json.loads((tmp_path / "old" / "config.json").read_text())
    saved.pop("calendar")  # as written before the key existed
    (tmp_path / "old" / "config.json").write_text(json.dumps(saved))
    loaded = GPT.from_pretrained(tmp_path / "old")
    assert loaded.config.calendar is False and not loaded.calendar_tables()
    model = trained_calendar_model()
    model.save_pretrained(tmp_path / "new")
    again = GPT.from_pretrained(tmp_path / "new")
    assert again.config.calendar is True
    assert all(torch.equal(a.weight, b.weight) for a, b in zip(again.calendar_tables(), model.calendar_tables()))


def test_config_keys_and_overrides():
    config = resolve_config("tiny", overrides=["model.calendar=true", "train.calendar_dropout=0.25"])
    assert config.model.calendar is True and config.train.calendar_dropout == 0.25
    assert resolve_config("tiny").model.calendar is False and TrainConfig().calendar_dropout == 0.1
    for bad in ("model.calendar=maybe", "train.calendar_dropout=1", "train.calendar_dropout=-0.1"):
        with pytest.raises(ConfigError, match=bad.split("=")[0]):
            resolve_config("tiny", overrides=[bad])
    with pytest.raises(ConfigError, match="model.calendar"):
        GPTConfig(calendar=1)


def test_calendar_dropout_is_seeded_and_leaves_the_window_ids_alone():
    windows = WindowSet([np.arange(500)], length=9, calendars=[np.zeros((500, 2), dtype=np.int8)])
    ids, hidden = windows.sample(7, 3, 4000, calendar_dropout=0.1)
    assert np.array_equal(ids, windows.sample_ids(7, 3, 4000))
    again_ids, again_hidden = windows.sample(7, 3, 4000, calendar_dropout=0.1)
    assert np.array_equal(ids, again_ids) and np.array_equal(hidden, again_hidden)
    assert 0.08 < hidden.mean() < 0.12 and not windows.sample(7, 3, 4000)[1].any()


# ------------------------------------------------------------------------------------------ store and training
@pytest.fixture(scope="module")
def eurusd_store(tmp_path_factory):
    """sample:eurusd-hourly tokenized one bar per token (the tiny preset's tokenizer shape)."""
    return quantile_store(tmp_path_factory.mktemp("calendar"), "sample:eurusd-hourly")


def test_store_records_each_tokens_last_bar(eurusd_store, tmp_path):
    path, frame, tokenizer = eurusd_store
    store = TokenStore.open(path)
    patches = tokenizer.patchify(frame)["EURUSD"]
    ends = store.patch_ends("EURUSD")
    assert ends.equals(pd.DatetimeIndex(patches.ends, tz="UTC")) and len(ends) == len(store.tokens("EURUSD"))
    assert store.has_patch_ends
    series, _, _ = read_token_source(path, calendar=True)
    tod, dow = calendar_ids(patches.ends)
    np.testing.assert_array_equal(series["EURUSD"][2], np.stack([tod, dow], axis=1))
    # a store written before end times existed still opens; only a calendar model asks for them
    old = tmp_path / "old"
    old.mkdir()
    (old / "arrays").symlink_to(path / "arrays")
    index = json.loads((path / "index.json").read_text())
    del index["per_symbol"]["EURUSD"]["patch_ends"]
    (old / "index.json").write_text(json.dumps(index))
    old_store = TokenStore.open(old)
    assert old_store.patch_starts("EURUSD").equals(store.patch_starts("EURUSD")) and not old_store.has_patch_ends
    with pytest.raises(DataError, match="pricegpt tokenize"):
        old_store.patch_ends("EURUSD")
    with pytest.raises(DataError, match="model.calendar needs a token store with timestamps"):
        read_token_source(old, calendar=True)


def test_a_calendar_model_trains_end_to_end(eurusd_store, tmp_path):
    path = eurusd_store[0]
    run = tmp_path / "run"
    with torch_threads_kept():
        result = train_run(tokens=path, out=run, preset="tiny", max_steps=30,
                           overrides=[*TINY, "model.calendar=true", "train.eval_every=10"])
    assert result["steps"] == 30 and np.isfinite(result["best_val_loss"])
    weights = read_weights(latest_checkpoint(run) / "model.safetensors")
    for name in ("calendar_tod.weight", "calendar_dow.weight"):
        assert weights[name].abs().max() > 0, f"{name} did not train"
    model = GPT.from_pretrained(run / "model")
    assert model.config.calendar is True
    # the trained model forecasts with and without timestamps
    context = torch.tensor([[1, 2, 3, 4]])
    assert generate(model, context, 4, seed=0, calendar=random_calendar(1, 8)).shape == (1, 1, 4)
    assert generate(model, context, 4, seed=0).shape == (1, 1, 4)


def test_a_calendar_model_refuses_tokens_without_timestamps(tmp_path):
    tokens = write_token_file(tmp_path / "tokens.txt", markov_tokens(2000))
    with pytest.raises(DataError, match="model.calendar needs a token store with timestamps"):
        train_run(tokens=tokens, out=tmp_path / "run", preset="tiny", overrides=[*TINY, "model.calendar=true"])
    assert not (tmp_path / "run").exists()
    series, source, _ = read_token_source(tokens)
    with pytest.raises(ConfigError, match="model.calendar needs a token store"):
        config = resolve_config("tiny", overrides=[*TINY, "model.calendar=true", "model.vocab_size=16"])
        Trainer(config, TokenData.from_series(series, 16, 16, source=source), tmp_path / "run2")


# a constant learning rate, so that a run stopped at step 15 and resumed to 30 follows the uninterrupted schedule
EXACT = [*TINY, "model.calendar=true", "train.calendar_dropout=0.5", "model.dropout=0.1", "train.warmup_steps=0",
         "train.min_lr_frac=1.0", "train.save_every=5", "train.eval_every=5", "train.batch_size=4"]


def test_a_resumed_calendar_run_matches_the_uninterrupted_one(eurusd_store, tmp_path):
    path = eurusd_store[0]
    with torch_threads_kept():
        train_run(tokens=path, out=tmp_path / "whole", preset="tiny", max_steps=30, overrides=EXACT)
        train_run(tokens=path, out=tmp_path / "parts", preset="tiny", max_steps=15, overrides=EXACT)
        train_run(tokens=path, out=tmp_path / "parts", max_steps=30, resume=True)
    whole = read_weights(latest_checkpoint(tmp_path / "whole") / "model.safetensors")
    parts = read_weights(latest_checkpoint(tmp_path / "parts") / "model.safetensors")
    assert_same_weights(whole, parts)


def test_two_processes_train_a_calendar_model_as_one(eurusd_store, tmp_path):
    path = eurusd_store[0]
    settings = [*EXACT, "model.dropout=0.0", "train.global_batch_size=8"]  # dropout draws differ by process
    single, ddp = single_and_two_process_weights(path, tmp_path, settings, max_steps=10)
    assert ddp.keys() == single.keys() and single["calendar_tod.weight"].abs().max() > 0
    assert_close_weights(single, ddp)


def test_analyze_shows_a_calendar_models_learned_time_of_day_profile(eurusd_store, tmp_path, capsys):
    from pricegpt.analysis import analyze_to_dir
    from train_helpers import cli_main

    path = eurusd_store[0]
    model = tiny_model(0, calendar=True)
    with torch.no_grad():  # only 14:00-14:30 (slot 28) means something to this model
        model.calendar_tod.weight[28] = torch.randn(32, generator=torch.Generator().manual_seed(0)) * 3
    model.save_pretrained(tmp_path / "run" / "model")
    result, out, names = analyze_to_dir(path, tmp_path / "analysis", run=tmp_path / "run")
    profile = result["calendar_profile"]
    relative = np.array(profile["relative"])
    others = np.delete(relative, 28)
    assert len(relative) == TOD_SLOTS and "calendar_profile.png" in names and (out / "calendar_profile.png").is_file()
    assert np.allclose(others, others[0]) and np.isclose(profile["unknown_relative"], others[0])
    assert abs(relative[28] - others[0]) > 0.01
    assert sum(profile["observed_tokens"]) == sum(len(TokenStore.open(path).tokens(s)) for s in ["EURUSD"])
    # a run without calendar embeddings is one error line, before any output
    tiny_model(0).save_pretrained(tmp_path / "plain" / "model")
    result = cli_main(capsys, "analyze", "--tokens", path, "--run", tmp_path / "plain", "--out", tmp_path / "a2")
    assert result.returncode == 2 and result.stderr.startswith("error: ") and "model.calendar=false" in result.stderr
    assert not (tmp_path / "a2").exists()


def test_analyze_refuses_tokens_of_another_tokenizer(eurusd_store, tmp_path):
    from pricegpt.analysis import analyze_to_dir

    path, frame, _ = eurusd_store
    splits = time_splits(frame)
    fit_to_dir(frame, tmp_path / "tok64", kind="quantile", patch_len=1, codebook_size=64,
               train_end=splits.train_end, val_end=splits.val_end)
    write_token_store(load_tokenizer(tmp_path / "tok64"), frame, tmp_path / "tokens64", splits)
    tiny_model(0, calendar=True).save_pretrained(tmp_path / "run" / "model")
    with pytest.raises(DataError, match="was not written with the tokenizer of --run"):
        analyze_to_dir(tmp_path / "tokens64", tmp_path / "a1", run=tmp_path / "run")
    with pytest.raises(DataError, match="the tokenizer has 64 codes but the tokens 32"):
        analyze_to_dir(path, tmp_path / "a2", tokenizer=tmp_path / "tok64")
    assert not (tmp_path / "a1").exists() and not (tmp_path / "a2").exists()
