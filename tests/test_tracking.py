"""Experiment tracking: training callbacks see the run's events in order, a raising one stops training, and MLflow
(a local file store) records a pipeline run's config, losses, evaluation verdicts and report."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

from pricegpt.errors import ConfigError
from pricegpt.train import Callback, CallbackError, latest_checkpoint, train_run
from train_helpers import TINY, markov_tokens, torch_threads_kept, write_token_file

V = 16
STEPS = ["train.eval_every=10", "train.save_every=10", "train.log_every=5"]  # with max_steps=20


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    return write_token_file(tmp_path_factory.mktemp("tokens") / "tokens.txt", markov_tokens(4000, V))


class Recorder(Callback):
    """Every event as (name, info); checks that what an event names is on disk when it is called."""

    def __init__(self):
        self.events: list[tuple[str, dict]] = []

    def on_start(self, info):
        self.events.append(("start", info))

    def on_step(self, info):
        self.events.append(("step", info))

    def on_evaluation(self, info):
        assert Path(info["model_dir"], "model.safetensors").is_file()
        self.events.append(("evaluation", info))

    def on_checkpoint(self, info):
        assert Path(info["path"], "meta.json").is_file()
        self.events.append(("checkpoint", info))

    def on_end(self, info):
        self.events.append(("end", info))

    def order(self):
        return [(name, info["step"]) for name, info in self.events]


class EvaluationsOnly:
    """A callback need not subclass Callback nor have every method."""

    def __init__(self):
        self.val_losses = []

    def on_evaluation(self, info):
        self.val_losses.append(info["val_loss"])


def _train(tokens, out, callbacks, *, resume=False, overrides=(), max_steps=20):
    with torch_threads_kept():
        return train_run(tokens=tokens, out=out, preset="tiny", max_steps=max_steps, resume=resume,
                         overrides=[*TINY, f"model.vocab_size={V}", *STEPS, *overrides], callbacks=callbacks)


def test_callbacks_get_the_events_in_order_with_the_run_s_values(tokens, tmp_path):
    recorder, evaluations = Recorder(), EvaluationsOnly()
    result = _train(tokens, tmp_path / "run", [recorder, evaluations])

    assert recorder.order() == [("start", 0), ("evaluation", 0), ("step", 5), ("step", 10), ("evaluation", 10),
                                ("checkpoint", 10), ("step", 15), ("step", 20), ("evaluation", 20),
                                ("checkpoint", 20), ("end", 20)]
    events = recorder.events
    start = events[0][1]
    assert start["resumed"] is False and start["max_steps"] == 20 and start["num_params"] > 0
    assert start["config"]["train"]["eval_every"] == 10 and start["config"]["model"]["vocab_size"] == V
    first_eval = events[1][1]
    assert abs(first_eval["val_loss"] - math.log(V)) < 1e-3  # a zero-init head predicts uniformly
    assert first_eval["train_loss"] is None and first_eval["is_best"] and first_eval["best_step"] == 0
    steps = [info for name, info in events if name == "step"]
    assert all(0 < info["train_loss"] < 2 * math.log(V) and info["lr"] > 0 and info["tokens_per_s"] > 0
               for info in steps)
    assert steps[-1]["train_loss"] < steps[0]["train_loss"]  # it learns
    assert steps[1]["lr"] == pytest.approx(3e-3)  # warm-up over 10 steps reaches train.lr=3e-3
    assert [info["path"] for name, info in events if name == "checkpoint"][-1] == str(latest_checkpoint(
        tmp_path / "run"))

    end = events[-1][1]
    assert end["status"] == "finished" and end["error"] is None and end["steps"] == 20 == result["steps"]
    assert end["best_val_loss"] == result["best_val_loss"] == min(evaluations.val_losses)
    assert end["best_step"] == result["best_step"] and Path(end["metrics_csv"]).is_file()
    assert len(evaluations.val_losses) == 3


class RaisesAt(Callback):
    def __init__(self, step):
        self.step = step

    def on_step(self, info):
        if info["step"] == self.step:
            raise ValueError("the tracking server said no")


def test_a_raising_callback_stops_training_and_the_run_resumes(tokens, tmp_path):
    run, recorder = tmp_path / "run", Recorder()
    with pytest.raises(CallbackError, match=r"RaisesAt\.on_step raised at step 15: ValueError: the tracking "
                                            r"server said no") as caught:
        _train(tokens, run, [RaisesAt(15), recorder])
    assert isinstance(caught.value.__cause__, ValueError)  # the callback's own exception, chained
    assert [name for name, _ in recorder.events][-1] == "end"
    end = recorder.events[-1][1]
    assert end["status"] == "failed" and "RaisesAt.on_step" in end["error"] and end["saved_step"] == 10
    assert latest_checkpoint(run).name.startswith("step-000010")  # no step after the failure was saved

    resumed = Recorder()
    result = _train(tokens, run, [resumed], resume=True)
    assert result["steps"] == 20
    assert resumed.events[0][0] == "start" and resumed.events[0][1]["resumed"] and resumed.order()[0][1] == 10
    assert resumed.order()[-1] == ("end", 20) and resumed.events[-1][1]["status"] == "finished"


def test_an_interrupt_reaches_on_end_as_interrupted(tokens, tmp_path):
    class CtrlC(Callback):
        def on_step(self, info):
            if info["step"] == 5:
                raise KeyboardInterrupt  # not an error of the callback: it passes through unchanged

    recorder = Recorder()
    with pytest.raises(KeyboardInterrupt):
        _train(tokens, tmp_path / "run", [CtrlC(), recorder])
    assert recorder.order()[-1] == ("end", 5) and recorder.events[-1][1]["status"] == "interrupted"


def test_wrong_callbacks_are_refused_before_any_file(tokens, tmp_path):
    run = tmp_path / "run"
    with pytest.raises(ConfigError, match=r"pass an instance: callbacks=\[Recorder\(\)\]"):
        _train(tokens, run, [Recorder])
    with pytest.raises(ConfigError, match="has none of the methods on_start"):
        _train(tokens, run, [object()])
    assert not run.exists()


def test_mlflow_without_the_package_is_one_clear_error_before_training(tokens, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # `import mlflow` raises ImportError
    run = tmp_path / "run"
    with pytest.raises(ConfigError, match=r"train.mlflow=true needs MLflow: pip install 'pricegpt\[mlflow\]'"):
        _train(tokens, run, None, overrides=["train.mlflow=true"])
    assert not run.exists()
    with pytest.raises(ConfigError, match=r"train.mlflow must be a boolean \(true/false\)"):
        _train(tokens, run, None, overrides=["train.mlflow=3"])


# ------------------------------------------------------------------------------------------------------ MLflow
@pytest.fixture
def mlflow_store(tmp_path, monkeypatch):
    """A local MLflow file store in tmp_path, through MLflow's own environment variable."""
    mlflow = pytest.importorskip("mlflow", reason="MLflow is not installed (pip install 'pricegpt[mlflow]')")
    store = tmp_path / "mlruns"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 refuses a file store without it
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    return mlflow.MlflowClient(), store


def _only_run(client, run_dir: Path):
    runs = client.search_runs(["0"])
    assert len(runs) == 1, [r.data.tags for r in runs]
    run = runs[0]
    assert run.data.tags["pricegpt.run_dir"] == str(run_dir.resolve())
    return run


def _artifacts(client, run_id, path=None) -> set[str]:
    return {a.path for a in client.list_artifacts(run_id, path)}


def test_mlflow_records_the_pipeline_run_and_its_evaluation(mlflow_store, tmp_path, stocks_frame):
    from pricegpt.pipeline import run_pipeline
    from pricegpt.train import log_evaluation

    client, store = mlflow_store
    csv = tmp_path / "stocks.csv"
    stocks_frame[stocks_frame["symbol"].isin(["AAPL", "IBM"])].groupby("symbol").head(600).to_csv(csv, index=False)
    out = tmp_path / "run"
    overrides = ["model.n_layer=1", "model.n_embd=32", "model.n_head=2", "model.n_kv_head=1", "model.sequence_len=32",
                 "train.batch_size=8", "train.eval_every=10", "train.eval_batches=2", "train.log_every=5",
                 "train.warmup_steps=5", "train.num_threads=1", "train.mlflow=true"]
    with torch_threads_kept():
        run_pipeline(csv, out, preset="tiny", overrides=overrides, max_steps=10, num_samples=16,
                     tokenizer_kind="quantile", codebook_size=32, calibration_max_origins=20)

    run = _only_run(client, out)  # the training's
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["model.n_layer"] == "1" and params["train.mlflow"] == "True" and params["train.max_steps"] == "10"
    assert params["model.vocab_size"] == "32"  # the resolved config: the tokenizer's vocabulary
    history = {key: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]
               for key in ("train_loss", "val_loss", "lr")}
    assert [step for step, _ in history["train_loss"]] == [5, 10]
    assert [step for step, _ in history["val_loss"]] == [0, 10] and history["val_loss"][0][1] == pytest.approx(
        math.log(32), abs=1e-3)
    assert all(value > 0 for _, value in history["lr"])
    assert {"config.yaml", "metrics.csv", "model"} <= _artifacts(client, run.info.run_id)
    assert {"model/config.json", "model/meta.json"} <= _artifacts(client, run.info.run_id, "model")

    # the evaluation (the pipeline ran it after training) joins the same MLflow run
    assert log_evaluation(out) == run.info.run_id
    run = _only_run(client, out)
    evaluation = json.loads((out / "eval" / "metrics.json").read_text())["forecast"]
    metrics, tags = run.data.metrics, run.data.tags
    assert tags["eval.verdict"] == evaluation["verdict"]["verdict"]
    assert tags["eval.verdict"] in ("better", "no significant difference", "worse")
    assert tags["eval.best_baseline"] == evaluation["verdict"]["best_baseline"]
    assert metrics["eval.crps_ratio"] == pytest.approx(evaluation["verdict"]["crps_ratio"])
    assert metrics["eval.crps_ratio_ci_low"] <= metrics["eval.crps_ratio"] <= metrics["eval.crps_ratio_ci_high"]
    assert metrics["eval.crps"] == pytest.approx(evaluation["model"]["crps"])
    assert tags["eval.random_walk.verdict"] == evaluation["comparison"]["random_walk"]["verdict"]
    assert {"eval/metrics.json", "eval/report.html", "eval/report.md"} <= _artifacts(client, run.info.run_id,
                                                                                     "eval")
    report = Path(client.download_artifacts(run.info.run_id, "eval/report.html", str(tmp_path)))
    assert report.read_bytes() == (out / "eval" / "report.html").read_bytes()
    assert store.is_dir()


def test_a_resumed_training_continues_its_mlflow_run(mlflow_store, tokens, tmp_path):
    from pricegpt.train import MlflowCallback

    client, _ = mlflow_store
    run_dir = tmp_path / "run"
    with pytest.raises(CallbackError):
        _train(tokens, run_dir, [RaisesAt(15)], overrides=["train.mlflow=true"])
    failed = _only_run(client, run_dir)
    assert failed.info.status == "FAILED" and "RaisesAt.on_step" in failed.data.tags["pricegpt.error"]

    # a larger --max-steps on resume: MLflow's params cannot change, the new value becomes a tag
    _train(tokens, run_dir, [MlflowCallback()], resume=True, max_steps=30)
    run = _only_run(client, run_dir)
    assert run.info.run_id == failed.info.run_id and run.info.status == "FINISHED"
    assert run.data.params["train.max_steps"] == "20" and run.data.tags["train.max_steps"] == "30"
    val_steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")]
    assert val_steps == [0, 10, 20, 30]


def test_an_unusable_tracking_store_is_refused_before_any_file(tokens, tmp_path, monkeypatch):
    pytest.importorskip("mlflow", reason="MLflow is not installed (pip install 'pricegpt[mlflow]')")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "nosuchscheme://nowhere")
    run = tmp_path / "run"
    with pytest.raises(ConfigError, match="MLflow cannot open the tracking store nosuchscheme://nowhere"):
        _train(tokens, run, None, overrides=["train.mlflow=true"])
    assert not run.exists()
