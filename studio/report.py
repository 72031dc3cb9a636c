"""Stakeholder report: ONE self-contained HTML file (plotly.js inline, no network needed to view)
with the before/after table, charts, the recipe and example generations."""
from __future__ import annotations

import html
import logging
import time
from pathlib import Path

import pandas as pd
import plotly.io as pio

from studio.figures.evaluation import comparison_figures, overview_figure
from studio.recipe import to_yaml

log = logging.getLogger(__name__)

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;
     padding:0 1em;color:#222}
h1{margin-bottom:.2em} .sub{color:#666;margin-top:0}
table{border-collapse:collapse;font-size:13px;margin:1em 0} th,td{border:1px solid #ddd;padding:4px 8px;
     text-align:right} th{background:#f4f6f8} td:first-child,th:first-child{text-align:left}
pre{background:#f6f8fa;padding:1em;overflow:auto;font-size:12px}
.gens{display:grid;grid-template-columns:repeat(auto-fit,minmax(240px,1fr));gap:12px}
.gen{border:1px solid #ddd;border-radius:6px;padding:10px;white-space:pre-wrap;font-size:13px}
.gen b{display:block;margin-bottom:4px} .kpi{display:inline-block;margin-right:2em;font-size:15px}
"""


def _headline(frame: pd.DataFrame) -> str:
    if frame is None or frame.empty or "base" not in set(frame["role"]) or len(frame) < 2:
        return ""
    base, last = frame[frame["role"] == "base"].iloc[0], frame[frame["role"] != "base"].iloc[-1]
    parts = [f"<span class='kpi'><b>{100 * (1 - last['params'] / base['params']):.1f}%</b> fewer "
             f"parameters ({last['role']} vs base)</span>"]
    for key, label in (("ppl_general", "general perplexity"), ("ppl_domain", "domain perplexity"),
                       ("forward_tok_s", "forward speed")):
        if key in frame and pd.notna(base.get(key)) and pd.notna(last.get(key)) and base[key]:
            parts.append(f"<span class='kpi'>{label}: {base[key]:,.4g} → <b>{last[key]:,.4g}</b></span>")
    return "<p>" + "".join(parts) + "</p>"


def _generations(gens: list[dict]) -> str:
    if not gens:
        return "<p><i>No example generations were run.</i></p>"
    blocks = []
    for g in gens:
        blocks.append(f"<div class='gen'><b>{html.escape(str(g['role']))}</b>"
                      f"<small>{g.get('new_tokens', '')} tokens in {g.get('seconds', '')} s "
                      f"({g.get('tokens_per_s', '')} tok/s)</small>\n{html.escape(g['text'])}</div>")
    prompt = html.escape(gens[0].get("prompt", ""))
    return (f"<p>Prompt: <code>{prompt}</code></p>" if prompt else "") + \
        f"<div class='gens'>{''.join(blocks)}</div>"


def render_report(frame: pd.DataFrame, recipe: list[dict], generations: list[dict] | None = None,
                  title: str = "Tailor Studio report", exports: list[dict] | None = None) -> str:
    """The report as one HTML string; the first figure carries plotly.js inline."""
    figures = [overview_figure(frame), *comparison_figures(frame)]
    charts = []
    for i, fig in enumerate(figures):
        charts.append(pio.to_html(fig, full_html=False, include_plotlyjs=(i == 0),
                                  config={"displaylogo": False}, div_id=f"figure-{i}"))
    if frame is not None and not frame.empty:
        shown = frame.map(lambda v: "" if v is None else v)
        table = shown.to_html(index=False, na_rep="", float_format=lambda v: f"{v:,.4g}", border=0)
    else:
        table = "<p><i>No comparison was run.</i></p>"
    export_html = ""
    for info in exports or []:
        ver = info.get("verification", {})
        export_html += (f"<p>Exported <code>{html.escape(str(info.get('folder')))}</code>: "
                        f"verification {'passed' if ver.get('passed') else 'FAILED'} "
                        f"(max |Δ logits| {ver.get('max_abs_diff', float('nan')):.3g}).</p>")
    stamp = time.strftime("%Y-%m-%d %H:%M")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{STYLE}</style></head><body>
<h1>{html.escape(title)}</h1><p class="sub">Generated {stamp} by Tailor Studio · opens offline</p>
{_headline(frame)}
<h2>Before / after</h2>{table}
<h2>Charts</h2>{''.join(charts)}
<h2>Example generations</h2>{_generations(generations or [])}
<h2>Export</h2>{export_html or '<p><i>Not exported yet.</i></p>'}
<h2>Recipe</h2><pre>{html.escape(to_yaml(recipe))}</pre>
</body></html>"""


def write_report(session, frame: pd.DataFrame, generations: list[dict] | None = None,
                 name: str = "report.html", title: str = "Tailor Studio report") -> Path:
    path = session.path("reports", name)
    path.parent.mkdir(parents=True, exist_ok=True)
    exports = session.cache.get("export_results", [])
    path.write_text(render_report(frame, session.recipe, generations, title, exports), encoding="utf-8")
    return path
