"""Reliability: every user mistake is one `error: ...` line and exit 2 with nothing half-written; untrusted files
cannot run code or make pricegpt write outside the folders the user named; kills and full disks lose no work.

Most cases run `pricegpt.cli.main` in-process (the same code path as the console script, without paying for a
torch import per case); a few representative ones run the real command in a subprocess.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import REPO, assert_user_error, run_cli
from pricegpt.errors import PriceGPTError
from pricegpt.train import latest_checkpoint
from train_helpers import (
    TINY,
    assert_same_weights,
    markov_tokens,
    read_weights,
    torch_threads_kept,
    tree,
    write_token_file,
)
from train_helpers import cli_main as cli

EVIL = "../../evil"  # a symbol that is also a relative path out of any folder
HTML_ABS = "/tmp/<img src=x onerror=alert(1)>"  # a symbol that is an absolute path and HTML
RUN_SETTINGS = ["model.sequence_len=16", "model.n_layer=1", "model.n_embd=32", "model.n_head=2", "model.n_kv_head=1",
                "train.batch_size=8", "train.eval_batches=2", "train.eval_every=5", "train.save_every=5",
                "train.warmup_steps=2", "train.num_threads=1"]


def popen_cli(*args) -> subprocess.Popen:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "pricegpt", *map(str, args)], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(process: subprocess.Popen, timeout: float = 120) -> subprocess.CompletedProcess:
    out, err = process.communicate(timeout=timeout)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def wait_for(condition, process: subprocess.Popen | None = None, timeout: float = 60, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process is not None and process.poll() is not None:
            pytest.fail(f"the command ended before {what}: {process.communicate()}")
        if time.monotonic() > deadline:
            if process is not None:
                process.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.005)


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def prices_csv(tmp_path_factory, stocks_frame) -> Path:
    """Two real symbols of sample:stocks-daily since 2010, renamed to hostile names."""
    frame = stocks_frame[stocks_frame["symbol"].isin(["IBM", "MSFT"])
                         & (stocks_frame["timestamp"] >= pd.Timestamp("2010-01-01", tz="UTC"))].copy()
    frame["symbol"] = frame["symbol"].replace({"IBM": EVIL, "MSFT": HTML_ABS})
    path = tmp_path_factory.mktemp("prices") / "prices.csv"
    frame.to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, prices_csv) -> Path:
    """A real run, built once: quantile tokenizer (K=16), token store, 10 steps of a one-layer GPT."""
    from pricegpt.data import load_prices, time_splits
    from pricegpt.tokenizer import fit_to_dir, load_tokenizer, write_token_store
    from pricegpt.train import train_run

    frame = load_prices(prices_csv)
    splits = time_splits(frame)
    run = tmp_path_factory.mktemp("tiny") / "run"
    fit_to_dir(frame, run / "tokenizer", kind="quantile", codebook_size=16, train_end=splits.train_end,
               val_end=splits.val_end)
    write_token_store(load_tokenizer(run / "tokenizer"), frame, run / "tokens", splits)
    with torch_threads_kept():
        train_run(tokens=run / "tokens", out=run, preset="tiny", overrides=RUN_SETTINGS, max_steps=10,
                  allow_existing=True)
    assert (run / "model" / "model.safetensors").is_file() and latest_checkpoint(run) is not None
    return run


@pytest.fixture
def run_copy(tiny_run, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(tiny_run, copy)
    return copy


# --------------------------------------------------------------------------------------- 1. price files
def test_tolerable_files_are_read_with_the_right_bar_counts(tmp_path):
    folder = tmp_path / "prices"
    folder.mkdir()
    files = {  # symbol (file stem) -> (text, bars, dropped)
        "unsorted": ("date,close\n2020-01-03,3\n2020-01-01,1\n2020-01-02,2\n", 3, 0),
        "duplicate": ("date,close\n2020-01-01,1\n2020-01-02,2\n2020-01-02,2.5\n2020-01-03,3\n", 3, 1),
        "emptycell": ("date,close\n2020-01-01,1\n2020-01-02,\n2020-01-03,3\n2020-01-06,4\n", 3, 1),
        "semicolon": ("datetime;close\n2020-01-01 10:00;1.0\n2020-01-01 11:00;2\n", 2, 0),
        "millis": ("timestamp,close\n1577836800000,1\n1577923200000,2\n1578009600000,3\n1578096000000,4\n", 4, 0),
    }
    for symbol, (text, _, _) in files.items():
        (folder / f"{symbol}.csv").write_text(text)
    result = run_cli("data", "info", folder)
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines()[2:-1]}
    for symbol, (_, bars, dropped) in files.items():
        assert int(rows[symbol][1]) == bars and int(rows[symbol][-1]) == dropped, rows[symbol]
    assert rows["millis"][2] == "2020-01-01T00:00:00Z" and rows["millis"][3] == "2020-01-04T00:00:00Z"
    assert "total: 15 bars, 5 symbol(s), 2 dropped row(s)" in result.stdout

    from pricegpt.data import load_prices

    frame = load_prices(folder / "unsorted.csv")
    assert frame["close"].tolist() == [1, 2, 3]  # sorted by time
    assert load_prices(folder / "duplicate.csv")["close"].tolist() == [1, 2.5, 3]  # the last row of a duplicate
    assert load_prices(folder / "semicolon.csv")["timestamp"].iloc[1] == pd.Timestamp("2020-01-01 11:00", tz="UTC")


BAD_PRICES = {  # name -> (content, a fragment of the error)
    "empty.csv": ("", "empty"),
    "header.csv": ("date,close\n", "no rows"),
    "noclose.csv": ("date,open\n2020-01-01,1\n2020-01-02,2\n", "no close column"),
    "negative.csv": ("date,close\n2020-01-01,1\n2020-01-02,-2\n", "line 3"),
    "zero.csv": ("date,close\n2020-01-01,1\n2020-01-02,0\n", "not positive"),
    "infinite.csv": ("date,close\n2020-01-01,-inf\n2020-01-02,2\n", "infinite"),
    "text.csv": ("date,close\n2020-01-01,1\n2020-01-02,n/a?\n", "not a number"),
    "baddate.csv": ("date,close\n2020-01-01,1\n2020-13-45,2\n", "cannot parse '2020-13-45'"),
    "garbage.csv": (bytes(range(256)) * 4, "binary"),
    "single.csv": ("date,close\n2020-01-01,1\n", "1 usable bar"),
    "allempty.csv": ("date,close\n2020-01-01,\n2020-01-02,nan\n", "no row has a price"),
    "ragged.csv": ("date,close\n2020-01-01,1,5,6\n2020-01-02,2\n", "more fields than the header"),
    "ancient.csv": ("date,close\n0001-01-01,1\n0001-01-02,2\n", "outside the supported dates"),
    "future.csv": ("date,close\n2262-04-10,1\n2262-04-12,2\n", "outside the supported dates"),
    "notgzip.csv.gz": (b"date,close\n", "gzip"),
    "notparquet.parquet": (b"PAR1 this is not parquet", "parquet"),
    "empty_folder": (None, "no data files"),
}
NEW_FOR_DATA_INFO = ("allempty.csv", "ragged.csv", "ancient.csv", "future.csv", "notgzip.csv.gz",
                     "notparquet.parquet")


def write_bad(folder: Path, name: str) -> Path:
    content, _ = BAD_PRICES[name]
    path = folder / name
    if content is None:
        path.mkdir()
        (path / "notes.md").write_text("no prices here")
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


@pytest.mark.parametrize("name", sorted(BAD_PRICES))
def test_malformed_price_files_are_one_clean_error_and_leave_no_output(name, tmp_path, capsys, monkeypatch):
    if name == "notparquet.parquet":
        pytest.importorskip("pyarrow")
    bad = write_bad(tmp_path, name)
    fragment = BAD_PRICES[name][1]
    monkeypatch.chdir(tmp_path)
    before = tree(tmp_path)
    if name in NEW_FOR_DATA_INFO:  # test_data.py covers data info for the rest
        assert_user_error(cli(capsys, "data", "info", bad), fragment)
    assert_user_error(cli(capsys, "tokenizer", "fit", "--kind", "quantile", "--data", bad, "--out", "tok"), fragment)
    assert_user_error(cli(capsys, "pipeline", "--data", bad, "--out", "run"), fragment)
    assert tree(tmp_path) == before  # no output directory, no temporary leftovers


def test_bad_data_through_the_real_commands(tmp_path):
    garbage = write_bad(tmp_path, "garbage.csv")
    folder = write_bad(tmp_path, "empty_folder")
    pipeline = popen_cli("pipeline", "--data", garbage, "--out", tmp_path / "run")
    fit = popen_cli("tokenizer", "fit", "--data", folder, "--out", tmp_path / "tok")
    assert_user_error(finish(pipeline), "garbage.csv", "binary")
    assert_user_error(finish(fit), "no data files")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty_folder", "garbage.csv"]


# ---------------------------------------------------------------------------------------- 2. token files
@pytest.fixture(scope="module")
def bad_tokens(tmp_path_factory, tiny_run) -> dict[str, tuple[Path, str]]:
    root = tmp_path_factory.mktemp("bad_tokens")
    cases = {}

    def text(name, content, fragment):
        (root / name).write_text(content)
        cases[name] = (root / name, fragment)

    text("words.txt", "1 2 3\n4 five 6\n", "line 2, token 2")
    text("negative.txt", "1 2 -3 4\n", "negative token id")
    text("too_large.txt", " ".join(str(i % 200) for i in range(3000)), "vocabulary is [0, 128)")
    text("empty.txt", "\n \n", "empty token file")
    no_index = root / "no_index"
    shutil.copytree(tiny_run / "tokens", no_index)
    (no_index / "index.json").unlink()
    cases["no_index"] = (no_index, "no index.json")
    truncated = root / "truncated"
    shutil.copytree(tiny_run / "tokens", truncated)
    array = next((truncated / "arrays").glob("*.npy"))
    array.write_bytes(array.read_bytes()[:-7])
    cases["truncated"] = (truncated, "truncated or corrupted")
    return cases


@pytest.mark.parametrize("case", ["words.txt", "negative.txt", "too_large.txt", "empty.txt", "no_index", "truncated"])
def test_bad_token_files_never_start_a_run(bad_tokens, case, tmp_path, capsys):
    tokens, fragment = bad_tokens[case]
    result = cli(capsys, "train", "--tokens", tokens, "--out", tmp_path / "run", "--preset", "tiny", "--max-steps", 2)
    assert_user_error(result, fragment)
    assert not (tmp_path / "run").exists()
    (tmp_path / "empty_run").mkdir()  # an existing empty --out is allowed, and stays as it was
    result = cli(capsys, "train", "--tokens", tokens, "--out", tmp_path / "empty_run", "--preset", "tiny")
    assert_user_error(result, fragment)
    assert list((tmp_path / "empty_run").iterdir()) == []


def test_truncated_token_store_through_the_real_command(bad_tokens, tmp_path):
    tokens, fragment = bad_tokens["truncated"]
    result = run_cli("train", "--tokens", tokens, "--out", tmp_path / "run", "--preset", "tiny")
    assert_user_error(result, fragment, str(tokens))
    assert not (tmp_path / "run").exists()


# -------------------------------------------------------------------------------------- 3. configs, flags
@pytest.fixture(scope="module")
def token_file(tmp_path_factory) -> Path:
    return write_token_file(tmp_path_factory.mktemp("tok") / "tokens.txt", markov_tokens(3000, 16, seed=3))


CONFIG_FILES = {
    "unknown_section.yaml": ("model:\n  n_layer: 1\noptimiser:\n  lr: 1\n", "unknown config section"),
    "invalid.yaml": ("model: [1, 2\n", "not valid YAML"),
    "wrong_type.yaml": ("train:\n  max_steps: lots\n", "train.max_steps"),
    "python_tag.yaml": ("!!python/object/apply:os.system ['touch PWNED']\n", "not valid YAML"),
    "a_list.yaml": ("- model\n- train\n", "mapping"),
}


@pytest.mark.parametrize("flags,fragment", [
    (["--preset", "nope"], "unknown preset 'nope'"),
    (["--set", "model.n_layer=abc"], "model.n_layer must be a whole number"),
    (["--set", "train.nope=1"], "unknown key 'train.nope'"),
    (["--set", "train.lr=inf"], "train.lr must be a finite number"),
    (["--set", "model.n_head=3"], "divisible"),
    (["--set", "no_dot=1"], "section.key=value"),
    (["--max-steps", "-5"], "--max-steps"),
    (["--max-steps", "0"], "--max-steps"),
    *[(["--config", name], fragment) for name, (_, fragment) in CONFIG_FILES.items()],
])
def test_bad_configs_stop_train_and_pipeline_before_any_output(flags, fragment, token_file, prices_csv, tmp_path,
                                                                capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name, (text, _) in CONFIG_FILES.items():
        (tmp_path / name).write_text(text)
    before = tree(tmp_path)
    assert_user_error(cli(capsys, "train", "--tokens", token_file, "--out", "run", *flags), fragment)
    # the pipeline checks its configuration before it fits a tokenizer into a new run directory
    assert_user_error(cli(capsys, "pipeline", "--data", prices_csv, "--out", "run", *flags), fragment)
    assert tree(tmp_path) == before
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("args,fragment", [
    (["generate", "--seed-tokens", "1 2", "--num-generate", "0"], "--num-generate"),
    (["generate", "--seed-tokens", "1 2", "--temperature", "-1"], "--temperature"),
    (["generate", "--seed-tokens", "1 2", "--top-p", "1.5"], "--top-p"),
    (["generate", "--seed-tokens", "1 two"], "'two' is not a token id"),
    (["generate", "--seed-tokens", "1 999"], "outside the vocabulary"),
    (["forecast", "--data", "sample:stocks-daily", "--symbol", "IBM", "--horizon", "0"], "--horizon"),
    (["forecast", "--data", "sample:stocks-daily", "--symbol", "NOPE", "--horizon", "2"], "NOPE"),
    (["evaluate", "--horizon", "-1"], "--horizon"),
    (["evaluate", "--split", "train"], "--split"),
    (["backtest", "--cost-bps", "-1"], "--cost-bps"),
    (["backtest", "--long-above", "2"], "--long-above"),
])
def test_bad_flags_are_one_clean_error(tiny_run, args, fragment, capsys):
    before = tree(tiny_run)
    assert_user_error(cli(capsys, args[0], "--run", tiny_run, *args[1:]), fragment)
    assert tree(tiny_run) == before


# -------------------------------------------------------------------------------------- 4. run directories
def damage_run(run: Path, damage: str, tmp_path: Path) -> tuple[Path, str]:
    """Damage a copy of the run; return the --run to pass and a fragment of the expected error."""
    model = run / "model"
    if damage == "missing":
        return tmp_path / "no_such_run", "not found"
    if damage == "no model":
        shutil.rmtree(model)
        return run, "no model/ directory"
    if damage == "vocabulary mismatch":
        from pricegpt.data import load_prices
        from pricegpt.tokenizer import fit_to_dir

        fit_to_dir(load_prices("sample:stocks-daily"), tmp_path / "other_tok", kind="quantile", codebook_size=32)
        for target in (run / "tokenizer", model / "tokenizer"):
            shutil.rmtree(target)
            shutil.copytree(tmp_path / "other_tok", target)
        return run, "has 32 codes but the model"
    if damage == "newer format":
        meta = json.loads((model / "meta.json").read_text())
        (model / "meta.json").write_text(json.dumps({**meta, "format_version": 2}))
        return run, "newer pricegpt"
    if damage == "format not a number":
        meta = json.loads((model / "meta.json").read_text())
        (model / "meta.json").write_text(json.dumps({**meta, "format_version": "two"}))
        return run, "format_version 'two'"
    if damage == "truncated weights":
        weights = model / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
        return run, "truncated or corrupted"
    if damage == "huge config":
        config = json.loads((model / "config.json").read_text())
        (model / "config.json").write_text(json.dumps({**config, "n_embd": 2**40, "n_head": 1, "n_kv_head": 1}))
        return run, "config.json"
    if damage == "bad calibration":
        (run / "calibration.json").write_text('{"temperature": "hot"}')
        return run, "temperature 'hot'"
    if damage == "bad run.json":
        (run / "run.json").write_text('{"data": 5, "horizon": "four"}')
        return run, "run.json"
    raise AssertionError(damage)


DAMAGES = ["missing", "no model", "vocabulary mismatch", "newer format", "format not a number", "truncated weights",
           "huge config", "bad calibration", "bad run.json"]


@pytest.mark.parametrize("damage", DAMAGES)
def test_damaged_runs_are_refused_by_generate_evaluate_and_forecast(run_copy, damage, tmp_path, prices_csv, capsys):
    run, fragment = damage_run(run_copy, damage, tmp_path)
    before = tree(run_copy)
    commands = {
        "generate": ["generate", "--run", run, "--seed-tokens", "1 2 3", "--num-generate", 2],
        "evaluate": ["evaluate", "--run", run, "--data", prices_csv, "--num-samples", 4, "--max-origins", 1],
        "forecast": ["forecast", "--run", run, "--data", prices_csv, "--symbol", EVIL, "--horizon", 2,
                     "--num-samples", 4],
    }
    if damage == "bad run.json":
        commands["evaluate"] = commands["evaluate"][:3]  # the data comes from run.json
    for args in commands.values():
        assert_user_error(cli(capsys, *args), fragment)
    assert tree(run_copy) == before  # no eval/, no forecast/, nothing touched


def test_truncated_weights_through_the_real_commands_and_debug_traceback(run_copy, tmp_path, prices_csv):
    run, fragment = damage_run(run_copy, "truncated weights", tmp_path)
    processes = [
        popen_cli("generate", "--run", run, "--seed-tokens", "1 2 3"),
        popen_cli("evaluate", "--run", run, "--data", prices_csv),
        popen_cli("forecast", "--run", run, "--data", prices_csv, "--symbol", EVIL, "--horizon", 2),
        popen_cli("--debug", "generate", "--run", run, "--seed-tokens", "1 2 3"),
    ]
    results = [finish(p) for p in processes]
    for result in results[:3]:
        assert_user_error(result, fragment, "model.safetensors")
    debug = results[3]
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "CheckpointError" in debug.stderr
    assert not (run / "eval").exists() and not (run / "forecast").exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_a_hostile_trainer_state_is_refused_unread(run_copy, tmp_path, capsys):
    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'PWNED'}",))

    (latest_checkpoint(run_copy) / "trainer_state.pt").write_bytes(pickle.dumps({"step": Payload()}))
    result = cli(capsys, "train", "--tokens", run_copy / "tokens", "--out", run_copy, "--resume")
    assert_user_error(result, "trainer_state.pt", "tensors and plain values")
    assert not (tmp_path / "PWNED").exists()


# --------------------------------------------------------------------------------------- 5. untrusted files
def _calls(text: str, name: str) -> list[str]:
    """The argument text of every `name(` call in `text` (parentheses matched; `safetensors.torch.load(` is not
    `torch.load(`)."""
    calls = []
    for match in re.finditer(r"(?<![\w.])" + re.escape(name) + r"\(", text):
        depth, i = 1, match.end()
        while depth and i < len(text):
            depth += {"(": 1, ")": -1}.get(text[i], 0)
            i += 1
        calls.append(text[match.end():i - 1])
    return calls


def test_no_loader_in_the_source_can_run_code_from_a_file():
    sources = [p for p in (REPO / "src").rglob("*.py")] + [p for p in REPO.glob("*.py")] + \
        [p for folder in ("scripts", "benchmarks") for p in (REPO / folder).rglob("*.py")]
    assert len(sources) > 20
    problems = []
    for path in sources:
        text = path.read_text()
        where = path.relative_to(REPO)
        if re.search(r"\bpickle\.loads?\(|\bcPickle\b|\bdill\b|\bjoblib\.load\(", text):
            problems.append(f"{where}: unpickles")
        problems += [f"{where}: torch.load({args}) without weights_only=True" for args in _calls(text, "torch.load")
                     if "weights_only=True" not in args]
        if re.search(r"\byaml\.(load|load_all|full_load|unsafe_load|unsafe_load_all)\(|yaml\.(Unsafe|Full)?Loader\b",
                     text):
            problems.append(f"{where}: YAML read without safe_load")
        problems += [f"{where}: np.load({args})" for args in _calls(text, "np.load") if "allow_pickle=True" in args]
    assert problems == []


def test_hostile_symbols_and_names_stay_inside_the_named_folders(tiny_run, prices_csv, tmp_path, capsys,
                                                                 monkeypatch):
    # a run directory whose name is HTML, in a deep working directory: any escape by '../..' would land in tmp_path
    run = tmp_path / "a" / "b" / "<b>run"
    shutil.copytree(tiny_run, run)
    (run / "run.json").write_text(json.dumps({"data": str(prices_csv), "horizon": 2}))
    meta = json.loads((run / "model" / "meta.json").read_text())
    (run / "model" / "meta.json").write_text(json.dumps({**meta, "symbols": [EVIL, HTML_ABS, "/etc/passwd"]}))
    cwd = tmp_path / "a" / "b" / "c"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    before = set(tree(tmp_path))
    for symbol in (EVIL, HTML_ABS):
        result = cli(capsys, "forecast", "--run", run, "--data", prices_csv, "--symbol", symbol, "--horizon", 2,
                     "--num-samples", 8)
        assert result.returncode == 0, result.stderr
    result = cli(capsys, "evaluate", "--run", run, "--num-samples", 8, "--max-origins", 1, "--horizon", 2)
    assert result.returncode == 0, result.stderr
    result = cli(capsys, "analyze", "--tokens", run / "tokens")
    assert result.returncode == 0, result.stderr
    created = sorted(set(tree(tmp_path)) - before)
    assert created and all(p.startswith("a/b/<b>run/") for p in created), created
    assert not Path(HTML_ABS).exists() and not Path(HTML_ABS + ".png").exists()
    assert len(list((run / "forecast").iterdir())) == 2
    html_report = (run / "eval" / "report.html").read_text()
    assert "<img src=x" not in html_report and "&lt;img src=x onerror=alert(1)&gt;" in html_report
    assert "<b>run" not in html_report and "&lt;b&gt;run" in html_report


def test_a_token_store_cannot_point_outside_itself(tiny_run, tmp_path):
    from pricegpt.errors import DataError
    from pricegpt.tokenizer import TokenStore

    store = tmp_path / "store"
    shutil.copytree(tiny_run / "tokens", store)
    index = json.loads((store / "index.json").read_text())
    symbol = index["symbols"][0]
    outside = tmp_path / "outside.npy"
    np.save(outside, np.zeros(index["per_symbol"][symbol]["n_tokens"], dtype=np.uint8))
    for file in (str(outside), "arrays/../../outside.npy"):
        index["per_symbol"][symbol]["file"] = file
        (store / "index.json").write_text(json.dumps(index))
        with pytest.raises(DataError, match="outside the store"):
            TokenStore.open(store)


# ------------------------------------------------------------------------------------------------ 6. faults
V, KILL_STEPS = 16, 80
KILL_SETTINGS = [*TINY, f"model.vocab_size={V}", "model.dropout=0.1", "train.batch_size=32", "train.save_every=5",
                 "train.eval_every=20", "train.seed=11"]


def _checkpoint_step(run: Path) -> int | None:
    try:
        return json.loads((latest_checkpoint(run) / "meta.json").read_text())["step"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def test_three_random_sigkills_then_resume_give_the_uninterrupted_weights(tmp_path):
    tokens = write_token_file(tmp_path / "tokens.txt", markov_tokens(6000, V, seed=5))
    reference = tmp_path / "reference"
    from pricegpt.train import train_run

    with torch_threads_kept():
        train_run(tokens=tokens, out=reference, preset="tiny", overrides=KILL_SETTINGS, max_steps=KILL_STEPS)
    run = tmp_path / "run"
    base = ["train", "--tokens", tokens, "--out", run, "--max-steps", KILL_STEPS]
    rng = random.Random(20240611)
    kills, resume = [], []
    for _ in range(3):
        process = popen_cli(*base, *resume, *[a for s in KILL_SETTINGS for a in ("--set", s)])
        previous = _checkpoint_step(run) or 0
        wait_for(lambda previous=previous: (_checkpoint_step(run) or 0) > previous, process,
                 what="a new checkpoint")
        time.sleep(rng.uniform(0.0, 0.25))
        process.send_signal(signal.SIGKILL)
        process.wait()
        kills.append(_checkpoint_step(run))
        resume = ["--resume"]
    assert all(0 < step < KILL_STEPS for step in kills), f"the run finished before a kill: {kills}"
    result = run_cli(*base, "--resume")
    assert result.returncode == 0, result.stderr
    assert _checkpoint_step(run) == KILL_STEPS
    for a, b in ((latest_checkpoint(run), latest_checkpoint(reference)), (run / "model", reference / "model")):
        assert_same_weights(read_weights(a / "model.safetensors"), read_weights(b / "model.safetensors"))
    steps = pd.read_csv(run / "metrics.csv")["step"]
    assert steps.is_unique and steps.tolist() == pd.read_csv(reference / "metrics.csv")["step"].tolist()


def test_sigkill_during_tokenizer_fit_leaves_no_output_directory(tmp_path, capsys):
    out = tmp_path / "tok"
    process = popen_cli("tokenizer", "fit", "--data", "sample:stocks-daily", "--out", out, "--kind", "quantile")
    # killed while it writes: the weights are in the temporary directory, the report and plots are not yet
    wait_for(lambda: any(p.name.startswith(".tok.") and (p / "model.safetensors").exists()
                         for p in tmp_path.iterdir()), process, timeout=90, what="the tokenizer's weights")
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not out.exists()  # only a hidden temporary sibling may remain, never a half-written tokenizer
    rerun = cli(capsys, "tokenizer", "fit", "--data", "sample:stocks-daily", "--out", out, "--kind", "quantile")
    assert rerun.returncode == 0, rerun.stderr  # the leftover does not get in the way
    assert {"config.json", "model.safetensors", "report.json"} <= {p.name for p in out.iterdir()}


def test_sigkill_during_evaluate_keeps_the_earlier_results(run_copy, prices_csv, tmp_path, capsys):
    first = cli(capsys, "evaluate", "--run", run_copy, "--data", prices_csv, "--num-samples", 4, "--max-origins", 1,
                "--horizon", 2)
    assert first.returncode == 0, first.stderr
    earlier = tree(run_copy / "eval")
    process = popen_cli("evaluate", "--run", run_copy, "--data", prices_csv, "--num-samples", 8, "--horizon", 3)
    wait_for(lambda: any(p.name.startswith(".eval.") for p in run_copy.iterdir()), process, timeout=90,
             what="the evaluation's temporary directory")
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert tree(run_copy / "eval") == earlier


def _no_space(*args, **kwargs):
    raise OSError(28, "No space left on device")


def test_a_full_disk_is_a_clean_error_and_leaves_nothing_behind(prices_csv, tmp_path, capsys, monkeypatch):
    from pricegpt import fileio

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(os, "fsync", _no_space)
    with pytest.raises(PriceGPTError, match="no space left"):
        fileio.write_json(tmp_path / "x.json", {"a": 1})
    for args in (["tokenizer", "fit", "--kind", "quantile", "--data", prices_csv, "--out", "tok"],
                 ["pipeline", "--data", prices_csv, "--out", "run"]):
        assert_user_error(cli(capsys, *args), "no space left")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_an_unwritable_output_folder_is_a_clean_error(prices_csv, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        result = cli(capsys, "tokenizer", "fit", "--kind", "quantile", "--data", prices_csv, "--out", locked / "tok")
        assert_user_error(result, "permission denied", "tok")
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o700)


def test_an_output_path_under_a_file_is_a_clean_error(token_file, prices_csv, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert_user_error(cli(capsys, "train", "--tokens", token_file, "--out", blocker / "run", "--preset", "tiny"),
                      "a file is in the way")
    assert_user_error(cli(capsys, "pipeline", "--data", prices_csv, "--out", blocker / "run"), "a file is in the way")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]
