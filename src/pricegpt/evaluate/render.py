"""The report's building blocks: a `Section` (paragraphs, tables, images), the number formatting every section
uses, the tolerant readers of metrics.json's calibration blocks (`records`, `reliability_curves`,
`regime_summary`, `p_up_curve`: a missing or older block degrades to None), and the two renderers of one list of
sections, Markdown (`render_markdown`) and self-contained HTML (`render_html`, PNGs inlined as base64 data URIs).

All text is escaped when rendered, so a string that comes from the user (symbol, path, data name, run name) can
never become markup: html.escape in HTML; in Markdown (`markdown_text`) HTML special characters become entities
(viewers render raw HTML), the characters that make links, images, emphasis, code and tables are backslash-escaped,
URLs cannot become autolinks, and newlines are spaces.
"""

from __future__ import annotations

import base64
import html
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


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


def fmt(value, spec: str = ".4g") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return f"{value:,}"
    if isinstance(value, (float, np.floating)):
        return "n/a" if math.isnan(value) else format(float(value), spec)
    return str(value)


def pct(value) -> str:
    return "n/a" if not is_number(value) else f"{value:.1%}"


def interval_text(interval, spec: str = ".4g") -> str:
    if not is_interval(interval):
        return "n/a"
    return f"[{fmt(float(interval[0]), spec)}, {fmt(float(interval[1]), spec)}]"


def with_ci(value, interval, spec: str = ".4g") -> str:
    return fmt(value, spec) + ("" if not is_interval(interval) else f" {interval_text(interval, spec)}")


def is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) \
        and math.isfinite(float(value))


def is_interval(value) -> bool:
    return isinstance(value, (list, tuple)) and len(value) == 2 and all(is_number(v) for v in value)


def as_dict(value) -> dict:
    return value if isinstance(value, dict) else {}


# --------------------------------------------------------------------------------------- tolerant readers
def records(value, path: tuple = ()) -> list[tuple[str, dict]]:
    """A nested dict (or list of dicts) as table rows: every dict with plain entries (numbers, strings, [lo, hi])
    becomes one row labelled by its path ("high / model"); longer lists are left out."""
    rows = []
    if isinstance(value, list):
        for k, item in enumerate(value):
            rows += records(item, path + (str(k),)) if isinstance(item, (dict, list)) else []
        return rows
    if not isinstance(value, dict):
        return rows
    own = {str(k): v for k, v in value.items() if is_cell(v)}
    if any(v is not None for v in own.values()):
        rows.append((" / ".join(path), own))
    for k, v in value.items():
        if isinstance(v, dict) or (isinstance(v, list) and v and all(isinstance(x, dict) for x in v)):
            rows += records(v, path + (str(k),))
    return rows


def is_cell(value) -> bool:
    return value is None or isinstance(value, (str, bool, int, float, np.integer, np.floating)) \
        or is_interval(value)


def records_table(section: Section, value, first: str, preferred: tuple[str, ...] = ()) -> bool:
    """`records(value)` as one table; columns: those of `preferred` that occur, else the union of the entries in
    order of appearance."""
    rows = records(value)
    if not rows:
        return False
    columns = list(dict.fromkeys(k for _, entries in rows for k in entries))
    columns = [c for c in preferred if c in columns] or columns
    missing = [str(k) for k, v in as_dict(value).items() if v is None]
    if missing:
        section.p(f"Not available: {', '.join(missing)} (did not run).")
    section.table([first, *columns], [[label or "all", *[cell(entries.get(c), c) for c in columns]]
                                      for label, entries in rows])
    return True


PERCENT_KEY = re.compile(r"(^|[._])(coverage(_\d+)?|[a-z_]*rate|[a-z_]*frequency|share)$")


VAR_COLUMNS = ("n", "exceedances", "rate", "expected_rate", "kupiec_pvalue", "christoffersen_pvalue",
                "conditional_pvalue")


def cell(value, key: str = "") -> str:
    """A table cell: [lo, hi] as an interval, a rate, coverage or frequency (not a score of one) as a percentage."""
    if is_interval(value):
        return interval_text(value, ".3g")
    if is_number(value) and not isinstance(value, (int, np.integer)):
        score = "brier" in key or key.startswith("bss")  # Brier (skill) scores, not rates
        return pct(value) if PERCENT_KEY.search(key) and not score else fmt(value, ".3g")
    return fmt(value)


def reliability_curves(reliability) -> dict[str, tuple[list[float], list[float]]]:
    """{forecaster: (nominal levels, coverage)}, model first, from forecast.reliability = {"levels": [0.05, ...],
    "coverage": {name: [coverage at each level] or None}}; forecasters without a curve are left out."""
    reliability = as_dict(reliability)
    levels = reliability.get("levels")
    curves = {str(name): (levels, coverage) for name, coverage in as_dict(reliability.get("coverage")).items()
              if isinstance(levels, list) and isinstance(coverage, list) and len(coverage) == len(levels)
              and coverage and all(is_number(v) for v in (*levels, *coverage))}
    return dict(sorted(curves.items(), key=lambda item: item[0] != "model"))


def regime_summary(by_regime, best: str | None) -> tuple[list[str], dict, list | None]:
    """(regime labels, {"50": the model's coverage per regime, "90": ...}, its CRPS ratio to `best` per regime or
    None) from forecast.by_regime = {"regimes": {REGIME: {"model_coverage_50", "model_coverage_90",
    "crps_ratio": {baseline: ratio}}}}."""
    regimes = {str(k): v for k, v in as_dict(as_dict(by_regime).get("regimes")).items() if isinstance(v, dict)}

    def number(value):
        return float(value) if is_number(value) else None

    coverage = {level: [number(v.get(f"model_coverage_{level}")) for v in regimes.values()] for level in ("50", "90")}
    coverage = {k: v for k, v in coverage.items() if any(x is not None for x in v)}
    ratios = [number(as_dict(v.get("crps_ratio")).get(best)) for v in regimes.values()]
    return list(regimes), coverage, (ratios if any(r is not None for r in ratios) else None)


def p_up_curve(p_up) -> tuple[list, list, list | None] | None:
    """(mean predicted P(up), observed up frequency, counts) of the bins that hold forecasts, from
    forecast.p_up["reliability"] = {"mean_predicted", "observed_frequency", "counts"} (None for an empty bin);
    None when there is no curve."""
    curve = as_dict(as_dict(p_up).get("reliability"))
    predicted, observed = curve.get("mean_predicted"), curve.get("observed_frequency")
    if not isinstance(predicted, list) or not isinstance(observed, list) or len(predicted) != len(observed):
        return None
    keep = [i for i in range(len(predicted)) if is_number(predicted[i]) and is_number(observed[i])]
    counts = curve.get("counts") if isinstance(curve.get("counts"), list) and \
        len(curve["counts"]) == len(predicted) else None
    if not keep:
        return None
    return ([float(predicted[i]) for i in keep], [float(observed[i]) for i in keep],
            None if counts is None else [counts[i] for i in keep])


def scalars_only(value):
    """A dict without its lists (the curve's bins): what the P(up) table shows."""
    if isinstance(value, dict):
        kept = {k: scalars_only(v) for k, v in value.items() if not isinstance(v, list) or is_interval(v)}
        return {k: v for k, v in kept.items() if v != {}}
    return value


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
        lines += [f"## {markdown_text(sec.title)}", ""]
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
                lines += [f"![{markdown_text(item[2])}]({Path(item[1]).as_posix()})", ""]
    return "\n".join(lines)


_CSS = ("body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;margin:0.6em 0;font-size:0.9em;display:block;overflow-x:auto}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}td:first-child,th:first-child{text-align:left}"
        "th{background:#f3f3f3}img{max-width:100%}figure{margin:1em 0}figcaption{font-size:0.85em;color:#555}"
        "section#verdict table{font-size:1em}section#verdict p:first-of-type{font-size:1.1em;font-weight:600}")


def _section_id(title: str) -> str:
    """"CRPS over time" -> "crps-over-time" (the words before any parenthesis)."""
    return re.sub(r"[^a-z0-9]+", "-", title.split("(")[0].lower()).strip("-") or "section"


def render_html(title: str, sections: list[Section], out: Path) -> str:
    e = html.escape
    parts = ["<!DOCTYPE html>", "<html><head><meta charset=\"utf-8\">", f"<title>{e(title)}</title>",
             f"<style>{_CSS}</style></head><body>", f"<h1>{e(title)}</h1>"]
    for sec in sections:
        parts.append(f"<section id=\"{_section_id(sec.title)}\"><h2>{e(sec.title)}</h2>")
        first_table = True
        for item in sec.items:
            if item[0] == "p":
                parts.append(f"<p>{e(str(item[1]))}</p>")
            elif item[0] == "table":
                table_id = f" id=\"{_section_id(sec.title)}-table\"" if first_table else ""
                first_table = False
                parts.append(f"<table{table_id}><tr>" + "".join(f"<th>{e(str(h))}</th>" for h in item[1]) + "</tr>")
                parts += ["<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in row) + "</tr>" for row in item[2]]
                parts.append("</table>")
            else:
                data = base64.b64encode((out / item[1]).read_bytes()).decode("ascii")
                parts.append(f"<figure><img alt=\"{e(item[2])}\" src=\"data:image/png;base64,{data}\">"
                             f"<figcaption>{e(item[2])}</figcaption></figure>")
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
