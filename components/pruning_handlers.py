"""Pruning tab handlers: each turns the widget values into a PruneConfig and makes one engine call
(studio.pruning); long ones run as session jobs. Public ones are gradio_client endpoints."""
from __future__ import annotations

import inspect
import logging
import time
from dataclasses import replace

import gradio as gr

from components import pruning_logic as logic
from components.common import ui_errors, wait_for_job
from studio import pruning as engine
from studio.pruning import DEFAULT_NEURON_METHOD
from studio.data import token_blocks
from studio.errors import PruningError
from studio.evaluation import parameter_count, perplexity
from studio.figures import architecture_figure, empty_figure
from studio.figures.pruning import (curve_figure, head_heatmap, layer_bars, neuron_heatmap,
                                    preview_bars)
from studio.session import BASE, STUDENT, Session, model_summary

log = logging.getLogger(__name__)


def _values(args: tuple) -> dict:
    return dict(zip(logic.SETTINGS, args))


def endpoint(fn, extras: tuple[str, ...] = (), progress: bool = True):
    """fn(values: dict, *extras, progress) as a Gradio callable whose signature names every
    setting (API parameter names, defaults filled from the widgets) and the extras, with a
    gr.Progress that Gradio injects."""
    def call(*args):
        n = len(logic.SETTINGS)
        rest = args[n:]
        return fn(_values(args[:n]), *rest)

    params = [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD)
              for name in (*logic.SETTINGS, *extras)]
    if progress:
        params.append(inspect.Parameter("progress", inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                        default=gr.Progress()))
    call.__signature__ = inspect.Signature(params)
    call.__name__ = call.__qualname__ = fn.__name__
    call.__doc__ = fn.__doc__
    return call


def _parse_ratios(text: str) -> list[float]:
    try:
        ratios = [float(part) for part in str(text).replace(";", ",").split(",") if part.strip()]
    except ValueError:
        raise PruningError(f"MLP fractions must be numbers separated by commas (got '{text}'), "
                           "e.g. 0, 0.1, 0.2.") from None
    bad = [r for r in ratios if not 0 <= r < 1]
    if not ratios or bad:
        raise PruningError(f"MLP fractions must be in [0, 1) (got {bad or 'none'}); e.g. 0, 0.1, 0.2.")
    return sorted(set(ratios))


class Handlers:
    """The tab's callbacks over one Session (shared by every browser)."""

    def __init__(self, session: Session):
        self.session = session

    def layer_count(self) -> int:
        if not self.session.has(BASE):
            return 1
        loaded = self.session.working()
        return loaded.adapter.num_layers(loaded.config)

    def _config(self, values: dict):
        return logic.build_config(engine, values)

    # -- importance -------------------------------------------------------------------------
    @ui_errors
    def compute_importance(self, values: dict, progress=None):
        """Compute (or fetch from the cache) neuron, head and layer scores for the chosen methods
        and calibration source as a session job; returns a summary of what was computed."""
        config = self._config(values)
        # small stand-in amounts so every part is scored now (the heatmaps need all three)
        full = replace(config, mlp_ratio=config.mlp_ratio or 0.01,
                       head_ratio=config.head_ratio or 0.01,
                       layers=config.layers or (0 if config.layer_method == "manual" else 1))
        started = time.time()
        job = self.session.submit(f"importance {config.method} on {config.calib_source}",
                                  lambda j: engine.compute_importance(self.session, full, j.progress,
                                                                      j.should_stop))
        scores = wait_for_job(job, progress)
        shapes = {part: list(getattr(scores, part).shape) for part in ("neurons", "heads", "layers")
                  if getattr(scores, part) is not None}
        return {"status": "ready", "job": job.id, "seconds": round(time.time() - started, 2),
                **{k: v for k, v in scores.meta.items() if k != "fingerprint"}, "shapes": shapes}

    # -- preview ----------------------------------------------------------------------------
    @ui_errors
    def preview_pruning(self, mlp_ratio=0.0, head_ratio=0.0, layers=0, head_mode="per-group",
                        layer_method="block_influence", manual_layers=None, method=DEFAULT_NEURON_METHOD,
                        head_method="activation", reconstruct=True, multiple_of=1,
                        calib_source=logic.BUILTIN, calib_tokens=4096, general_source=None,
                        domain_source=None, use_general=True, use_domain=True, preview_tokens=None):
        """Preview a setting on a sliced view of the working model (masks when memory is short).

        Parameters, in order (a gradio_client caller may pass just the first few, by position or
        name): mlp_ratio, head_ratio (fractions in [0, 1)), layers (whole layers to remove),
        head_mode ("per-group" | "groups"), layer_method, manual_layers (list of layer indices,
        with layer_method "manual"), method (neuron), head_method, reconstruct (bool),
        multiple_of, calib_source, calib_tokens, general_source, domain_source, use_general,
        use_domain, preview_tokens (per set).

        Returns {"perplexity": {set: ppl}, "baseline": {set: ppl}, "params", "params_base",
        "est_speedup", "flops_ratio", "plan", "seconds", "warning"} (+ the plan for the heatmaps
        in a per-browser state)."""
        values = {k: v for k, v in locals().items() if k in logic.SETTINGS}
        config = self._config(values)
        sets = logic.preview_sets(values)
        tokens, block = logic.preview_tokens(values, self.session.device)
        started = time.time()
        result = engine.preview(self.session, config, sets, eval_tokens=tokens, block=block)
        seconds = time.time() - started
        text, warning = logic.describe_preview(result, config.calib_source)
        plan, _ = engine.plan_for(self.session, config)  # cached by the preview above
        scores = engine.compute_importance(self.session, config)  # cached
        layout = self.session.working().adapter.head_layout(self.session.working().config)
        state = {"plan": plan, "scores": scores, "group_size": layout.group_size, "text": text}
        out = {**logic.jsonable(result), "seconds": round(seconds, 3), "warning": warning,
               "preview_tokens": tokens}
        return out, state

    @ui_errors
    def render(self, result, state):
        """Text, bars and heatmaps of the last preview (private: drawn from the per-browser state)."""
        if not state:
            return (gr.update(), empty_figure("Move a slider to preview"), gr.update(), gr.update(),
                    gr.update())
        plan, scores = state["plan"], state["scores"]
        neurons = neuron_heatmap(scores.neurons, plan.neuron_keep) if scores.neurons is not None \
            else empty_figure("No neuron scores at this setting: raise the MLP fraction or press "
                              "Compute importance")
        heads = head_heatmap(scores.heads, plan.head_keep, state["group_size"]) \
            if scores.heads is not None else empty_figure("No head scores at this setting: raise the "
                                                          "head fraction or press Compute importance")
        layer = layer_bars(scores.layers, plan.drop_layers) if scores.layers is not None \
            else empty_figure("No layer scores at this setting: raise 'Layers to remove' (expensive "
                              "layer methods score only then)")
        return state["text"], preview_bars(result), neurons, heads, layer

    def layer_widgets(self, *_):
        """Layer slider range and manual checkboxes matching the working model."""
        n = self.layer_count()
        return (gr.update(maximum=max(n - 1, 1), value=0),
                gr.update(choices=[(f"L{i}", i) for i in range(n)], value=[]))

    # -- curves -----------------------------------------------------------------------------
    def _curves(self, values: dict, ratios_text: str, methods: list[str], progress) -> list[dict]:
        config = self._config(values)
        ratios = _parse_ratios(ratios_text)
        sets = logic.preview_sets(values)
        tokens, _ = logic.preview_tokens(values, self.session.device)
        runs = [(m, s, spec) for m in methods for s, spec in sets.items()]

        def work(job):
            rows = []
            for n, (method, name, spec) in enumerate(runs):
                step = lambda f, msg="", n=n: job.progress((n + f) / len(runs), f"{method} on {name}: {msg}")
                for row in engine.perplexity_curve(self.session, replace(config, method=method), ratios,
                                                   spec, tokens, step, job.should_stop):
                    rows.append({**row, "method": method, "set": name})
            return rows

        job = self.session.submit(f"pruning curve ({', '.join(methods)})", work)
        return logic.jsonable(wait_for_job(job, progress))

    @ui_errors
    def pruning_curve(self, values: dict, ratios: str, progress=None):
        """Perplexity vs MLP fraction for the chosen method on the preview sets (a job); after the
        settings comes the comma-separated list of fractions. Returns a list of rows."""
        return self._curves(values, ratios, [values.get("method") or DEFAULT_NEURON_METHOD], progress)

    @ui_errors
    def compare_methods(self, values: dict, ratios: str, methods: list, progress=None):
        """Like /pruning_curve for several neuron methods (after the settings: fractions, methods)."""
        if not methods:
            raise PruningError("Tick at least one method to compare.")
        return self._curves(values, ratios, list(methods), progress)

    @ui_errors
    def curve_plot(self, rows):
        many = len({r.get("method") for r in rows or []}) > 1
        return curve_figure(rows or [], title="Method comparison" if many else "")

    # -- apply ------------------------------------------------------------------------------
    @ui_errors
    def apply_pruning(self, values: dict, progress=None):
        """Slice the setting into the student (a job) and return its summary, parameter count,
        the recorded recipe step and its perplexity on the preview sets (same tokens as a preview)."""
        config = self._config(values)
        sets = logic.preview_sets(values)
        tokens, block = logic.preview_tokens(values, self.session.device)
        base_params = parameter_count(self.session.working().model)
        job = self.session.submit("apply pruning", lambda j: engine.apply(
            self.session, config, j.progress, j.should_stop))
        student = wait_for_job(job, progress)
        ppl = {}
        for name, spec in sets.items():
            blocks = token_blocks(student.tokenizer, spec, block, tokens, seed=None)
            ppl[name] = perplexity(student.model, blocks)
        return {"student": model_summary(student), "params": parameter_count(student.model),
                "params_before": base_params, "perplexity": ppl,
                "recipe_step": logic.jsonable(self.session.recipe[-1])}

    @ui_errors
    def discard_student(self):
        """Drop the pruned student so the next preview and apply start from the base again;
        returns the base summary."""
        self.session.unload(STUDENT)
        return {"student": None, "working": model_summary(self.session.working())}

    @ui_errors
    def after_apply(self, applied):
        """Diagram, layer widgets of the new working model, sliders back to 0, and the words."""
        base = model_summary(self.session.get(BASE))
        current = model_summary(self.session.get(STUDENT)) if self.session.has(STUDENT) else base
        if self.session.has(STUDENT) and applied and applied.get("student"):
            ppl = " · ".join(f"**{k}** perplexity {v:.2f}" for k, v in applied["perplexity"].items())
            text = (f"**Applied**: the student has **{applied['params'] / 1e6:.1f}M** parameters "
                    f"(was {applied['params_before'] / 1e6:.1f}M; base {base['params'] / 1e6:.1f}M) · "
                    f"{ppl}. Recipe step {len(self.session.recipe)}: prune. The sliders now prune "
                    "the student further; *Discard the student* starts again from the base.")
        else:
            text = "The student was discarded: previews and Apply start from the base again."
        return (architecture_figure(current, base), *self.layer_widgets(), 0, 0, text,
                empty_figure("Move a slider to preview"))
