"""Pruning speed benchmark: (1) exported pruned models' forward tokens/s vs the FLOP reduction,
base and pruned side by side in one run; (2) preview latency through gradio_client vs one bare
forward pass of the pruned model over the same preview tokens, each preview paired with a bare
pass timed just before it (this CPU is shared: unpaired timings drift by ±20% between phases).

Run: .venv/bin/python benchmarks/bench_pruning_speed.py [--tokens 2048] [--repeats 5] [--no-server]
     [--no-export] [--preview-repeats 2]
Targets (issue 8): speedup ≥ 0.9 × FLOP reduction; preview ≤ 1.3 × the bare forward pass
(median of the paired ratios).
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data"
WIKI_VALID = str(DATA / "wikitext-2" / "valid.txt")
WIKI_TEST = str(DATA / "wikitext-2" / "test.txt")
PUBMEDQA_TEST = f"pubmedqa:{DATA / 'pubmedqa' / 'ori_pqal.json'}:test"
SPEED_SETTINGS = {"MLP 30%": dict(mlp_ratio=0.3), "MLP 40%": dict(mlp_ratio=0.4),
                  "3 layers": dict(layers=3, layer_method="block_influence"),
                  "MLP 30% + 3 layers": dict(mlp_ratio=0.3, layers=3, layer_method="block_influence")}
SPEED_TARGET, PREVIEW_TARGET = 0.9, 1.3


def forward_flops_per_token(model, seq_len: int) -> float:
    """Multiply-adds ×2 per token of one causal forward pass: every Linear in the decoder and the
    LM head, plus attention scores and mixing over the average causal context (seq_len + 1) / 2."""
    import torch

    from studio.models.adapters import adapter_for

    adapter = adapter_for(model)
    layers = adapter.layers(model)
    linear = sum(m.weight.numel() for layer in layers for m in layer.modules()
                 if isinstance(m, torch.nn.Linear))
    linear += model.get_output_embeddings().weight.numel()
    layout = adapter.head_layout(model.config)
    attention = len(layers) * 2 * layout.num_heads * layout.head_dim * (seq_len + 1) / 2
    return 2.0 * (linear + attention)


def interleaved_speed(models: dict, blocks, repeats: int) -> dict:
    """Best-of-`repeats` tokens/s per model, alternating models so load changes hit all alike."""
    from studio.evaluation import forward_tokens_per_second

    best = {name: 0.0 for name in models}
    for _ in range(repeats):
        for name, model in models.items():
            best[name] = max(best[name], forward_tokens_per_second(model, blocks))
    return best


def export_speed(args) -> list[str]:
    import torch
    from transformers import AutoModelForCausalLM

    from studio.data import token_blocks
    from studio.pruning import PruneConfig, apply, save_pruned
    from studio.session import Session

    work = Path(tempfile.mkdtemp(prefix="tailor-speed-"))
    session = Session(work / "ws", device=args.device)
    base = session.load("default")
    blocks = token_blocks(base.tokenizer, WIKI_TEST, 512, args.tokens)
    models = {"base": base.model}
    flops = {"base": forward_flops_per_token(base.model, 512)}
    for name, setting in SPEED_SETTINGS.items():
        config = PruneConfig(calib_source=WIKI_VALID, calib_tokens=args.calib_tokens, **setting)
        pruned = apply(session, config)
        folder = save_pruned(pruned, work / name.replace(" ", "_").replace("%", "").replace("+", ""))
        session.unload("student")
        reloaded = AutoModelForCausalLM.from_pretrained(folder, dtype=base.dtype).to(base.device).eval()
        models[name], flops[name] = reloaded, forward_flops_per_token(reloaded, 512)
    with torch.no_grad():
        speed = interleaved_speed(models, blocks, args.repeats)
    lines = [f"device {base.device}, dtype {base.dtype}; {blocks.numel()} tokens (512-token windows), "
             f"best of {args.repeats} interleaved runs; exported checkpoints re-loaded with "
             "AutoModelForCausalLM.from_pretrained.", "",
             "| model | params | forward tokens/s | speedup | FLOP reduction | speedup / FLOP reduction |",
             "|---|---|---|---|---|---|"]
    from studio.evaluation import parameter_count
    for name, model in models.items():
        speedup = speed[name] / speed["base"]
        reduction = flops["base"] / flops[name]
        ok = "" if name == "base" else (" ✓" if speedup >= SPEED_TARGET * reduction else " ✗")
        lines.append(f"| {name} | {parameter_count(model) / 1e6:.1f}M | {speed[name]:.0f} | "
                     f"{speedup:.2f}× | {reduction:.2f}× | {speedup / reduction:.2f}{ok} |")
    lines.append(f"\n✓/✗: speedup ≥ {SPEED_TARGET} × FLOP reduction (FLOPs: every Linear + LM head + "
                 "causal attention at 512 tokens).")
    return lines


def start_studio(workspace: Path, timeout: float = 300.0):
    import launch

    proc, url, _ = launch.spawn(workspace, timeout=timeout)
    return proc, url


def preview_settings(mlp_ratio: float, reconstruct: bool, tokens: int, calib_tokens: int = 4096) -> list:
    """The 17 settings of /preview_pruning, in components.pruning_logic.SETTINGS order."""
    return [mlp_ratio, 0.0, 0, "per-group", "block_influence", [], "activation", "activation",
            reconstruct, 1, WIKI_VALID, calib_tokens, WIKI_TEST, PUBMEDQA_TEST, True, True, tokens]


FIRST_RATIOS = (0.3, 0.4, 0.25, 0.35, 0.45)  # more settings than the refit cache holds (4)
SETTLE_S = 0.5


def bare_models(ratios, reconstructs) -> tuple[dict, object]:
    """{(ratio, reconstruct): applied (sliced) model} built in this process, and the tokenizer."""
    import copy

    from studio.pruning import PruneConfig, apply
    from studio.session import Session

    session = Session(Path(tempfile.mkdtemp(prefix="tailor-bare-")), device=None)
    base = session.load("default")
    models = {}
    for reconstruct in reconstructs:
        for ratio in ratios:
            pruned = apply(session, PruneConfig(calib_source=WIKI_VALID, calib_tokens=4096,
                                                mlp_ratio=ratio, reconstruct=reconstruct))
            models[ratio, reconstruct] = copy.deepcopy(pruned.model).eval()
            session.unload("student")
    return models, base.tokenizer


def bare_forward_seconds(model, sets) -> float:
    """Seconds of one forward pass of the applied model over both preview sets (as the preview
    batches them: 2 windows at a time)."""
    import torch

    started = time.perf_counter()
    with torch.no_grad():
        for b in sets:
            for i in range(0, b.shape[0], 2):
                model(input_ids=b[i:i + 2], use_cache=False)
    return time.perf_counter() - started


def preview_latency(args) -> list[str]:
    """Each preview is timed right after a bare forward pass of the same applied model in this
    process, so both see the same machine load (this CPU is shared and noisy): the ratio of each
    pair is what counts. First previews cycle through more settings than the refit cache holds,
    so every one is a new setting (plan, refit solve, sliced view)."""
    from gradio_client import Client

    from studio.data import token_blocks

    models, tokenizer = bare_models(FIRST_RATIOS, (True, False))
    block = min(512, args.preview_tokens)
    sets = [token_blocks(tokenizer, s, block, args.preview_tokens) for s in (WIKI_TEST, PUBMEDQA_TEST)]
    work = Path(tempfile.mkdtemp(prefix="tailor-preview-"))
    proc, url = start_studio(work / "workspace")
    pairs = {}  # (reconstruct, kind) -> [(preview s, bare s, engine s)]
    stages = {}  # (reconstruct, kind) -> [engine timings]

    def timed(ratio, reconstruct, kind, calib_tokens=4096):
        time.sleep(SETTLE_S)
        bare = bare_forward_seconds(models[ratio, reconstruct], sets)
        time.sleep(SETTLE_S)  # let this process's spinning OpenMP threads park before the server runs
        started = time.perf_counter()
        out = client.predict(*preview_settings(ratio, reconstruct, args.preview_tokens, calib_tokens),
                             api_name="/preview_pruning")
        kind = f"{kind}, {out['refit']}" if reconstruct else kind
        pairs.setdefault((reconstruct, kind), []).append((time.perf_counter() - started, bare,
                                                          out["seconds"]))
        stages.setdefault((reconstruct, kind), []).append(out["timings"])

    def untimed(api, ratio, reconstruct, calib_tokens=4096):
        client.predict(*preview_settings(ratio, reconstruct, args.preview_tokens, calib_tokens),
                       api_name=api)

    try:
        client = Client(url, verbose=False)
        for reconstruct in (True, False):
            # warm-up: statistics, scores, Gram matrix and baselines are computed once per source
            untimed("/compute_importance", 0.2, reconstruct)
            untimed("/preview_pruning", 0.2, reconstruct)
            if reconstruct:
                # the first preview after computing importance on a new calibration: nothing of
                # that calibration is cached, so its refit is solved from scratch
                for round_, ratio in enumerate(FIRST_RATIOS * args.preview_repeats):
                    calib = 4096 + 512 * (round_ + 1)
                    untimed("/compute_importance", ratio, True, calib)
                    timed(ratio, True, "first", calib)
                untimed("/compute_importance", 0.2, reconstruct)  # back to the main calibration
            for _ in range(args.preview_repeats):
                for ratio in FIRST_RATIOS:  # a slider move to a setting not in the cache
                    timed(ratio, reconstruct, "first")
            for ratio in (0.3, 0.4):  # the same setting again (refit and plan cached)
                untimed("/preview_pruning", ratio, reconstruct)  # into the cache, untimed
                for _ in range(args.preview_repeats):
                    timed(ratio, reconstruct, "repeat")
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
    lines = [f"Preview through gradio_client ({args.preview_tokens} tokens of wikitext-2 test + "
             f"{args.preview_tokens} of PubMedQA test, MLP {', '.join(f'{r:.0%}' for r in FIRST_RATIOS)}), "
             "after /compute_importance; each preview timed right after one bare forward pass of "
             f"the same applied model over the same tokens in the benchmark process "
             f"({args.preview_repeats} rounds). first = a new setting (plan, refit, sliced view); "
             "with the refit, the engine says how it got it: solved = from scratch (the first "
             "preview after computing importance on a new calibration), extended = from the "
             "nearest cached setting of that calibration (the settings cycle through more than "
             "the refit cache holds); repeat = 30% and 40% again (cached).", "",
             "| refit | preview | n | preview median (s) | of which in the engine (s) | bare median (s) "
             "| preview / bare, median | worst |", "|---|---|---|---|---|---|---|---|"]
    for (reconstruct, kind), got in pairs.items():
        ratios = [p / b for p, b, _ in got]
        median = statistics.median(ratios)
        mark = " ✓" if median <= PREVIEW_TARGET else " ✗"
        lines.append(f"| {'on' if reconstruct else 'off'} | {kind} | {len(got)} | "
                     f"{statistics.median(p for p, _, _ in got):.2f} | "
                     f"{statistics.median(e for _, _, e in got):.2f} | "
                     f"{statistics.median(b for _, b, _ in got):.2f} | {median:.2f}{mark} | "
                     f"{max(ratios):.2f} |")
    lines.append(f"\n✓/✗: median of the paired ratios ≤ {PREVIEW_TARGET}.")
    lines.append("\nEngine stages, median seconds (plan: scores, plan and refit; model: sliced view):")
    for (reconstruct, kind), rows in stages.items():
        lines.append(f"- refit {'on' if reconstruct else 'off'}, {kind}: " + ", ".join(
            f"{k} {statistics.median(r[k] for r in rows):.3f}" for k in rows[0]))
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=2048, help="tokens per speed measurement")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--calib-tokens", type=int, default=4096)
    parser.add_argument("--preview-tokens", type=int, default=512)
    parser.add_argument("--preview-repeats", type=int, default=3)
    parser.add_argument("--no-server", action="store_true", help="skip the gradio_client latency part")
    parser.add_argument("--no-export", action="store_true", help="skip the exported-model speed part")
    parser.add_argument("--device", default=None)
    args = parser.parse_args(argv)
    if not args.no_export:
        print("\n".join(export_speed(args)) + "\n")
    if not args.no_server:
        print("\n".join(preview_latency(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
