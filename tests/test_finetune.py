"""Fine-tuning (`train --init`, `pipeline --init`): a run starts from a saved forecaster's weights and tokenizer.

One small pretrained forecaster (a quantile tokenizer on two symbols of the embedded daily data, 30 steps of a
one-layer GPT, saved with Forecaster.save_pretrained) is the init of every test.
"""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest

from pricegpt.config import load_config
from pricegpt.data import time_splits
from pricegpt.errors import ConfigError, OutputExistsError
from pricegpt.forecast import Forecaster
from pricegpt.model.gpt import GPT
from pricegpt.pipeline import run_pipeline
from pricegpt.tokenizer import fit_to_dir, load_tokenizer, write_token_store
from pricegpt.train import Trainer, latest_checkpoint, train_run
from train_helpers import TINY, assert_same_weights, read_weights, torch_threads_kept, tree, write_token_file

K = 16  # codebook size: the model's vocabulary
# the init's network: one layer; a fine-tune asks for two in its --set and still gets the init's one
INIT_SETTINGS = [*TINY, "train.eval_every=10"]
FINETUNE_SETTINGS = [*TINY, "model.n_layer=2", "model.dropout=0.1", "train.eval_every=4", "train.save_every=4",
                     "train.seed=3"]
FINETUNE_STEPS = 12


@pytest.fixture(scope="module")
def prices(stocks_frame):
    return stocks_frame[stocks_frame["symbol"].isin(["AAPL", "IBM"])].groupby("symbol").head(700)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, prices):
    """(forecaster folder, its run directory, the run's token store) of a small trained model."""
    root = tmp_path_factory.mktemp("pretrained")
    splits = time_splits(prices)
    run = root / "run"
    fit_to_dir(prices, run / "tokenizer", kind="quantile", patch_len=4, codebook_size=K,
               train_end=splits.train_end, val_end=splits.val_end)
    write_token_store(load_tokenizer(run / "tokenizer"), prices, run / "tokens", splits)
    with torch_threads_kept():
        train_run(tokens=run / "tokens", out=run, preset="tiny", overrides=INIT_SETTINGS, max_steps=30,
                  allow_existing=True)
    folder = Forecaster.from_run(run).save_pretrained(root / "forecaster")
    return folder, run, run / "tokens"


def finetune(tokens, out, init, **kwargs):
    with torch_threads_kept():
        return train_run(tokens=tokens, out=out, preset="tiny", overrides=FINETUNE_SETTINGS,
                         max_steps=FINETUNE_STEPS, init=init, **kwargs)


def val_loss_at(run, step: int) -> float:
    metrics = np.genfromtxt(run / "metrics.csv", delimiter=",", names=True)
    return float(metrics["val_loss"][metrics["step"] == step][0])


@pytest.fixture(scope="module")
def finetuned(pretrained, tmp_path_factory):
    """An uninterrupted fine-tune of the forecaster folder on the tokens it was trained on."""
    folder, _, tokens = pretrained
    run = tmp_path_factory.mktemp("finetuned") / "run"
    result = finetune(tokens, run, folder)
    assert result["steps"] == FINETUNE_STEPS
    return run


def test_a_finetune_starts_from_the_saved_weights(pretrained, finetuned, tmp_path):
    folder, init_run, tokens = pretrained
    init_loss = json.loads((init_run / "model" / "meta.json").read_text())["val_loss"]
    # the step-0 evaluation is the init model's on the same windows; a fresh model's is ln(K) (zero-init head)
    assert val_loss_at(finetuned, 0) == pytest.approx(init_loss, abs=1e-4)
    assert abs(init_loss - math.log(K)) > 0.01
    # the init's network (one layer), the dropout the --set asked for
    model = GPT.from_pretrained(finetuned / "model")
    assert model.config.n_layer == 1 and model.config.vocab_size == K
    assert load_config(finetuned / "config.yaml").model.dropout == 0.1
    # where it started is recorded, also in the best model's meta.json
    record = json.loads((finetuned / "init.json").read_text())
    assert record["path"] == str(folder.resolve())
    assert record["tokenizer_hash"] == load_tokenizer(folder / "tokenizer").hash
    assert json.loads((finetuned / "model" / "meta.json").read_text())["init"] == record

    # weights stored in bf16 are cast to fp32 for training: the same start, up to bf16 rounding
    import torch
    from safetensors.torch import save_file

    bf16 = tmp_path / "bf16"
    shutil.copytree(folder, bf16)
    weights = read_weights(bf16 / "model" / "model.safetensors")
    save_file({k: v.to(torch.bfloat16) for k, v in weights.items()}, str(bf16 / "model" / "model.safetensors"))
    with torch_threads_kept():
        train_run(tokens=tokens, out=tmp_path / "run", preset="tiny", overrides=FINETUNE_SETTINGS, max_steps=2,
                  init=bf16)
    assert val_loss_at(tmp_path / "run", 0) == pytest.approx(init_loss, abs=0.02)
    assert all(t.dtype == torch.float32 for t in read_weights(tmp_path / "run" / "model" / "model.safetensors")
               .values())


def test_tokens_of_another_tokenizer_are_refused_before_any_file(pretrained, prices, tmp_path):
    folder, _, _ = pretrained
    # the same kind and codebook size, fitted on other data: other codes under the same ids
    splits = time_splits(prices)
    other = fit_to_dir(prices[prices["symbol"] == "IBM"], tmp_path / "other-tokenizer", kind="quantile",
                       patch_len=4, codebook_size=K, train_end=splits.train_end, val_end=splits.val_end)
    assert other["tokenizer_hash"] != load_tokenizer(folder / "tokenizer").hash
    write_token_store(load_tokenizer(tmp_path / "other-tokenizer"), prices, tmp_path / "tokens", splits)
    txt = write_token_file(tmp_path / "tokens.txt", np.arange(2000) % K)
    for tokens, fragment in ((tmp_path / "tokens", "another tokenizer"), (txt, "do not record their tokenizer")):
        with pytest.raises(ConfigError, match=fr"{fragment}.*pricegpt tokenize --tokenizer {folder}"):
            finetune(tokens, tmp_path / "run", folder)
        assert not (tmp_path / "run").exists()
    with pytest.raises(ConfigError, match="no such folder"):
        finetune(tmp_path / "tokens", tmp_path / "run", tmp_path / "nowhere")
    assert not (tmp_path / "run").exists()


class Interrupted(Exception):
    pass


def interrupt_at(monkeypatch, stop_step: int) -> None:
    """Trainer.train_step raises once `stop_step` steps are done (a crash: no checkpoint saved on the way out)."""
    step = Trainer.train_step

    def crashing(self):
        if self.step == stop_step:
            raise Interrupted
        step(self)

    monkeypatch.setattr(Trainer, "train_step", crashing)


@pytest.mark.parametrize("stop_step", [6, 2], ids=["after-a-checkpoint", "before-the-first-checkpoint"])
def test_an_interrupted_finetune_resumes_to_the_uninterrupted_weights(pretrained, finetuned, tmp_path, monkeypatch,
                                                                      stop_step):
    folder, init_run, tokens = pretrained
    init = tmp_path / "init"
    shutil.copytree(folder, init)
    run = tmp_path / "run"
    with monkeypatch.context() as patch:
        interrupt_at(patch, stop_step)
        with pytest.raises(Interrupted):
            finetune(tokens, run, init)
    assert (latest_checkpoint(run) is not None) == (stop_step > 4)
    with pytest.raises(ConfigError, match="was started from"):  # another init cannot continue it
        finetune(tokens, run, init_run, resume=True)
    if latest_checkpoint(run) is not None:
        shutil.rmtree(init)  # the checkpoint holds the weights: the init is read at step 0 only
    # without --init: RUN/init.json knows where the run started (a restart from step 0 reads it again)
    with torch_threads_kept():
        result = train_run(tokens=tokens, out=run, resume=True)
    assert result["steps"] == FINETUNE_STEPS
    assert_same_weights(read_weights(run / "model" / "model.safetensors"),
                        read_weights(finetuned / "model" / "model.safetensors"))
    assert json.loads((run / "model" / "meta.json").read_text())["init"]["path"] == str(init.resolve())


def test_the_pipeline_finetunes_with_the_init_tokenizer(pretrained, prices, tmp_path):
    folder, init_run, _ = pretrained
    csv = tmp_path / "prices.csv"
    prices.to_csv(csv, index=False)
    settings = dict(preset="tiny", overrides=[*TINY, "train.eval_every=5"], max_steps=5, num_samples=8,
                    tokenizer_kind="quantile", init=str(folder), calibration_max_origins=20)
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match="no such folder"):  # checked before the run directory exists
        run_pipeline(csv, out, **{**settings, "init": str(tmp_path / "nowhere")})
    with pytest.raises(ConfigError, match="--codebook-size"):
        run_pipeline(csv, out, **settings, codebook_size=8)
    assert not out.exists()

    with torch_threads_kept():
        result = run_pipeline(csv, out, **settings)
    assert result.evaluation["forecast"]["n_origins"] > 0
    init_hash = load_tokenizer(folder / "tokenizer").hash
    assert load_tokenizer(out / "tokenizer").hash == init_hash
    assert json.loads((out / "tokens" / "index.json").read_text())["tokenizer_hash"] == init_hash
    report = json.loads((out / "tokenizer" / "report.json").read_text())
    assert report["tokenizer_hash"] == init_hash and report["codebook_size"] == K
    record = json.loads((out / "run.json").read_text())["init"]
    assert record["path"] == str(folder.resolve()) and record["tokenizer_hash"] == init_hash
    assert json.loads((out / "model" / "meta.json").read_text())["init"] == record
    assert GPT.from_pretrained(out / "model").config.n_layer == 1  # the init's network, not the preset's

    # another init is another run
    before = tree(out)
    with pytest.raises(OutputExistsError, match="different settings"):
        run_pipeline(csv, out, **{**settings, "init": str(init_run)})
    assert tree(out) == before
