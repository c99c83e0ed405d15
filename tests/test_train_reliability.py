"""Training survives what users and machines do to it: a kill at any instant of a save, a kill before the first
checkpoint, Ctrl-C and SIGTERM, a full disk, damaged run files, a diverging loss, a --max-steps below the run's
step, early stopping. Each case runs the real command (in-process `pricegpt.cli.main`; a subprocess where a real
SIGKILL is the point) and checks the exit code, the one `error:` line, no traceback and that nothing the user had
was changed."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import assert_user_error
from pricegpt.config import resolve_config
from pricegpt.model.gpt import GPT
from pricegpt.train import Trainer, best_model_dir, dist, latest_checkpoint, read_token_source, train_run
from pricegpt.train import checkpoint as ckpt
from pricegpt.train.data import TokenData
from pricegpt.train.loop import _known_peak_flops, peak_flops
from train_helpers import (
    TINY,
    assert_same_weights,
    cli_main,
    markov_tokens,
    read_weights,
    torch_threads_kept,
    tree,
    write_token_file,
)

V = 16
SETTINGS = [*TINY, f"model.vocab_size={V}", "train.save_every=5", "train.eval_every=5", "train.seed=3"]


def _flags(settings) -> list[str]:
    return [arg for setting in settings for arg in ("--set", setting)]


def _step(run: Path) -> int | None:
    found = latest_checkpoint(run)
    return None if found is None else ckpt.load_checkpoint(found)[1]["step"]


def _error_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    return write_token_file(tmp_path_factory.mktemp("tokens") / "tokens.txt", markov_tokens(4000, V, seed=4))


@pytest.fixture(scope="module")
def trained(tokens, tmp_path_factory):
    """A run trained to its checkpoint at step 5 (max_steps 5)."""
    run = tmp_path_factory.mktemp("trained") / "run"
    with torch_threads_kept():
        train_run(tokens=tokens, out=run, preset="tiny", overrides=SETTINGS, max_steps=5)
    return run


@pytest.fixture
def run_copy(trained, tmp_path):
    return Path(shutil.copytree(trained, tmp_path / "run"))


def _train(capsys, tokens, run, *extra):
    return cli_main(capsys, "train", "--tokens", tokens, "--out", run, "--preset", "tiny", *_flags(SETTINGS), *extra)


def _resume(capsys, tokens, run, *extra):
    return cli_main(capsys, "train", "--tokens", tokens, "--out", run, "--resume", *extra)


# ---------------------------------------------------------------------------------- a kill at any instant of a save
def _kills_during(fn, run: Path, where: Path) -> list[Path]:
    """Run fn(); before and after every rename and deletion it makes, copy `run` as a SIGKILL at that instant
    would leave it (no cleanup runs after a kill)."""
    snapshots: list[Path] = []
    busy = []

    def snapshot():
        if not busy and run.exists():
            busy.append(1)
            snapshots.append(Path(shutil.copytree(run, where / f"kill-{len(snapshots):03d}", symlinks=True)))
            busy.pop()

    def around(original):
        def wrapped(*args, **kwargs):
            snapshot()
            result = original(*args, **kwargs)
            snapshot()
            return result
        return wrapped

    with pytest.MonkeyPatch.context() as patch:
        for name in ("replace", "rename", "unlink", "rmdir"):
            patch.setattr(os, name, around(getattr(os, name)))
        fn()
    return snapshots


def _trainer_state(step: int) -> dict:
    return {"step": step, "optimizers": [], "best_val_loss": 1.0, "best_step": 0, "evals_since_best": 0,
            "global_batch_size": 8, "rng": ckpt.rng_state(), "stopped_early": False}


@pytest.mark.parametrize("before", ["nothing", "step 10", "the same step", "the earlier layout"])
def test_every_instant_of_a_checkpoint_save_leaves_a_loadable_checkpoint(tmp_path, before):
    run, model = tmp_path / "run", torch.nn.Linear(3, 2)
    if before != "nothing":
        step = 20 if before == "the same step" else 10
        ckpt.save_checkpoint(run, model, _trainer_state(step), {"step": step})
    if before == "the earlier layout":  # checkpoints/last, replaced by two renames
        first = latest_checkpoint(run)
        first.rename(run / "checkpoints" / "last")
        (run / "checkpoints" / "LATEST").unlink()
    expected = {20} if before in ("nothing", "the same step") else {10, 20}
    snapshots = _kills_during(lambda: ckpt.save_checkpoint(run, model, _trainer_state(20), {"step": 20}), run,
                              tmp_path)
    assert len(snapshots) >= 6
    for snapshot in snapshots:
        found = latest_checkpoint(snapshot)
        if found is None:
            assert before == "nothing", snapshot
            continue
        weights, state, meta = ckpt.load_checkpoint(found)
        assert state["step"] in expected and meta["step"] == state["step"], snapshot
        assert_same_weights(weights, {k: v.detach() for k, v in model.state_dict().items()})
    assert _step(run) == 20
    left = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert left == ["LATEST", (run / "checkpoints" / "LATEST").read_text().strip()], left


def test_every_instant_of_a_best_model_save_leaves_a_loadable_model(tmp_path):
    config = resolve_config("tiny", None, SETTINGS)
    run = tmp_path / "run"
    ckpt.save_best_model(run, GPT(config.model), {"step": 0}, None)
    better = GPT(config.model)
    with torch.no_grad():
        next(better.parameters()).add_(1.0)
    snapshots = _kills_during(lambda: ckpt.save_best_model(run, better, {"step": 10}, None), run, tmp_path)
    assert snapshots
    for snapshot in snapshots:
        found = best_model_dir(snapshot)
        assert found is not None, sorted(p.name for p in snapshot.iterdir())
        GPT.from_pretrained(found)
        assert json.loads((found / "meta.json").read_text())["step"] in (0, 10)
        ckpt.restore_best_model(snapshot)
        assert best_model_dir(snapshot) == snapshot / "model"


@pytest.mark.parametrize("damage", ["missing", "not UTF-8", "a missing folder", "outside the run"])
def test_a_damaged_pointer_resumes_from_the_newest_complete_checkpoint(run_copy, tokens, capsys, damage):
    pointer = run_copy / "checkpoints" / "LATEST"
    (run_copy / "checkpoints" / "step-000009").mkdir()  # half-built, ignored
    (run_copy / "checkpoints" / "step-000009" / "meta.json").write_text("{}")
    if damage == "missing":
        pointer.unlink()
    else:
        pointer.write_bytes({"not UTF-8": b"\xff\xfe\x00", "a missing folder": b"step-000099\n",
                             "outside the run": b"../../../model\n"}[damage])
    assert latest_checkpoint(run_copy) == run_copy / "checkpoints" / "step-000005"
    result = _resume(capsys, tokens, run_copy, "--max-steps", 10)
    assert result.returncode == 0, result.stderr
    assert _step(run_copy) == 10 and sorted(p.name for p in (run_copy / "checkpoints").iterdir()) == [
        "LATEST", "step-000010"]


def test_a_run_of_the_earlier_layout_resumes(run_copy, tokens, capsys):
    checkpoints = run_copy / "checkpoints"
    (checkpoints / "step-000005").rename(checkpoints / "last")
    (checkpoints / "LATEST").unlink()
    for marker in run_copy.rglob(".pricegpt-output"):  # written before output markers existed
        marker.unlink()
    result = _resume(capsys, tokens, run_copy, "--max-steps", 10)
    assert result.returncode == 0, result.stderr
    assert _step(run_copy) == 10 and sorted(p.name for p in checkpoints.iterdir()) == ["LATEST", "step-000010"]


# ---------------------------------------------------------------------------------- kills, signals
def test_a_kill_before_the_first_checkpoint_restarts_training(tokens, tmp_path, capsys):
    run = tmp_path / "run"
    never = ["train.save_every=100000", "train.eval_every=100000"]
    args = [sys.executable, "-m", "pricegpt", "train", "--tokens", tokens, "--out", run, "--preset", "tiny",
            "--max-steps", 100000, *_flags([*SETTINGS, *never])]
    process = subprocess.Popen(list(map(str, args)), env={**os.environ, "PYTHONWARNINGS": "ignore"},
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not ((run / "model" / "meta.json").is_file() and (run / "config.yaml").is_file()):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.01)
    process.kill()
    process.communicate()
    assert latest_checkpoint(run) is None
    pipeline_run = Path(shutil.copytree(run, tmp_path / "pipeline-run"))

    result = _resume(capsys, tokens, run, "--max-steps", 5)  # the user's rerun
    assert result.returncode == 0, result.stderr
    assert "no checkpoint yet" in result.stderr and "restarts from step 0" in result.stderr
    assert _step(run) == 5
    assert json.loads((run / "model" / "meta.json").read_text())["finished"] is True

    with torch_threads_kept():  # the pipeline's rerun
        result = train_run(tokens=tokens, out=pipeline_run, preset="tiny", overrides=SETTINGS, max_steps=5,
                           allow_existing=True)
    assert result["steps"] == 5 and _step(pipeline_run) == 5


def test_a_finished_model_without_a_checkpoint_is_never_trained_over(run_copy, tokens, capsys):
    shutil.rmtree(run_copy / "checkpoints")
    before = tree(run_copy)
    assert_user_error(_resume(capsys, tokens, run_copy, "--max-steps", 10), "finished model", "another --out")
    with pytest.raises(Exception, match="finished model"):
        train_run(tokens=tokens, out=run_copy, preset="tiny", overrides=SETTINGS, max_steps=10, allow_existing=True)
    assert tree(run_copy) == before


@pytest.mark.parametrize("signum,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_saves_a_checkpoint_and_the_run_is_not_reported_trained(tokens, tmp_path, capsys, monkeypatch,
                                                                          signum, code):
    run = tmp_path / "run"
    step = Trainer.train_step

    def step_then_signal(self):
        step(self)
        if self.step == 7:
            os.kill(os.getpid(), signum)

    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "train_step", step_then_signal)
        result = _train(capsys, tokens, run, "--max-steps", 12)
    assert result.returncode == code, result.stderr
    assert _error_lines(result) == (["error: interrupted"] if signum == signal.SIGINT else [])
    assert f"stopped by {signal.Signals(signum).name} at step 7" in result.stderr and "--resume" in result.stderr
    assert "Traceback" not in result.stderr and "best model" not in result.stdout
    assert _step(run) == 7
    assert json.loads((run / "model" / "meta.json").read_text())["finished"] is False

    result = _resume(capsys, tokens, run)
    assert result.returncode == 0, result.stderr
    assert _step(run) == 12 and json.loads((run / "model" / "meta.json").read_text())["finished"] is True


# ---------------------------------------------------------------------------------- a full disk
def _safetensors_full_disk(*args, **kwargs):
    from safetensors import SafetensorError

    # what safetensors' save_file raises when the disk is full
    raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("failing,where", [("the best model's weights", "model"),
                                           ("the trainer state", "checkpoints")])
def test_a_full_disk_while_saving_keeps_the_previous_checkpoint(run_copy, tokens, capsys, failing, where):
    import safetensors.torch

    model_before = tree(run_copy / "model")
    with pytest.MonkeyPatch.context() as patch:
        if where == "model":
            patch.setattr(safetensors.torch, "save_file", _safetensors_full_disk)
        else:
            patch.setattr(torch, "save", _no_space)
        result = _resume(capsys, tokens, run_copy, "--max-steps", 10)
    assert_user_error(result, f"no space left on the device while writing {run_copy / where}",
                      "free some disk space")
    assert _step(run_copy) == 5
    if where == "model":  # (a better model saved before a failing checkpoint is fine: the resume redoes it)
        assert tree(run_copy / "model") == model_before
    assert sorted(p.name for p in (run_copy / "checkpoints").iterdir()) == ["LATEST", "step-000005"]

    result = _resume(capsys, tokens, run_copy, "--max-steps", 10)  # space freed
    assert result.returncode == 0, result.stderr
    assert _step(run_copy) == 10


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs (needs root and permission to mount; skipped otherwise)."""
    where = tmp_path / "disk"
    where.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small disk needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(where)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode(errors='replace').strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def test_a_really_full_disk_is_one_error_and_the_run_continues_after_space_is_freed(trained, tokens, small_disk,
                                                                                    tmp_path, capsys):
    run = Path(shutil.copytree(trained, small_disk / "run"))
    filler = small_disk / "filler"
    with open(filler, "wb", buffering=0) as fh:
        with pytest.raises(OSError) as full:
            while True:
                fh.write(b"\0" * 65536)
    assert full.value.errno == errno.ENOSPC
    os.truncate(filler, filler.stat().st_size - 24 * 1024)  # room for small files, not for a checkpoint

    result = _resume(capsys, tokens, run, "--max-steps", 10)
    assert_user_error(result, "no space left on the device while writing", str(run))
    assert _step(run) == 5

    filler.unlink()
    result = _resume(capsys, tokens, run, "--max-steps", 10)
    assert result.returncode == 0, result.stderr
    undisturbed = Path(shutil.copytree(trained, tmp_path / "undisturbed"))
    assert _resume(capsys, tokens, undisturbed, "--max-steps", 10).returncode == 0
    assert_same_weights(read_weights(latest_checkpoint(run) / "model.safetensors"),
                        read_weights(latest_checkpoint(undisturbed) / "model.safetensors"))


# ---------------------------------------------------------------------------------- damaged files
def _edit_state(edit):
    def damage(run: Path):
        path = latest_checkpoint(run) / "trainer_state.pt"
        state = torch.load(path, weights_only=True)
        edit(state)
        torch.save(state, path)
    return damage


def _write(relative: str, data: bytes):
    def damage(run: Path):
        path = latest_checkpoint(run) / relative if relative in ckpt.CHECKPOINT_FILES else run / relative
        path.write_bytes(data)
    return damage


def _truncate_weights(run: Path):
    path = latest_checkpoint(run) / "model.safetensors"
    path.write_bytes(path.read_bytes()[:300])


DAMAGE = {
    "rng of the wrong size": (_edit_state(lambda s: s["rng"].update(torch=torch.zeros(7, dtype=torch.uint8))),
                              ["trainer_state.pt", "torch RNG state has the wrong size", "checkpoints"]),
    "numpy rng damaged": (_edit_state(lambda s: s["rng"]["numpy"].update(keys=torch.zeros(3, dtype=torch.int64))),
                          ["trainer_state.pt", "numpy RNG state"]),
    "negative step": (_edit_state(lambda s: s.update(step=-3)), ["trainer_state.pt", "step is -3", "--resume"]),
    "non-integer step": (_edit_state(lambda s: s.update(step=2.5)), ["trainer_state.pt", "step is 2.5"]),
    "missing keys": (_edit_state(lambda s: s.pop("optimizers")), ["trainer_state.pt", "lacks optimizers"]),
    "a NaN best loss": (_edit_state(lambda s: s.update(best_val_loss=float("nan"))), ["best_val_loss"]),
    "not a torch file": (_write("trainer_state.pt", b"this is not a torch file"),
                         ["trainer_state.pt", "not a trainer state", "restart training"]),
    "an empty state": (_write("trainer_state.pt", b""), ["trainer_state.pt", "not a trainer state"]),
    "truncated weights": (_truncate_weights, ["model.safetensors", "damaged"]),
    "meta.json not JSON": (_write("meta.json", b"{\"step\": "), ["meta.json", "cannot be read"]),
    "metrics.csv not UTF-8": (_write("metrics.csv", b"step,lr,train_loss\n0,\xff\xfe,1\n"),
                              ["metrics.csv", "not UTF-8", "move it away"]),
}


@pytest.mark.parametrize("case", DAMAGE)
def test_damaged_run_files_are_named_and_nothing_is_changed(run_copy, tokens, capsys, case):
    damage, fragments = DAMAGE[case]
    damage(run_copy)
    before = tree(run_copy)
    assert_user_error(_resume(capsys, tokens, run_copy, "--max-steps", 10), *fragments)
    assert tree(run_copy) == before


def test_a_diverging_loss_stops_before_nan_weights_are_saved(tokens, tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    step = Trainer.train_step

    def poisoned(self):
        step(self)
        if self.step == 7:
            with torch.no_grad():
                next(self.model.parameters()).fill_(float("nan"))

    monkeypatch.setattr(Trainer, "train_step", poisoned)
    result = _train(capsys, tokens, run, "--max-steps", 20)
    assert_user_error(result, "diverged at step 10", "last checkpoint (step 5) is kept", "--set train.lr=")
    assert _step(run) == 5
    for weights in (read_weights(latest_checkpoint(run) / "model.safetensors"),
                    read_weights(run / "model" / "model.safetensors")):
        assert all(torch.isfinite(w).all() for w in weights.values())


# ---------------------------------------------------------------------------------- --max-steps, early stopping
@pytest.mark.parametrize("flags", [["--max-steps", "3"], ["--set", "train.max_steps=3"]])
def test_resume_below_the_runs_step_is_refused_before_anything_is_written(run_copy, tokens, capsys, flags):
    before = tree(run_copy)
    assert_user_error(_resume(capsys, tokens, run_copy, *flags), "already at step 5", "larger --max-steps")
    assert tree(run_copy) == before


def test_an_early_stopped_run_stays_finished_on_resume(tmp_path, capsys):
    # train split: a fixed cycle; val split: random tokens. Learning the cycle only hurts val.
    cycle = np.tile(np.arange(V), 200)
    noise = np.random.default_rng(0).integers(0, V, len(cycle) // 4)
    tokens = write_token_file(tmp_path / "tokens.txt", np.concatenate([cycle, noise]))
    run = tmp_path / "run"
    patience = [*TINY, f"model.vocab_size={V}", "train.eval_every=10", "train.early_stopping_patience=2"]
    result = cli_main(capsys, "train", "--tokens", tokens, "--out", run, "--preset", "tiny", "--max-steps", 200,
                      *_flags(patience))
    assert result.returncode == 0, result.stderr
    state = ckpt.load_checkpoint(latest_checkpoint(run))[1]
    assert state["step"] == 20 and state["stopped_early"] is True

    before = tree(run)
    result = _resume(capsys, tokens, run, "--max-steps", 400)
    assert result.returncode == 0, result.stderr
    assert "already finished" in result.stderr and "stopped early at step 20" in result.stderr
    assert tree(run) == before

    result = _resume(capsys, tokens, run, "--max-steps", 25, "--set", "train.early_stopping_patience=0")
    assert result.returncode == 0, result.stderr
    assert _step(run) == 25


# ---------------------------------------------------------------------------------- MFU, host syncs
def test_mfu_uses_the_peak_of_the_dtype_and_of_every_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    cuda = torch.device("cuda", 0)
    assert _known_peak_flops(cuda, "bf16") == 989e12
    precision = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("highest")
        assert _known_peak_flops(cuda, "fp32") == 67e12
        torch.set_float32_matmul_precision("high")
        assert _known_peak_flops(cuda, "fp32") == 494e12  # TF32 tensor cores
    finally:
        torch.set_float32_matmul_precision(precision)
    train = resolve_config("tiny", None, ["train.dtype=bf16"]).train
    assert peak_flops(train, cuda, 4) == 4 * 989e12
    assert peak_flops(resolve_config("tiny", None, ["train.peak_flops=1e12"]).train, cuda, 2) == 2e12
    assert peak_flops(train, torch.device("cpu"), 8) == 0.0


def test_under_ddp_the_stop_flag_is_read_only_at_steps_that_sync_anyway(tokens, tmp_path, monkeypatch):
    config = resolve_config("tiny", None, [*SETTINGS, "train.save_every=10", "train.eval_every=10"], 20)
    series, source, _ = read_token_source(tokens)
    data = TokenData.from_series(series, config.model.sequence_len, V, source=source)
    with torch_threads_kept():
        trainer = Trainer(config, data, tmp_path / "run")
        trainer.dist = dist.DistInfo(rank=0, world_size=2)  # rank 0 of two, with the reductions stubbed out
        read_at = []
        monkeypatch.setattr(dist, "all_reduce_sum", lambda tensor, info: tensor)
        monkeypatch.setattr(dist, "max_over_processes", lambda value, info, device: read_at.append(trainer.step)
                            or value)
        trainer.train()
    assert read_at == [5, 10, 15, 20]  # log_every=5; not every step


# ---------------------------------------------------------------------------------- token files
def test_a_token_file_with_a_utf8_bom_trains(tmp_path, capsys):
    path = tmp_path / "tokens.txt"
    path.write_bytes(b"\xef\xbb\xbf" + " ".join(map(str, markov_tokens(2000, V, seed=6))).encode())
    result = cli_main(capsys, "train", "--tokens", path, "--out", tmp_path / "run", "--preset", "tiny",
                      "--max-steps", 2, *_flags(SETTINGS))
    assert result.returncode == 0, result.stderr
