"""Experiment tracking with MLflow: `MlflowCallback` logs a training run, `log_evaluation(RUN)` its evaluation.

Optional: `pip install 'pricegpt[mlflow]'` (mlflow-skinny, MLflow's client without its server and UI). Turned on
with `--set train.mlflow=true` (train_run adds an MlflowCallback) or `train_run(..., callbacks=[MlflowCallback()])`.
Where runs go is MLflow's own setting: the MLFLOW_TRACKING_URI environment variable (an http(s) server,
`databricks`, `sqlite:///...` with the full `mlflow` package, or `file:///.../mlruns`, which MLflow 3 accepts only
with MLFLOW_ALLOW_FILE_STORE=true); MLFLOW_EXPERIMENT_NAME (or MLFLOW_EXPERIMENT_ID) picks the experiment, else
MLflow's "Default" one.

One MLflow run per run directory, tagged `pricegpt.run_dir` (its absolute path): a resumed training continues the
newest MLflow run with that tag, and `log_evaluation(RUN)` adds the evaluation to it.

  start       params: the resolved config, flattened (model.n_layer, train.lr, ...); config.yaml as an artifact;
              tags pricegpt.run_dir, pricegpt.num_params, pricegpt.device
  each log    metrics train_loss, lr, tokens_per_s, mfu (when known) at their step
  each eval   metrics val_loss, best_val_loss
  end         the model's config.json and meta.json (artifacts under model/), metrics.csv, training_curve.png;
              RUN/eval/metrics.json when present (log_evaluation); the MLflow run ends FINISHED, KILLED (Ctrl-C,
              SIGTERM) or FAILED
  evaluation  metrics eval.crps_ratio with eval.crps_ratio_ci_low / _high (against the best baseline), eval.crps,
              eval.coverage_50 / _90, eval.directional_accuracy, eval.mae_median, eval.perplexity and, per
              baseline, eval.BASELINE.crps_ratio and .dm_pvalue; tags eval.verdict, eval.best_baseline,
              eval.BASELINE.verdict, eval.split, eval.horizon_bars, eval.n_origins; artifacts eval/metrics.json,
              eval/report.html, eval/report.md

MLflow's params cannot change: a resumed run whose config changed (a larger --max-steps) records the new values
as tags of the same names.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

from ..errors import CheckpointError, ConfigError
from ..rundir import RunDir
from .callbacks import Callback
from .metrics import CURVE_FILE

RUN_DIR_TAG = "pricegpt.run_dir"
INSTALL = "pip install 'pricegpt[mlflow]'"
# MLflow run status by how training ended (callbacks.py's on_end "status")
STATUS = {"finished": "FINISHED", "interrupted": "KILLED", "failed": "FAILED"}


def require_mlflow(what: str = "train.mlflow=true"):
    """The mlflow module, or a ConfigError saying how to install it."""
    try:
        # imported only when tracking is asked for: mlflow is an optional extra and takes a second to import
        import mlflow
    except ImportError:
        hint = " (or set train.mlflow=false)" if what.startswith("train.") else ""
        raise ConfigError(f"{what} needs MLflow: {INSTALL}{hint}") from None
    return mlflow


def _client(tracking_uri: str | None, what: str):
    """An MlflowClient at `tracking_uri` (None: MLflow's own MLFLOW_TRACKING_URI / default); a store MLflow
    refuses to open is a ConfigError naming it."""
    mlflow = require_mlflow(what)
    try:
        return mlflow.MlflowClient(tracking_uri=tracking_uri)
    except mlflow.exceptions.MlflowException as err:
        where = ("tracking_uri" if tracking_uri else "MLFLOW_TRACKING_URI" if os.environ.get("MLFLOW_TRACKING_URI")
                 else "MLflow's default: MLFLOW_TRACKING_URI is not set")
        reason = str(err).strip().rstrip(".")
        raise ConfigError(f"MLflow cannot open the tracking store {tracking_uri or mlflow.get_tracking_uri()} "
                          f"({where}): {reason}. Set MLFLOW_TRACKING_URI to your tracking server "
                          "(http://HOST:5000), or to file:///ABSOLUTE/PATH/mlruns together with "
                          "MLFLOW_ALLOW_FILE_STORE=true for a local folder") from err


class MlflowCallback(Callback):
    """Logs a training run to MLflow (see the module docstring for what and where).

    experiment_name: the MLflow experiment (default: MLFLOW_EXPERIMENT_NAME / MLFLOW_EXPERIMENT_ID, else
    "Default"); run_name: the MLflow run's name (default: the run directory's name); tracking_uri: instead of
    MLFLOW_TRACKING_URI. After on_start, `run_id` is the MLflow run's id."""

    def __init__(self, experiment_name: str | None = None, run_name: str | None = None,
                 tracking_uri: str | None = None):
        self.client = _client(tracking_uri, "MlflowCallback")
        self.experiment_name, self.run_name = experiment_name, run_name
        self.run_id: str | None = None
        self.run_dir: Path | None = None

    def on_start(self, info: dict) -> None:
        from mlflow.entities import Param, RunTag

        self.run_dir = Path(info["run_dir"]).resolve()
        experiment_id = _experiment_id(self.client, self.experiment_name)
        run = _find_run(self.client, experiment_id, self.run_dir) if info["resumed"] else None
        tags = {RUN_DIR_TAG: str(self.run_dir), "pricegpt.num_params": str(info["num_params"]),
                "pricegpt.device": f"{info['device']} x{info['world_size']}"}
        if run is None:
            run = self.client.create_run(experiment_id, run_name=self.run_name or self.run_dir.name, tags=tags)
            logged = {}
        else:
            self.client.update_run(run.info.run_id, status="RUNNING")
            tags["pricegpt.resumed_at_step"] = str(info["step"])
            logged = run.data.params
        self.run_id = run.info.run_id
        params = {key: str(value)[:6000] for key, value in _flatten(info["config"]).items()}
        changed = {key: value for key, value in params.items() if key in logged and logged[key] != value}
        self.client.log_batch(self.run_id, params=[Param(k, v) for k, v in params.items() if k not in logged],
                              tags=[RunTag(k, v) for k, v in {**tags, **changed}.items()])
        config_file = RunDir(self.run_dir).config
        if config_file.is_file():
            self.client.log_artifact(self.run_id, str(config_file))

    def on_step(self, info: dict) -> None:
        self._metrics(info["step"], train_loss=info["train_loss"], lr=info["lr"],
                      tokens_per_s=info["tokens_per_s"], mfu=info["mfu"])

    def on_evaluation(self, info: dict) -> None:
        self._metrics(info["step"], val_loss=info["val_loss"], best_val_loss=info["best_val_loss"])

    def on_end(self, info: dict) -> None:
        if self.run_id is None:
            return
        from mlflow.entities import RunTag

        try:
            if info["status"] != "failed":
                run = RunDir(info["run_dir"])
                for path in (run.model_config, run.model_meta):
                    if path.is_file():
                        self.client.log_artifact(self.run_id, str(path), artifact_path="model")
                for path in (Path(info["metrics_csv"]), run.root / CURVE_FILE):
                    if path.is_file():
                        self.client.log_artifact(self.run_id, str(path))
                self._metrics(info["step"], best_val_loss=info.get("best_val_loss"))
                tags = {"pricegpt.best_step": info.get("best_step"), "pricegpt.steps": info["step"],
                        "pricegpt.stopped_early": info.get("stopped_early")}
                self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
                if run.eval_metrics.is_file():
                    _log_evaluation(self.client, self.run_id, run.eval)
            elif info.get("error"):
                self.client.set_tag(self.run_id, "pricegpt.error", str(info["error"])[:5000])
        finally:
            self.client.set_terminated(self.run_id, status=STATUS[info["status"]])

    def _metrics(self, step: int, **values) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(key, float(value), now, step) for key, value in values.items()
                   if value is not None and math.isfinite(value)]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)


def log_evaluation(run_dir: str | os.PathLike, *, run_id: str | None = None, experiment_name: str | None = None,
                   tracking_uri: str | None = None) -> str:
    """Log an evaluation to MLflow and return the MLflow run's id.

    run_dir: a run directory (its eval/metrics.json, report.html, report.md) or an evaluation folder itself (what
    `evaluate_model(..., out)` writes). The MLflow run is `run_id`, else the newest one of the experiment tagged
    with this run directory (its training's), else a new one. What is logged: the module docstring."""
    client = _client(tracking_uri, "log_evaluation")
    root = Path(run_dir).resolve()
    eval_dir = root if (root / "metrics.json").is_file() and not RunDir(root).eval_metrics.is_file() else RunDir(
        root).eval
    if not (eval_dir / "metrics.json").is_file():
        raise CheckpointError(f"{root} holds no evaluation ({RunDir(root).eval_metrics} is missing): run "
                              f"pricegpt evaluate --run {root} first")
    created = False
    if run_id is None:
        experiment_id = _experiment_id(client, experiment_name)
        run = _find_run(client, experiment_id, root)
        if run is None:
            run = client.create_run(experiment_id, run_name=root.name, tags={RUN_DIR_TAG: str(root)})
            created = True
        run_id = run.info.run_id
    _log_evaluation(client, run_id, eval_dir)
    if created:
        client.set_terminated(run_id, status="FINISHED")
    return run_id


def _log_evaluation(client, run_id: str, eval_dir: Path) -> None:
    from mlflow.entities import Metric, RunTag

    metrics_file = eval_dir / "metrics.json"
    try:
        evaluation = json.loads(metrics_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{metrics_file} cannot be read ({err}); rerun the evaluation") from err
    values, tags = _evaluation_values(evaluation)
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in values.items()],
                     tags=[RunTag(k, str(v)) for k, v in tags.items()])
    for name in ("metrics.json", "report.html", "report.md"):
        if (eval_dir / name).is_file():
            client.log_artifact(run_id, str(eval_dir / name), artifact_path="eval")


def _evaluation_values(evaluation: dict) -> tuple[dict[str, float], dict[str, str]]:
    """The metrics and tags of an eval/metrics.json (ARCHITECTURE.md names its keys); absent ones are skipped."""
    values: dict[str, float] = {}
    tags: dict[str, str] = {}

    def number(key: str, value) -> None:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            values[key] = float(value)

    def interval(key: str, ci) -> None:
        if isinstance(ci, (list, tuple)) and len(ci) == 2:
            number(f"{key}_ci_low", ci[0])
            number(f"{key}_ci_high", ci[1])

    for key in ("split", "n_symbols"):
        if evaluation.get(key) is not None:
            tags[f"eval.{key}"] = evaluation[key]
    number("eval.perplexity", ((evaluation.get("tokens") or {}).get("model") or {}).get("perplexity"))
    forecast = evaluation.get("forecast") or {}
    for key in ("horizon_bars", "n_origins", "num_samples"):
        if forecast.get(key) is not None:
            tags[f"eval.{key}"] = forecast[key]
    for key, value in (forecast.get("model") or {}).items():
        if key in ("crps", "coverage_50", "coverage_90", "directional_accuracy", "mae_median"):
            number(f"eval.{key}", value)
    verdict = forecast.get("verdict") or {}
    for key in ("verdict", "best_baseline"):
        if verdict.get(key) is not None:
            tags[f"eval.{key}"] = verdict[key]
    number("eval.crps_ratio", verdict.get("crps_ratio"))
    interval("eval.crps_ratio", verdict.get("crps_ratio_ci"))
    for baseline, comparison in (forecast.get("comparison") or {}).items():
        if not isinstance(comparison, dict):
            continue
        number(f"eval.{baseline}.crps_ratio", comparison.get("crps_ratio"))
        interval(f"eval.{baseline}.crps_ratio", comparison.get("crps_ratio_ci"))
        number(f"eval.{baseline}.dm_pvalue", comparison.get("dm_pvalue"))
        if comparison.get("verdict") is not None:
            tags[f"eval.{baseline}.verdict"] = comparison["verdict"]
    return values, tags


def _experiment_id(client, name: str | None) -> str:
    name = name or os.environ.get("MLFLOW_EXPERIMENT_NAME")
    if not name:
        return os.environ.get("MLFLOW_EXPERIMENT_ID") or "0"  # MLflow's "Default" experiment
    experiment = client.get_experiment_by_name(name)
    return experiment.experiment_id if experiment is not None else client.create_experiment(name)


def _find_run(client, experiment_id: str, run_dir: Path):
    """The newest MLflow run of the experiment tagged with `run_dir`, or None."""
    if "'" in str(run_dir):  # the filter's string quote: such a directory always starts a new MLflow run
        return None
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{RUN_DIR_TAG}` = '{run_dir}'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None


def _flatten(config: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
