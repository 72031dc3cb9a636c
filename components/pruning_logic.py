"""Pruning tab logic: widget values -> PruneConfig, engine calls, the words shown next to a preview.

No layout here (see components/pruning_tab.py); every function is plain Python so the handlers
stay one engine call each.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

from components.common import number
from studio.errors import PruningError
from studio.pruning import DEFAULT_NEURON_METHOD

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
WIKI_VALID = "../shared/data/wikitext-2/valid.txt"
WIKI_TEST = "../shared/data/wikitext-2/test.txt"
PUBMEDQA_TEST = "pubmedqa:../shared/data/pubmedqa/ori_pqal.json:test"
PUBMEDQA_TRAIN = "pubmedqa:../shared/data/pubmedqa/ori_pqal.json:train"
BUILTIN = "builtin:python-docs"
# a domain rise this much larger (in relative terms) than the general one earns a warning
WARN_FACTOR, WARN_MIN_RISE = 1.5, 0.10

# The order of the settings every public endpoint takes first (documented in preview_pruning).
SETTINGS = ["mlp_ratio", "head_ratio", "layers", "head_mode", "layer_method", "manual_layers",
            "method", "head_method", "reconstruct", "multiple_of", "calib_source", "calib_tokens",
            "general_source", "domain_source", "use_general", "use_domain", "preview_tokens"]


def _exists(spec: str) -> bool:
    path = spec.split(":", 1)[1].rsplit(":", 1)[0] if spec.startswith("pubmedqa:") else spec
    return (ROOT / path).exists()


def source_choices() -> list[str]:
    """Handy data sources for the dropdowns (only the shared files that are present)."""
    return [BUILTIN] + [s for s in (WIKI_VALID, WIKI_TEST, PUBMEDQA_TRAIN, PUBMEDQA_TEST) if _exists(s)]


def default_general() -> str:
    return WIKI_TEST if _exists(WIKI_TEST) else BUILTIN


def default_domain() -> str | None:
    return PUBMEDQA_TEST if _exists(PUBMEDQA_TEST) else None


def default_preview_tokens(device) -> int:
    return 2048 if str(device).startswith("cuda") else 512


def _fraction(value, name: str) -> float:
    value = number(value, 0.0, float)
    if not (0.0 <= value < 1.0) or math.isnan(value):
        raise PruningError(f"The {name} fraction must be in [0, 1) (got {value}); pick a value "
                           "like 0.2 for 20%.")
    return value


def build_config(engine, values: dict):
    """A validated-shape PruneConfig from the widget values (the engine validates the rest)."""
    layers = number(values.get("layers"), 0, float)
    if layers < 0 or layers != int(layers):
        raise PruningError(f"Layers to remove must be a whole number ≥ 0 (got {layers}).")
    manual = sorted({int(i) for i in values.get("manual_layers") or []})
    layer_method = values.get("layer_method") or "block_influence"
    if layer_method == "manual":
        layers = len(manual)
    calib_tokens = number(values.get("calib_tokens"), 4096, int)
    multiple_of = number(values.get("multiple_of"), 1, int)
    if calib_tokens <= 0 or multiple_of <= 0:
        raise PruningError(f"Calibration tokens and multiple-of must be positive (got "
                           f"{calib_tokens} and {multiple_of}).")
    return engine.PruneConfig(
        mlp_ratio=_fraction(values.get("mlp_ratio"), "MLP"),
        head_ratio=_fraction(values.get("head_ratio"), "head"),
        head_mode=values.get("head_mode") or "per-group", layers=int(layers),
        layer_method=layer_method, layer_list=manual if layer_method == "manual" else None,
        method=values.get("method") or DEFAULT_NEURON_METHOD,
        head_method=values.get("head_method") or "activation",
        reconstruct=bool(values.get("reconstruct")), multiple_of=multiple_of,
        calib_source=(values.get("calib_source") or BUILTIN).strip(), calib_tokens=calib_tokens,
        calib_block=min(512, calib_tokens))


def preview_sets(values: dict) -> dict[str, str]:
    """{"general": spec, "domain": spec} for the sets switched on (at least one)."""
    sets = {}
    for name in ("general", "domain"):
        spec = (values.get(f"{name}_source") or "").strip()
        if values.get(f"use_{name}", True) and spec:
            sets[name] = spec
    if not sets:
        raise PruningError("Both preview sets are off or empty; switch one on and give it a source "
                           f"(e.g. {BUILTIN}).")
    return sets


def preview_tokens(values: dict, device) -> tuple[int, int]:
    """(tokens, block): at least one block; blocks of 512 or the budget when it is smaller."""
    tokens = number(values.get("preview_tokens"), default_preview_tokens(device), int)
    if tokens < 16:
        raise PruningError(f"Preview tokens must be at least 16 (got {tokens}).")
    return tokens, min(512, tokens)


def describe_preview(result: dict, calib_source: str) -> tuple[str, str | None]:
    """Markdown next to the preview (perplexities vs baseline, size, speed) and the calibration
    warning when the domain suffers much more than the general text."""
    rises = {}
    parts = []
    for name, ppl in result.get("perplexity", {}).items():
        base = result.get("baseline", {}).get(name)
        rises[name] = ppl / base if base else None
        ratio = f" (baseline {base:.2f}, ×{ppl / base:.2f})" if base else ""
        parts.append(f"**{name}** perplexity **{ppl:.2f}**{ratio}")
    params, base_params = result.get("params"), result.get("params_base")
    if params and base_params:
        parts.append(f"**params** {params / 1e6:.1f}M of {base_params / 1e6:.1f}M "
                     f"({1 - params / base_params:.0%} removed)")
    if result.get("est_speedup"):
        parts.append(f"**est. speedup** ×{result['est_speedup']:.2f}")
    warning = None
    general, domain = rises.get("general"), rises.get("domain")
    if general and domain and domain - 1 > WARN_MIN_RISE and \
            (domain - 1) > WARN_FACTOR * max(general - 1, 0.0):
        warning = (f"The domain perplexity rises ×{domain:.2f} but the general one only "
                   f"×{general:.2f}: the calibration text ({calib_source}) does not represent your "
                   "domain; calibrate on domain text or mix sources.")
    text = " · ".join(parts)
    if warning:
        text += f"\n\n⚠️ {warning}"
    return text, warning


def jsonable(value):
    """Plain JSON types for a result dict (tensors -> lists, tuples -> lists, keys -> str)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [jsonable(v) for v in value]
    if hasattr(value, "tolist"):
        return value.tolist()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)
