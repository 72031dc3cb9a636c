"""Activation statistics benchmark: time and peak extra memory of the dataset statistics (hooks,
running sums) over N tokens of the default model, against a bare forward pass over the same tokens,
in one run. Target: statistics ≤ 1.3× the bare forward time; < 2 GB extra RAM at 16k tokens.

Run: .venv/bin/python benchmarks/bench_activations.py [--tokens 16384] [--device cuda]
"""
import argparse
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


class PeakMemory:
    """Peak extra memory while the block runs: sampled process RSS (CPU) or CUDA peak allocated."""

    def __init__(self, device: torch.device):
        self.device, self.peak, self._stop = device, 0, threading.Event()

    @staticmethod
    def rss() -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) << 10
        return 0

    def _sample(self, base: int) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self.rss() - base)

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        else:
            self._thread = threading.Thread(target=self._sample, args=(self.rss(),), daemon=True)
            self._thread.start()
        self.started, self.cpu_started = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - self._base
        self.seconds = time.perf_counter() - self.started
        self.cpu_seconds = time.process_time() - self.cpu_started  # robust to a busy machine
        if self.device.type != "cuda":
            self._stop.set()
            self._thread.join()


@torch.no_grad()
def bare_forward(module, blocks, batch_size, device) -> None:
    from studio.evaluation import batched

    for _, batch in batched(blocks, batch_size):
        module(input_ids=batch.to(device), use_cache=False)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=16384)
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    from studio.data import token_blocks
    from studio.evaluation import default_batch_size
    from studio.models.loading import load_model
    from studio.stats import collect_stats

    loaded = load_model("default", device=args.device)
    wiki = DATA / "wikitext-2" / "test.txt"
    source = str(wiki) if wiki.exists() else "builtin:python-docs"
    blocks = token_blocks(loaded.tokenizer, source, 512, args.tokens)
    device, model = loaded.device, loaded.model
    batch = default_batch_size(model)
    bare_forward(model, blocks[:batch], batch, device)  # warm-up
    rows = []
    runs = [("bare forward (full model, logits)", lambda: bare_forward(model, blocks, batch, device)),
            ("bare forward (backbone, no LM head)",
             lambda: bare_forward(loaded.adapter.backbone(model), blocks, batch, device)),
            ("dataset statistics (hooks + running sums)", lambda: collect_stats(loaded, blocks, source)),
            ("dataset statistics + down_proj Gram (the Activations job when the Gram is cheap, "
             "so the Pruning refit reuses the pass)",
             lambda: collect_stats(loaded, blocks, source, with_gram=True))]
    for name, fn in runs:
        with PeakMemory(device) as mem:
            fn()
        rows.append((name, mem.seconds, mem.cpu_seconds, mem.peak))
    base, base_cpu = rows[0][1], rows[0][2]
    print(f"device {device}, dtype {loaded.dtype}, {blocks.numel()} tokens of {Path(source).name} "
          f"in {blocks.shape[0]} blocks of 512, batch {batch}\n")
    print("| pass | wall s | tokens/s | × bare (wall) | CPU s | × bare (CPU) | peak extra memory (MiB) |")
    print("|---|---|---|---|---|---|---|")
    for name, seconds, cpu, peak in rows:
        print(f"| {name} | {seconds:.1f} | {blocks.numel() / seconds:.0f} | {seconds / base:.2f} | "
              f"{cpu:.1f} | {cpu / base_cpu:.2f} | {peak / 2**20:.0f} |")
    for label, row in (("statistics", rows[2]), ("statistics + Gram", rows[3])):
        ratio = row[1] / base
        print(f"\n{label} / bare forward = {ratio:.2f}× wall, {row[2] / base_cpu:.2f}× CPU time "
              f"(target ≤ 1.3×): {'met' if ratio <= 1.3 else 'NOT met'}")


if __name__ == "__main__":
    main()
