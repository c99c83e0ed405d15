"""The evaluation report in a real browser: headless Chromium (the OS package, no selenium/playwright) loads
report.html and a small script added to a test copy of the page writes what the browser rendered into the DOM
(every image's decoded size, the verdict table, any image that is not one of ours), which `--dump-dom` prints.

The run directory is synthetic but complete: metrics.json with every section's keys (paired comparisons, MCS,
reliability, regimes, VaR tests, P(up), horizons), origins.csv, fan charts, and a backtest, built in a fraction of a
second, with a hostile symbol `<img src=x onerror=alert(1)>` that must stay text. The same run checks that a report
without the new keys (an older metrics.json) still renders. Install Chromium with `apt-get install -y chromium`.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from html import unescape

import numpy as np
import pandas as pd
import pytest

HOSTILE = "<img src=x onerror=alert(1)>"
SYMBOLS = [HOSTILE, "MSFT"]
BASELINES = ["random_walk", "histvol20", "ewma", "bootstrap", "garch", "seasonal", "range_ewma", "fhs"]
LEVELS = [round(0.05 * k, 2) for k in range(1, 20)]

CHROMIUM = next((path for path in map(shutil.which, ("chromium", "chromium-browser", "google-chrome",
                                                     "google-chrome-stable")) if path), None)
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium binary on PATH (chromium, "
                                    "chromium-browser, google-chrome); install it with `apt-get install -y chromium`")


def _scores(crps: float, rng) -> dict:
    return {"crps": crps, "coverage_50": 0.5 + rng.normal(0, 0.03), "coverage_90": 0.9 + rng.normal(0, 0.02),
            "width_50": 0.03, "width_90": 0.08, "directional_accuracy": 0.52, "directional_accuracy_ci95": [0.45, 0.6],
            "mae_median": 0.02, "pit_histogram": [int(v) for v in rng.multinomial(60, [0.1] * 10)]}


def synthetic_metrics(with_new_keys: bool = True) -> dict:
    rng = np.random.default_rng(0)
    fc = {"horizon_bars": 4, "num_samples": 64, "n_origins": 60, "temperature": 1.1,
          "origins_rule": "every 4 bars of the split (non-overlapping targets)",
          "model": _scores(0.0170, rng), "notes": {"seasonal": "no intraday bars: the seasonal baseline needs them"},
          "coverage_by_horizon": {"50": [0.5, 0.48, 0.52, 0.5], "90": [0.9, 0.88, 0.91, 0.9]},
          "per_symbol": {s: {"n_origins": 30, "model_coverage_50": 0.5, "model_coverage_90": 0.9, "crps_model": 0.017,
                             **{f"crps_{b}": 0.018 for b in BASELINES if b != "seasonal"}} for s in SYMBOLS},
          "risk": {s: {"p_up": 0.55, "var_95": 0.03, "es_95": 0.04, "var_99": 0.05, "es_99": 0.06,
                       "p_touch_up": {"0.05": 0.2}, "p_touch_down": {"0.05": 0.1}} for s in SYMBOLS}}
    for k, name in enumerate(BASELINES):
        fc[name] = None if name == "seasonal" else _scores(0.0172 + 0.0002 * k, rng)
    if with_new_keys:
        fc["comparison"] = {name: None if fc[name] is None else
                            {"crps_diff": -0.0002, "crps_diff_ci": [-0.0004, -0.00001], "crps_ratio": 0.988,
                             "crps_ratio_ci": [0.97, 0.999], "dm_stat": -2.1, "dm_pvalue": 0.036, "verdict": "better"}
                            for name in BASELINES}
        fc["comparison"]["garch"].update(crps_diff_ci=[-0.0005, 0.0001], verdict="no significant difference")
        fc["verdict"] = {"best_baseline": "random_walk", "verdict": "better", "crps_ratio": 0.988,
                         "crps_ratio_ci": [0.97, 0.999]}
        fc["mcs"] = {"included": ["model", "random_walk"], "pvalues": {"model": 1.0, "random_walk": 0.4}, "size": 0.1}
        fc["reliability"] = {"levels": LEVELS, "coverage": {n: [min(1.0, lv + rng.normal(0, 0.03)) for lv in LEVELS]
                                                            for n in ["model", *BASELINES] if fc.get(n)}}
        # the shapes of evaluate/calibration.py
        fc["by_regime"] = {"thresholds": [0.01, 0.02], "regimes": {
            regime: {"n": 20, "vol_range": [0.01 * k, 0.01 * (k + 1)], "model_coverage_50": 0.5,
                     "model_coverage_90": 0.85 + 0.02 * k,
                     "crps_ratio": {b: (0.97 + 0.02 * k if fc[b] else None) for b in BASELINES},
                     "crps": {n: 0.017 for n in ["model", *BASELINES]},
                     "coverage_90": {n: (0.9 if fc.get(n) else None) for n in ["model", *BASELINES]}}
            for k, regime in enumerate(["low", "mid", "high"])}}
        fc["var_tests"] = {name: None if name == "fhs" else
                           {level: {"n": 60, "exceedances": round(60 * rate), "rate": rate, "expected_rate": rate,
                                    "kupiec_pvalue": 0.6, "christoffersen_pvalue": 0.4, "conditional_pvalue": 0.5,
                                    "transitions": [50, 3, 3, 4]} for level, rate in (("1%", 0.01), ("5%", 0.05))}
                           for name in ("model", "garch", "fhs")}
        fc["p_up"] = {"n": 60, "up_rate": 0.53, "brier": 0.248, "brier_climatology": 0.25,
                      "brier_train_frequency": 0.2495, "bss_climatology": 0.008,
                      "reliability": {"bin_edges": [k / 10 for k in range(11)],
                                      "mean_predicted": [None, None, None, 0.35, 0.45, 0.55, 0.65, None, None, None],
                                      "observed_frequency": [None, None, None, 0.4, 0.45, 0.5, 0.7, None, None, None],
                                      "counts": [0, 0, 0, 5, 20, 25, 10, 0, 0, 0]}}
        fc["forecasts_by_horizon"] = {"1": {"horizon_bars": 1, "n_origins": 240, "model": _scores(0.009, rng),
                                            "verdict": {"best_baseline": "ewma", "verdict": "worse",
                                                        "crps_ratio": 1.02, "crps_ratio_ci": [1.01, 1.03]}}}
    return {"split": "test", "train_end": "2010-01-01T00:00:00Z", "val_end": "2011-06-01T00:00:00Z",
            "data": f"/data/{HOSTILE}.csv", "n_symbols": 2, "n_tokens": 500, "forecast": fc,
            "tokens": {"model": {"loss": 2.0, "perplexity": 7.4, "top1": 0.2, "top5": 0.6},
                       "unigram": {"loss": 2.2, "perplexity": 9.0, "top1": 0.15, "top5": 0.5},
                       "bigram": {"loss": 2.1, "perplexity": 8.2, "top1": 0.17, "top5": 0.55},
                       "smoothing": "add-one", "usage": {"counts": [5, 0, 12, 30], "codes_used": 3,
                                                         "usage_perplexity": 2.7},
                       "size": {"params": {"total": 12345}, "bytes_fp32": 49380, "bytes_bf16": 24690}}}


def synthetic_backtest() -> dict:
    block = {"total_return": 0.05, "cagr": 0.02, "sharpe": 0.4, "sortino": 0.6, "max_drawdown": -0.1,
             "turnover": 0.1, "hit_rate": 0.52}
    return {"cost_bps": 1.0, "strategy": block, "buy_and_hold": {**block, "sharpe": 0.3}, "momentum": block,
            "sharpe_ci": {"low": -0.5, "high": 1.3, "level": 0.95, "method": "stationary bootstrap"},
            "portfolio": {"n_symbols": 2}, "settings": {"strategy": "sign", "n_decisions": 60,
                                                        "first_decision": "2011-06-02", "last_decision": "2013-02-01"},
            "risk": {s: {"var_breach_rate": {"var_95": 0.05, "var_99": 0.02}} for s in SYMBOLS}}


def synthetic_run(root, with_new_keys: bool = True):
    """RUN/eval/{metrics.json, origins.csv, fan_*.png} and RUN/backtest/{metrics.json, equity.png}."""
    from pricegpt import plots
    from pricegpt.evaluate.report import fan_chart_files

    rng = np.random.default_rng(1)
    (root / "eval").mkdir(parents=True)
    (root / "backtest").mkdir()
    metrics = synthetic_metrics(with_new_keys)
    (root / "eval" / "metrics.json").write_text(json.dumps(metrics))
    dates = pd.date_range("2011-06-02", periods=30, freq="7D", tz="UTC")
    rows = [{"symbol": s, "origin": d.isoformat(), "horizon": 4, "realised": rng.normal(0, 0.02),
             "crps_model": abs(rng.normal(0.017, 0.004)),
             **{f"crps_{b}": abs(rng.normal(0.0175, 0.004)) for b in BASELINES if b != "seasonal"}}
            for d in dates for s in SYMBOLS]
    pd.DataFrame(rows).to_csv(root / "eval" / "origins.csv", index=False)
    for symbol, file in fan_chart_files(SYMBOLS):
        plots.fan_chart(root / "eval" / file, np.linspace(-0.02, 0, 12), rng.normal(0, 0.01, (32, 4)).cumsum(1),
                        rng.normal(0, 0.01, 4).cumsum(), title=symbol)
    (root / "backtest" / "metrics.json").write_text(json.dumps(synthetic_backtest()))
    plots.equity_curves(root / "backtest" / "equity.png", dates,
                        {"strategy": rng.normal(0, 0.01, 30), "buy and hold": rng.normal(0, 0.01, 30)})
    return root


# The browser runs this after the page has loaded: what it rendered, written into the DOM for --dump-dom.
PROBE = """<script>
window.addEventListener("load", () => {
  const images = [...document.images];
  const probe = document.createElement("pre");
  probe.id = "render-probe";
  probe.textContent = JSON.stringify({
    images: images.map(img => ({complete: img.complete, width: img.naturalWidth, height: img.naturalHeight,
                                inlined: img.src.startsWith("data:image/png;base64,")})),
    verdictRows: document.querySelectorAll("#verdict-table tr").length,
    verdictFirst: (document.querySelector("#verdict") || {}).firstElementChild?.nextElementSibling?.tagName,
    sections: [...document.querySelectorAll("section")].map(s => s.id),
    hostileText: document.body.innerText.includes("<img src=x onerror=alert(1)>"),
    external: [...document.querySelectorAll("[src],[href]")].map(e => e.getAttribute("src") || e.getAttribute("href"))
      .filter(u => !u.startsWith("data:")),
  });
  document.body.appendChild(probe);
});
</script>"""


def rendered(html_path, tmp_path) -> dict:
    """Load a copy of the page (with PROBE) in headless Chromium and return what the probe saw."""
    page = tmp_path / "probe.html"
    page.write_text(html_path.read_text().replace("</body>", PROBE + "</body>"))
    result = subprocess.run([CHROMIUM, "--headless=new", "--disable-gpu", "--no-sandbox", "--no-first-run",
                             f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000", "--dump-dom",
                             page.as_uri()], capture_output=True, text=True, timeout=120)
    match = re.search(r'<pre id="render-probe">(.*?)</pre>', result.stdout, re.S)
    assert match, (result.returncode, result.stdout[-2000:], result.stderr[-2000:])
    return json.loads(unescape(match.group(1)))


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """A complete synthetic run, its report rendered by refresh_report: (run, report.html, seconds taken)."""
    from pricegpt.evaluate.report import refresh_report

    run = synthetic_run(tmp_path_factory.mktemp("report") / "run")
    start = time.perf_counter()
    page = refresh_report(run)
    return run, page, time.perf_counter() - start


def test_the_report_reads_top_down_verdicts_first_and_escapes_every_user_string(report):
    run, page, seconds = report
    assert seconds < 15.0  # ~1 s on an idle 2-core machine; it is rendered again after every pipeline
    text = page.read_text()
    assert text.count("<img ") == text.count('src="data:image/png;base64,') == 11  # no training curve here
    titles = re.findall(r"<h2>(.*?)</h2>", text)
    assert [t.split(" (")[0] for t in titles[:6]] == ["Verdict", "Scores", "Calibration", "CRPS over time",
                                                     "Fan charts", "Backtest"]
    assert text.index('id="verdict-table"') < text.index('id="scores-table"')
    assert HOSTILE not in text and "&lt;img src=x onerror=alert(1)&gt;" in text
    assert "<script" not in text.lower() and "http" not in text  # nothing runs, nothing is fetched
    for fragment in ("Verdict: the model is BETTER than the best baseline, random_walk (CRPS ratio 0.988 [0.970, "
                     "0.999]", "no significant difference", "random_walk (best)", "the model is in it",
                     "By horizon", "high: model CRPS / this", "model / 5%", "Not available: fhs", "Kupiec",
                     "christoffersen_pvalue", "brier_climatology", "Rolling mean of the per-date CRPS",
                     "Sharpe 0.40, 95% interval [-0.50, 1.30]", "buy and hold", "momentum"):
        assert fragment in text, fragment
    markdown = (run / "eval" / "report.md").read_text()
    assert HOSTILE not in markdown and "&lt;img src=x onerror=alert(1)&gt;" in markdown
    assert "](../backtest/equity.png)" in markdown and markdown.index("## Verdict") < markdown.index("## Scores")
    for png in ("crps", "pit", "reliability", "coverage_horizon", "regimes", "p_up", "crps_time", "code_usage"):
        assert (run / "eval" / f"{png}.png").is_file(), png


@needs_chromium
def test_report_renders_in_a_browser_with_the_verdict_table_and_every_image(report, tmp_path):
    run, page, _ = report
    seen = rendered(page, tmp_path)
    assert seen["sections"][:6] == ["verdict", "scores", "calibration", "crps-over-time", "fan-charts", "backtest"]
    assert seen["verdictFirst"] == "P" and seen["verdictRows"] == 1 + len(BASELINES)  # header + one per baseline
    assert len(seen["images"]) == 11  # the hostile symbol made no image
    assert all(img["complete"] and img["inlined"] and img["width"] > 0 and img["height"] > 0
               for img in seen["images"]), seen["images"]
    assert seen["hostileText"] and seen["external"] == []


def _older_run(root):
    """A run evaluated before the paired comparison and calibration keys existed, without a backtest or
    origins.csv."""
    run = synthetic_run(root, with_new_keys=False)
    for name in ("metrics.json", "equity.png"):
        (run / "backtest" / name).unlink()
    (run / "eval" / "origins.csv").unlink()
    return run


def test_a_report_without_the_new_keys_or_a_backtest_says_what_is_missing(tmp_path):
    from pricegpt.evaluate.report import refresh_report

    text = refresh_report(_older_run(tmp_path / "run")).read_text()
    for fragment in ("Verdict: not available", "Reliability diagram: not available", "No backtest yet",
                     "CRPS over time", "Not available (no per-origin table"):
        assert fragment in text, fragment
    assert 'id="verdict-table"' not in text and text.count("<img ") >= 4


@needs_chromium
def test_a_report_without_the_new_keys_renders_in_a_browser(tmp_path):
    from pricegpt.evaluate.report import refresh_report

    seen = rendered(refresh_report(_older_run(tmp_path / "run")), tmp_path)
    assert seen["images"] and all(img["width"] > 0 for img in seen["images"])
    assert seen["verdictRows"] == 0 and seen["hostileText"]


def test_refresh_report_without_an_evaluation_writes_nothing(tmp_path):
    from pricegpt.evaluate.report import refresh_report

    assert refresh_report(tmp_path) is None
    assert list(tmp_path.iterdir()) == []
