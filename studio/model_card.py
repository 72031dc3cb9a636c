"""Model card (README.md with Hub front matter) for an exported checkpoint.

Charts are small SVG bar charts written by hand into `charts/` (plotly's static image export needs
kaleido + Chrome, which an offline install cannot count on); the interactive plotly figures live
in the stakeholder HTML report.
"""
from __future__ import annotations

import html
import logging
import re
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData

log = logging.getLogger(__name__)

STEP_TAGS = {"prune": "pruned", "distill": "distilled", "lora": "lora"}
METRIC_NAMES = {"perplexity": "perplexity", "acc": "accuracy", "acc_norm": "accuracy"}


def card_tags(steps: list[dict]) -> list[str]:
    tags = ["tailor-studio", "text-generation"]
    for step in steps:
        tag = STEP_TAGS.get(step.get("step"))
        if tag and tag not in tags:
            tags.append(tag)
    return tags


def card_datasets(steps: list[dict]) -> list[str]:
    """Hub dataset ids used by any step (local sources are described in the body only)."""
    found = []
    for step in steps:
        for value in step.values():
            for item in value if isinstance(value, list) else [value]:
                if isinstance(item, str) and item.startswith("hf:"):
                    name = item[3:].split(":")[0].split("#")[0]
                    if name and name not in found:
                        found.append(name)
    return found


def svg_bar_chart(title: str, labels: list[str], values: list[float], unit: str = "",
                  width: int = 520, bar_h: int = 26) -> str:
    """A self-contained horizontal bar chart as SVG text (renders on the Hub and in browsers)."""
    top, left, right = 34, 150, 90
    height = top + bar_h * len(values) + 12
    peak = max([abs(v) for v in values] + [1e-12])
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'font-family="sans-serif" font-size="12">',
             '<rect width="100%" height="100%" fill="white"/>',
             f'<text x="8" y="20" font-size="14" font-weight="bold">{html.escape(title)}</text>']
    colors = ["#4C78A8", "#F58518", "#54A24B", "#E45756", "#72B7B2", "#B279A2"]
    for i, (label, value) in enumerate(zip(labels, values)):
        y = top + i * bar_h
        w = (width - left - right) * abs(value) / peak
        parts.append(f'<text x="{left - 6}" y="{y + bar_h * 0.65:.0f}" text-anchor="end">'
                     f'{html.escape(label)}</text>')
        parts.append(f'<rect x="{left}" y="{y + 3}" width="{w:.1f}" height="{bar_h - 8}" '
                     f'fill="{colors[i % len(colors)]}"/>')
        parts.append(f'<text x="{left + w + 6:.1f}" y="{y + bar_h * 0.65:.0f}">'
                     f'{value:,.4g}{html.escape(unit)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def write_charts(folder: Path, info: dict) -> list[tuple[str, str]]:
    """SVG charts for the card: parameters (base vs export) and the evaluation table's metrics."""
    charts = []
    out = folder / "charts"
    out.mkdir(exist_ok=True)
    if info.get("base_params"):
        svg = svg_bar_chart("Parameters (millions)", ["base", "exported"],
                            [info["base_params"] / 1e6, info["params"] / 1e6], "M")
        (out / "parameters.svg").write_text(svg)
        charts.append(("Parameters", "charts/parameters.svg"))
    rows = info.get("evaluation") or []
    for key in ("ppl_general", "ppl_domain", "forward_tok_s"):
        pairs = [(str(r.get("role")), float(r[key])) for r in rows if r.get(key) is not None]
        if pairs:
            labels, values = zip(*pairs)
            (out / f"{key}.svg").write_text(svg_bar_chart(key.replace("_", " "), list(labels),
                                                          list(values)))
            charts.append((key.replace("_", " "), f"charts/{key}.svg"))
    return charts


def _table(rows: list[dict]) -> str:
    if not rows:
        return "_No comparison was run before this export (Evaluate & Export tab → Compare)._"
    cols = list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |")
    return "\n".join(lines)


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:,.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value).replace("|", "\\|")


def build_card(info: dict, steps: list[dict], charts: list[tuple[str, str]] = ()) -> ModelCard:
    metrics = ["perplexity"] if info.get("perplexity") is not None else []
    for row in info.get("evaluation") or []:
        for key in row:
            if key.startswith("task:") and "accuracy" not in metrics:
                metrics.append("accuracy")
    origin = str(info.get("origin") or "")
    hub_origin = origin if re.match(r"^[\w.-]+/[\w.-]+$", origin) else None
    data = ModelCardData(base_model=hub_origin, library_name="transformers",
                         pipeline_tag="text-generation", tags=card_tags(steps),
                         datasets=card_datasets(steps) or None, metrics=metrics or None,
                         license=None)
    ver = info["verification"]
    reduction = ""
    if info.get("base_params"):
        pct = 100 * (1 - info["params"] / info["base_params"])
        reduction = (f"{info['base_params']:,} → {info['params']:,} parameters "
                     f"(**{pct:.1f}% fewer**).")
    steps_md = "\n".join(f"{i + 1}. **{s['step']}**: " + ", ".join(
        f"`{k}={v}`" for k, v in s.items() if k not in ("step", "time")) for i, s in enumerate(steps))
    chart_md = "\n\n".join(f"![{title}]({path})" for title, path in charts)
    ppl = (f"Perplexity on `{info['eval_source']}` ({info['eval_tokens']} tokens): "
           f"**{info['perplexity']}**" if info.get("perplexity") is not None else "")
    body = f"""
# {info['name']}

Tailored from {f"[{origin}](https://huggingface.co/{origin})" if hub_origin else f"`{origin}`"} with Tailor Studio.
Loads with plain `transformers`:

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained("{info['name']}")
tokenizer = AutoTokenizer.from_pretrained("{info['name']}")
```

## Parameter reduction
{reduction or f"{info['params']:,} parameters."}

## Recipe
{steps_md}

The exact settings and seeds are in `recipe.yaml`; `python -m studio run recipe.yaml` replays them.

## Evaluation
{ppl}

{_table(info.get('evaluation') or [])}

{chart_md}

## Verification
Reloaded with `{ver['loader']}` and compared on a fixed {ver['tokens']}-token input
({ver['dtype']}, {ver['device']}): max |Δ logits| = **{ver['max_abs_diff']:.3g}**
(tolerance {ver['tolerance']:g}) → **{'passed' if ver['passed'] else 'FAILED'}**.
"""
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")


def write_card(folder: Path, info: dict, steps: list[dict]) -> Path:
    charts = write_charts(folder, info)
    card = build_card(info, steps, charts)
    path = folder / "README.md"
    card.save(path)
    return path
