"""A forecaster is one folder: save_pretrained writes it, from_pretrained loads it without the run around it."""

from __future__ import annotations

import json
import shutil

import pytest

from pricegpt.data.windows import run_cutoffs
from pricegpt.errors import CheckpointError, OutputExistsError, PriceGPTError
from pricegpt.forecast import Forecaster
from pricegpt.runs import load_run
from test_evaluate import SCRIPT_SYMBOL, tiny_run  # noqa: F401  (the fixture: a real run trained for 30 steps)


@pytest.fixture
def calibrated_run(tiny_run, tmp_path):  # noqa: F811
    """A copy of the tiny run with a calibrated temperature other than 1."""
    run_dir, csv, _ = tiny_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    load_run(copy).save_calibration({"temperature": 0.8, "split": "val"})
    return copy, csv


def test_a_saved_forecaster_moved_elsewhere_forecasts_exactly_like_its_run(calibrated_run, tmp_path):
    run_dir, csv = calibrated_run
    original = Forecaster.from_run(run_dir)
    expected = original.predict_quantiles(csv, horizon_bars=6, num_samples=64, seed=3)
    saved = original.save_pretrained(tmp_path / "forecaster")
    assert sorted(p.relative_to(saved).as_posix() for p in saved.rglob("*") if not p.name.startswith(".")) == [
        "config.json", "model", "model/config.json", "model/model.safetensors", "tokenizer",
        "tokenizer/config.json", "tokenizer/model.safetensors"]
    config = json.loads((saved / "config.json").read_text())
    assert config["temperature"] == 0.8 and config["format_version"] == 1 and config["horizon"] is None
    assert (config["train_end"], config["val_end"]) == tuple(t.isoformat().replace("+00:00", "Z")
                                                             for t in run_cutoffs(original.run))

    elsewhere = tmp_path / "handed-over"
    shutil.copytree(saved, elsewhere)
    shutil.rmtree(saved)
    shutil.rmtree(run_dir)
    loaded = Forecaster.from_pretrained(elsewhere)
    assert loaded.temperature == 0.8 and run_cutoffs(loaded.run) == run_cutoffs(original.run)
    got = loaded.predict_quantiles(csv, horizon_bars=6, num_samples=64, seed=3)
    assert got.equals(expected)
    assert set(got["symbol"]) == {SCRIPT_SYMBOL, "MSFT"}


def test_save_pretrained_never_replaces_a_folder_it_did_not_write(calibrated_run, tmp_path):
    run_dir, _ = calibrated_run
    forecaster = Forecaster.from_run(run_dir)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    for overwrite in (False, True):
        with pytest.raises(OutputExistsError, match="mine"):
            forecaster.save_pretrained(mine, overwrite=overwrite)
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]

    (tmp_path / "empty").mkdir()
    forecaster.save_pretrained(tmp_path / "empty")  # an empty folder holds nothing to protect
    with pytest.raises(OutputExistsError, match="already exists"):
        forecaster.save_pretrained(tmp_path / "empty")
    forecaster.save_pretrained(tmp_path / "empty", overwrite=True)  # its own folder, when asked to
    assert Forecaster.from_pretrained(tmp_path / "empty").temperature == 0.8


def _damage_config(folder, **changes):
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **changes}))


@pytest.mark.parametrize("damage, fragment", [
    (lambda d: (d / "config.json").unlink(), "config.json not found"),
    (lambda d: (d / "config.json").write_text("{not json"), "config.json is not valid JSON"),
    (lambda d: _damage_config(d, temperature=-1), "config.json: temperature -1"),
    (lambda d: _damage_config(d, train_end="yesterday-ish"), "config.json: train_end"),
    (lambda d: _damage_config(d, format_version=99), "newer pricegpt"),
    (lambda d: _damage_config(d, kind="something else"), "not a forecaster config"),
    (lambda d: (d / "model" / "model.safetensors").write_bytes(b"\0" * 10), "model/model.safetensors is truncated"),
    (lambda d: shutil.rmtree(d / "model"), "model/config.json not found"),
    (lambda d: shutil.rmtree(d / "tokenizer"), "forecaster/tokenizer: no such tokenizer directory"),
    (lambda d: (d / "tokenizer" / "model.safetensors").write_bytes(b"junk"), "tokenizer/model.safetensors is"),
    (lambda d: _damage_config(d, tokenizer_hash="0" * 64), "not the tokenizer"),
], ids=["no-config", "bad-json", "temperature", "cutoff", "version", "kind", "weights", "no-model",
        "no-tokenizer", "tokenizer-weights", "other-tokenizer"])
def test_a_damaged_folder_is_a_user_error_naming_the_file(calibrated_run, tmp_path, damage, fragment):
    run_dir, _ = calibrated_run
    folder = Forecaster.from_run(run_dir).save_pretrained(tmp_path / "forecaster")
    damage(folder)
    with pytest.raises(PriceGPTError, match=fragment):
        Forecaster.from_pretrained(folder)


def test_a_run_directory_is_not_a_forecaster_folder(calibrated_run, tmp_path):
    run_dir, _ = calibrated_run
    with pytest.raises(CheckpointError, match="from_run"):
        Forecaster.from_pretrained(run_dir)
    with pytest.raises(CheckpointError, match="not found"):
        Forecaster.from_pretrained(tmp_path / "nowhere")
