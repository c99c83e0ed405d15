"""RUN/eval/report.md and a self-contained RUN/eval/report.html (PNGs inlined as base64 data URIs), plus the PNGs.

Both files are rendered from one list of sections, so they always say the same thing. All text is escaped when
rendered, so a string that comes from the user (symbol, path, data name, run name) can never become markup:
html.escape in HTML; in Markdown (`markdown_text`) HTML special characters become entities (viewers render raw
HTML), the characters that make links, images, emphasis, code and tables are backslash-escaped, URLs cannot
become autolinks, and newlines are spaces.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .. import plots
from ..fileio import write_text
from ..forecast import symbol_file_name
from ..rundir import RunDir

MAX_FAN_CHARTS = 6
FORECASTERS = ("model", "random_walk", "histvol20", "ewma", "bootstrap", "garch")


@dataclass
class Section:
    title: str
    items: list = field(default_factory=list)  # ("p", text) | ("table", header, rows) | ("img", file, caption)

    def p(self, text: str):
        self.items.append(("p", text))

    def table(self, header: list[str], rows: list[list]):
        self.items.append(("table", header, rows))

    def img(self, file: str, caption: str):
        self.items.append(("img", file, caption))


def _fmt(value, spec: str = ".4g") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return f"{value:,}"
    if isinstance(value, (float, np.floating)):
        return format(float(value), spec)
    return str(value)


def _pct(value) -> str:
    return "n/a" if value is None else f"{value:.1%}"


# ------------------------------------------------------------------------------------------------ content
def build_sections(out: Path, metrics: dict, run, series, origins, cum, realised) -> list[Section]:
    """Write the PNGs into `out` and return the report's sections."""
    fc, tok = metrics["forecast"], metrics["tokens"]
    H = fc["horizon_bars"]
    sections = []

    s = Section("Summary")
    s.p(f"Run {Path(run.dir).name}, data {metrics['data']}, {metrics['split']} split (train_end "
        f"{metrics['train_end']}, val_end {metrics['val_end']}), {metrics['n_symbols']} symbol(s).")
    s.p(f"Forecast of the {H}-bar cumulative log return from {fc['n_origins']} origins ({fc['origins_rule']}), "
        f"{fc['num_samples']} sampled paths each, temperature {fc['temperature']:g}.")
    model, hv = fc["model"], fc["histvol20"]
    s.p(f"Model CRPS {_fmt(model['crps'])} vs HistVol20 {_fmt(hv['crps'])} (ratio "
        f"{_fmt(fc['crps_relative_to_histvol20']['model'], '.3f')}; below 1 is better); 90% interval coverage "
        f"{_pct(model['coverage_90'])}, 50% coverage {_pct(model['coverage_50'])}.")
    if metrics.get("overlap_allowed") and metrics.get("overlapping_origins"):
        s.p(f"WARNING: {metrics['overlapping_origins']} origins are at or before the run's train_end "
            "(--allow-overlap): those scores are on data the model was trained on.")
    sections.append(s)

    s = Section("Forecast accuracy (same origins for every forecaster)")
    header = ["forecaster", "CRPS", "CRPS / HistVol20", "cov 50%", "width 50%", "cov 90%", "width 90%",
              "dir. acc. [95% CI]", "MAE median"]
    rows = []
    for name in FORECASTERS:
        m = fc.get(name)
        if m is None:
            rows.append([name] + ["n/a"] * (len(header) - 1))
            continue
        lo, hi = m["directional_accuracy_ci95"]
        rows.append([name, _fmt(m["crps"]), _fmt(fc["crps_relative_to_histvol20"][name], ".3f"),
                     _pct(m["coverage_50"]), _fmt(m["width_50"]), _pct(m["coverage_90"]), _fmt(m["width_90"]),
                     f"{_pct(m['directional_accuracy'])} [{_pct(lo)}, {_pct(hi)}]", _fmt(m["mae_median"])])
    s.table(header, rows)
    for name, reason in fc.get("notes", {}).items():
        s.p(f"Note ({name}): {reason}")
    plots.crps_bars(out / "crps.png", {n: (fc.get(n) or {}).get("crps") for n in FORECASTERS})
    s.img("crps.png", "Mean CRPS, model (orange) and baselines")
    if fc.get("ablations"):
        s.p("Ablations (other runs, scored on the same origins):")
        s.table(["run", "CRPS", "cov 90%"], [[name, _fmt(a["crps"]), _pct(a["coverage_90"])]
                                            for name, a in fc["ablations"].items()])
    sections.append(s)

    s = Section("Calibration")
    plots.pit_histograms(out / "pit.png", {n: (fc.get(n) or {}).get("pit_histogram") for n in FORECASTERS})
    s.img("pit.png", "PIT histograms of the H-bar return")
    plots.coverage_by_horizon(out / "coverage_horizon.png", fc["coverage_by_horizon"])
    s.img("coverage_horizon.png", "Coverage of the model's intervals at each step of the horizon")
    sections.append(s)

    s = Section("Fan charts (each symbol's last origin)")
    for k, symbol in enumerate(sorted({str(x) for x in origins.symbols})[:MAX_FAN_CHARTS]):
        last = int(np.flatnonzero(origins.symbols == symbol)[-1])
        i = int(origins.index[last])
        trailing = series[symbol].returns[max(0, i - max(3 * H, 20)):i]
        history = np.concatenate([[0.0], np.cumsum(trailing)]) - trailing.sum()
        file = f"fan_{k}_{symbol_file_name(symbol)}.png"
        plots.fan_chart(out / file, history, cum[last], realised[last], title=f"{symbol}: {H} bars after origin")
        s.img(file, f"{symbol}: sampled paths (50/80/95% bands, a few paths) and the realised path (black)")
    sections.append(s)

    s = Section("Per symbol")
    names = [n for n in FORECASTERS if fc.get(n) is not None]
    s.table(["symbol", "origins", "model cov 50%", "model cov 90%"] + [f"CRPS {n}" for n in names],
            [[sym, row["n_origins"], _pct(row["model_coverage_50"]), _pct(row["model_coverage_90"])]
             + [_fmt(row[f"crps_{n}"]) for n in names] for sym, row in fc["per_symbol"].items()])
    s.p("Risk from the paths of each symbol's last origin. VaR/ES are losses as positive fractions of the "
        "position's value (loss = 1 - exp(R_H)); barrier touches are on bar closes.")
    risk_rows = []
    for sym, r in fc["risk"].items():
        risk_rows.append([sym, _pct(r["p_up"]), _pct(r["var_95"]), _pct(r["es_95"]), _pct(r["var_99"]),
                          _pct(r["es_99"])] + [f"+{_pct(r['p_touch_up'][k])} / -{_pct(r['p_touch_down'][k])}"
                                               for k in r["p_touch_up"]])
    barriers = next(iter(fc["risk"].values()))["p_touch_up"].keys() if fc["risk"] else []
    s.table(["symbol", "P(up)", "VaR 95", "ES 95", "VaR 99", "ES 99"]
            + [f"touch ±{float(k):.0%}" for k in barriers], risk_rows)
    sections.append(s)

    s = Section("Token metrics")
    if tok.get("model") is None:
        s.p(tok.get("note", "no tokens in the split"))
    else:
        s.p(f"{metrics['n_tokens']:,} target tokens of the {metrics['split']} split. Baselines: "
            f"{tok['smoothing']}.")
        s.table(["model", "loss (nats)", "perplexity", "top-1", "top-5"],
                [[n, _fmt(tok[n]["loss"]), _fmt(tok[n]["perplexity"]), _pct(tok[n]["top1"]), _pct(tok[n]["top5"])]
                 for n in ("model", "unigram", "bigram")])
        usage = tok["usage"]
        plots.code_usage(out / "code_usage.png", usage["counts"])
        s.p(f"Codes used in the split: {usage['codes_used']} of {len(usage['counts'])}, usage perplexity "
            f"{usage['usage_perplexity']:.1f}.")
        s.img("code_usage.png", "Token (code) usage in the evaluated split")
        size = tok["size"]
        s.table(["component", "parameters"], [[k, _fmt(v)] for k, v in size["params"].items()])
        s.p(f"Weights: {size['bytes_fp32'] / 2**20:.2f} MiB in fp32, {size['bytes_bf16'] / 2**20:.2f} MiB in bf16.")
    sections.append(s)

    s = Section("Training")
    train, val = _training_points(RunDir(run.dir).metrics_csv)
    if plots.training_curve(out / "training.png", train, val, vocab_size=run.model.config.vocab_size):
        s.img("training.png", "Train and validation loss")
    else:
        s.p("No training curves (RUN/metrics.csv is missing or empty).")
    sections.append(s)

    s = Section("Method")
    s.p("CRPS: the fair sample estimator E|X-y| - E|X-X'|/2 over S paths (closed form for the normal and Student-t "
        "baselines). Intervals are central; PIT = F(y). Direction: the sign of the predictive median vs the "
        "outcome, zero counts as half; the CI is Wilson's at 95%.")
    s.p("Baselines fit their parameters on the train split only and use only bars before each origin: random walk "
        "(train volatility), HistVol20 (20-bar trailing volatility), EWMA (RiskMetrics 0.94), bootstrap of the 250 "
        "trailing returns, GARCH(1,1)-t (arch) fit on the train split and filtered through each origin.")
    sections.append(s)
    return sections


def _training_points(metrics_csv: Path) -> tuple[list, list]:
    """(step, loss) pairs of train_loss and of val_loss from RUN/metrics.csv; empty when it is missing or unusable."""
    try:
        table = pd.read_csv(metrics_csv)
    except (OSError, ValueError, pd.errors.ParserError):
        return [], []
    if "step" not in table.columns:
        return [], []

    def pairs(column: str) -> list:
        if column not in table.columns:
            return []
        rows = table[["step", column]].dropna()
        return list(zip(rows["step"], rows[column]))

    return pairs("train_loss"), pairs("val_loss")


# ---------------------------------------------------------------------------------------------- rendering
_MD_SPECIAL = re.compile(r"([\\`*_\[\]|~!#])")
_MD_AUTOLINK = re.compile(r"(?i):(?=//)|(?<=www)\.|@")
_MD_BLOCK_START = re.compile(r"^(\s*)([-+=](?=\s|[-+=]*$)|\d{1,9}(?=[.)](?:\s|$)))")  # list, break, heading


def markdown_text(value) -> str:
    """Text that renders as itself in a Markdown paragraph or table cell, on one line: HTML special characters as
    entities, Markdown's link, image, emphasis, code, heading and table characters backslash-escaped, a leading
    list marker escaped, and the `:` of `://`, the `.` of `www.` and `@` escaped so that no URL or e-mail address
    becomes an autolink."""
    text = html.escape(str(value), quote=False).replace("\r", " ").replace("\n", " ")
    text = _MD_SPECIAL.sub(r"\\\1", text)
    text = _MD_AUTOLINK.sub(lambda m: "\\" + m.group(0), text)
    return _MD_BLOCK_START.sub(_escape_block_start, text)


def _escape_block_start(match: re.Match) -> str:
    indent, marker = match.group(1), match.group(2)
    return f"{indent}{marker}\\" if marker.isdigit() else f"{indent}\\{marker}"  # "1\." / "\-"


def render_markdown(title: str, sections: list[Section]) -> str:
    lines = [f"# {markdown_text(title)}", ""]
    for sec in sections:
        lines += [f"## {sec.title}", ""]
        for item in sec.items:
            if item[0] == "p":
                lines += [markdown_text(item[1]), ""]
            elif item[0] == "table":
                header, rows = item[1], item[2]
                lines.append("| " + " | ".join(markdown_text(h) for h in header) + " |")
                lines.append("|" + "|".join(["---"] * len(header)) + "|")
                lines += ["| " + " | ".join(markdown_text(c) for c in row) + " |" for row in rows]
                lines.append("")
            else:
                lines += [f"![{markdown_text(item[2])}]({item[1]})", ""]
    return "\n".join(lines)


_CSS = ("body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;margin:0.6em 0;font-size:0.9em}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}td:first-child,th:first-child{text-align:left}"
        "th{background:#f3f3f3}img{max-width:100%}figure{margin:1em 0}figcaption{font-size:0.85em;color:#555}")


def render_html(title: str, sections: list[Section], out: Path) -> str:
    e = html.escape
    parts = ["<!DOCTYPE html>", "<html><head><meta charset=\"utf-8\">", f"<title>{e(title)}</title>",
             f"<style>{_CSS}</style></head><body>", f"<h1>{e(title)}</h1>"]
    for sec in sections:
        parts.append(f"<h2>{e(sec.title)}</h2>")
        for item in sec.items:
            if item[0] == "p":
                parts.append(f"<p>{e(str(item[1]))}</p>")
            elif item[0] == "table":
                parts.append("<table><tr>" + "".join(f"<th>{e(str(h))}</th>" for h in item[1]) + "</tr>")
                parts += ["<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in row) + "</tr>" for row in item[2]]
                parts.append("</table>")
            else:
                data = base64.b64encode((out / item[1]).read_bytes()).decode("ascii")
                parts.append(f"<figure><img alt=\"{e(item[2])}\" src=\"data:image/png;base64,{data}\">"
                             f"<figcaption>{e(item[2])}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_report(out: Path, metrics: dict, *, run, series, origins, cum, realised) -> None:
    """Write the PNGs, report.md and report.html into `out` (a directory being built)."""
    out = Path(out)
    sections = build_sections(out, metrics, run, series, origins, cum, realised)
    title = f"pricegpt evaluation: {Path(run.dir).name}"
    write_text(out / "report.md", render_markdown(title, sections))
    write_text(out / "report.html", render_html(title, sections, out))
