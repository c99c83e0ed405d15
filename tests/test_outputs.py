"""Nothing a user has is overwritten or deleted without being asked: `--force` replaces only folders pricegpt
wrote (its marker file), never the root, home or current directory, nor anything holding the input data; killed
builds leave no temporaries behind for good; outputs get the usual permissions."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from conftest import assert_user_error, run_cli
from pricegpt import fileio
from pricegpt.errors import OutputExistsError


@pytest.fixture(scope="module")
def prices(tmp_path_factory, stocks_frame) -> Path:
    """A small real price file: two symbols, 600 daily bars each."""
    frame = stocks_frame[stocks_frame["symbol"].isin(["AAPL", "IBM"])].groupby("symbol").head(600)
    path = tmp_path_factory.mktemp("data") / "prices.csv"
    frame.to_csv(path, index=False)
    return path


def fit(prices: Path, out: Path, *extra, cwd=None):
    return run_cli("tokenizer", "fit", "--data", prices, "--out", out, "--kind", "quantile", "--codebook-size", "16",
                   *extra, cwd=cwd)


def snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else None for p in sorted(root.rglob("*"))}


def test_force_replaces_only_a_folder_pricegpt_wrote(prices, tmp_path):
    out = tmp_path / "tok"
    assert fit(prices, out).returncode == 0
    assert (out / fileio.OUTPUT_MARKER).is_file()
    assert fit(prices, out, "--force").returncode == 0  # its own output: replaced
    user_folder = tmp_path / "mine"
    user_folder.mkdir()
    (user_folder / "notes.txt").write_text("precious")
    before = snapshot(tmp_path)
    assert_user_error(fit(prices, user_folder, "--force"), "not written by pricegpt")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("target", ["cwd", "input", "input-folder", "home"])
def test_force_never_deletes_the_current_directory_home_or_the_input(prices, tmp_path, target):
    cwd = tmp_path / "work"
    cwd.mkdir()
    fileio.mark_output(cwd)  # even a folder carrying the marker is refused for these
    data = cwd / "prices.csv"
    data.write_bytes(prices.read_bytes())
    out = {"cwd": ".", "input": data, "input-folder": cwd, "home": Path.home()}[target]
    before = snapshot(cwd)
    result = fit(data, out, "--force", cwd=cwd)
    assert_user_error(result)
    assert snapshot(cwd) == before and data.is_file()


def test_check_replaceable_in_the_api(tmp_path):
    fileio.note_input(tmp_path / "inputs" / "prices.csv")
    (tmp_path / "inputs").mkdir()
    fileio.mark_output(tmp_path / "inputs")
    with pytest.raises(OutputExistsError, match="input data"):
        fileio.check_replaceable(tmp_path / "inputs")
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "inputs")
    with pytest.raises(OutputExistsError):
        fileio.check_replaceable(link)
    with pytest.raises(OutputExistsError):
        fileio.check_replaceable("/")


def test_a_killed_build_leaves_no_temporaries_after_the_next_run(prices, tmp_path):
    out = tmp_path / "tok"
    stale_dir = tmp_path / ".tok.k1ll3d_x.tmp"  # what a SIGKILL inside atomic_dir leaves
    stale_dir.mkdir()
    (stale_dir / "config.json").write_text("{}")
    stale_file = tmp_path / ".tok.abcdefgh.tmp"
    stale_file.write_text("half")
    unrelated = tmp_path / ".tok.json.abcdefgh.tmp"  # another target's temporary: untouched
    unrelated.write_text("x")
    assert fit(prices, out).returncode == 0
    assert not stale_dir.exists() and not stale_file.exists() and unrelated.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([".tok.json.abcdefgh.tmp", "tok"])


def test_a_kill_between_the_two_renames_keeps_the_previous_output(tmp_path):
    previous = tmp_path / ".eval.old"  # atomic_dir renamed the old output away, then was killed
    previous.mkdir()
    (previous / "metrics.json").write_text("{}")
    fileio.clean_stale_temporaries(tmp_path / "eval")
    assert (tmp_path / "eval" / "metrics.json").read_text() == "{}"


def test_outputs_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        import torch
        from safetensors.torch import save_file

        with fileio.atomic_path(tmp_path / "model.safetensors") as tmp:
            save_file({"w": torch.zeros(2)}, str(tmp))
        with fileio.atomic_dir(tmp_path / "folder") as tmp:
            (tmp / "x").write_text("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "model.safetensors").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "folder").stat().st_mode) == 0o755
