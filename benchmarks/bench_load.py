"""Load: four gradio_client clients at once on one studio (issue 6).

Starts launch.py (default model) on a free port, computes for every pruning setting the answer it
must get (params, perplexity) with one serial preview each, then runs N clients in threads for
--seconds: each cycles through its own share of the settings, calling /preview_pruning and
/session_status. Checks: no error, every preview answer matches the setting asked for (params
equal, perplexity within --ppl-rtol: no cross-talk between clients), the server's RSS (from /proc)
stays bounded: after the first round (all clients through all their settings once), the peak of
the run's second half is no higher than that of its first half. Prints preview
latency percentiles as a markdown table; exit status 1 when a check fails.

    .venv/bin/python benchmarks/bench_load.py [--seconds 60 --clients 4 --preview-tokens 128]
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
BUILTIN = "builtin:python-docs"
# (mlp fraction, query-head fraction): the settings the clients move between
SETTINGS = [(0.0, 0.0), (0.1, 0.0), (0.2, 0.0), (0.3, 0.0), (0.5, 0.0), (0.2, 0.25), (0.0, 0.5),
            (0.4, 0.25)]


def start_studio(workspace: Path, timeout: float = 600.0):
    import launch

    return launch.spawn(workspace, timeout=timeout)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


class Load:
    """Shared results of the client threads."""

    def __init__(self, args, expected: dict, base_params: int):
        self.args, self.expected, self.base_params = args, expected, base_params
        self.lock = threading.Lock()
        self.latencies: dict[int, list[float]] = {}
        self.status_latencies: list[float] = []
        self.errors: list[str] = []
        self.mismatches: list[str] = []
        self.rounds: dict[int, int] = {}
        self.round_ends: list[float] = []  # when every client had finished round k+1

    def fast(self) -> dict:
        return dict(calib_tokens=self.args.calib_tokens, calib_source=BUILTIN,
                    preview_tokens=self.args.preview_tokens, general_source=BUILTIN,
                    use_domain=False)

    def client_loop(self, index: int, url: str, stop_at: float) -> None:
        from gradio_client import Client

        client = Client(url, verbose=False)
        order = SETTINGS[index::self.args.clients] or SETTINGS  # each client its own settings
        done, lat = 0, []
        while time.time() < stop_at:
            mlp, heads = order[done % len(order)]
            started = time.time()
            try:
                result = client.predict(mlp, heads, 0, **self.fast(), api_name="/preview_pruning")
                lat.append(time.time() - started)
                self.check(index, (mlp, heads), result)
                s0 = time.time()
                status = client.predict(api_name="/session_status")
                with self.lock:
                    self.status_latencies.append(time.time() - s0)
                base = status.get("models", {}).get("base", {})
                if base.get("params") != self.base_params:
                    self.fail(self.mismatches, f"client {index}: /session_status base params "
                                               f"{base.get('params')} != {self.base_params}")
            except Exception as exc:  # noqa: BLE001 - every failure is a finding of the benchmark
                self.fail(self.errors, f"client {index} at {(mlp, heads)}: {type(exc).__name__}: "
                                       f"{str(exc)[:200]}")
            done += 1
            if done % len(order) == 0:  # a round: this client went through its settings
                with self.lock:
                    self.rounds[index] = done // len(order)
                    rounds = min(self.rounds.values()) if len(self.rounds) == self.args.clients else 0
                    if rounds > len(self.round_ends):  # every client finished this round
                        self.round_ends.append(time.time())
        with self.lock:
            self.latencies[index] = lat

    def check(self, index: int, setting: tuple, result: dict) -> None:
        want = self.expected[setting]
        ppl = result["perplexity"]["general"]
        if result["params"] != want["params"]:
            self.fail(self.mismatches, f"client {index} asked {setting}: params {result['params']} "
                                       f"!= expected {want['params']}")
        if abs(ppl - want["ppl"]) > self.args.ppl_rtol * want["ppl"]:
            self.fail(self.mismatches, f"client {index} asked {setting}: perplexity {ppl:.4f} "
                                       f"!= expected {want['ppl']:.4f}")

    def fail(self, where: list, message: str) -> None:
        with self.lock:
            where.append(message)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--preview-tokens", type=int, default=128)
    parser.add_argument("--calib-tokens", type=int, default=512)
    parser.add_argument("--ppl-rtol", type=float, default=1e-3,
                        help="relative perplexity tolerance for 'same answer as alone'")
    parser.add_argument("--rss-slack-mib", type=float, default=64.0,
                        help="allowed RSS above the end-of-first-round peak")
    parser.add_argument("--url", default="", help="use a running studio instead of starting one "
                                                  "(RSS is then not measured)")
    args = parser.parse_args()

    from gradio_client import Client

    tmp = Path(tempfile.mkdtemp(prefix="bench-load-"))
    proc = None
    try:
        if args.url:
            url = args.url
        else:
            t0 = time.time()
            proc, url, _ = start_studio(tmp / "workspace")
            print(f"studio up at {url} in {time.time() - t0:.0f}s", flush=True)
        client = Client(url, verbose=False)
        client.predict(api_name="/discard_student")
        base_params = client.predict(api_name="/session_status")["models"]["base"]["params"]

        load = Load(args, {}, base_params)
        t0 = time.time()
        for setting in SETTINGS:  # the answers every client must get, one serial call each
            result = client.predict(*setting, 0, **load.fast(), api_name="/preview_pruning")
            load.expected[setting] = {"params": result["params"],
                                      "ppl": result["perplexity"]["general"]}
        print(f"expected answers for {len(SETTINGS)} settings in {time.time() - t0:.1f}s", flush=True)
        assert len({e["params"] for e in load.expected.values()}) > 1, "settings must differ in size"

        rss: list[tuple[float, float]] = []
        stop_at = time.time() + args.seconds
        threads = [threading.Thread(target=load.client_loop, args=(i, url, stop_at), daemon=True)
                   for i in range(args.clients)]
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            if proc is not None:
                rss.append((time.time(), rss_mib(proc.pid)))
            time.sleep(0.5)
        return report(args, load, rss)
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)


def report(args, load: Load, rss: list[tuple[float, float]]) -> int:
    ok = True
    all_lat = [x for lat in load.latencies.values() for x in lat]
    print(f"\n### Load: {args.clients} clients × {args.seconds:.0f}s, /preview_pruning "
          f"({args.preview_tokens} preview tokens, {len(SETTINGS)} settings) + /session_status\n")
    print("| client | previews | p50 s | p90 s | p99 s | max s |")
    print("|---|---|---|---|---|---|")
    for index in sorted(load.latencies):
        lat = load.latencies[index]
        print(f"| {index} | {len(lat)} | {percentile(lat, .5):.2f} | {percentile(lat, .9):.2f} | "
              f"{percentile(lat, .99):.2f} | {max(lat, default=float('nan')):.2f} |")
    print(f"| all | {len(all_lat)} | {percentile(all_lat, .5):.2f} | {percentile(all_lat, .9):.2f} | "
          f"{percentile(all_lat, .99):.2f} | {max(all_lat, default=float('nan')):.2f} |")
    st = load.status_latencies
    print(f"\n/session_status: {len(st)} calls, p50 {percentile(st, .5):.3f}s, "
          f"p99 {percentile(st, .99):.3f}s")
    print(f"errors: {len(load.errors)}; answers not matching their setting: {len(load.mismatches)}")
    for line in (load.errors + load.mismatches)[:10]:
        print(f"  - {line}")
    ok &= not load.errors and not load.mismatches and len(all_lat) > 0
    if rss:
        start = rss[0][1]
        ends = load.round_ends
        if ends:
            print("RSS at the end of each round (MiB): " + ", ".join(
                f"{max(r for t, r in rss if t <= end):.0f}" for end in ends))
        if not ends:
            print(f"RSS: {start:.0f} → {rss[-1][1]:.0f} MiB (peak {max(r for _, r in rss):.0f}); "
                  "not every client finished a first round: raise --seconds to judge growth")
            ok = False
        else:
            first = max(r for t, r in rss if t <= ends[0])
            after = [r for t, r in rss if t > ends[0]] or [first]
            print(f"RSS: start {start:.0f} MiB, peak by end of first round {first:.0f} MiB, "
                  f"peak after {max(after):.0f} MiB, end {rss[-1][1]:.0f} MiB; "
                  f"after the first round: {'no growth' if max(after) <= first + args.rss_slack_mib else 'higher peaks'}")
            # The leak check: a preview holds one sliced view of its setting's size and the refit
            # cache holds the 4 latest settings, so the peak rises until the largest combination
            # has occurred, then stays. A leak keeps rising: compare the two halves after round 1.
            middle = ends[0] + (rss[-1][0] - ends[0]) / 2
            early = [r for t, r in rss if ends[0] < t <= middle] or [first]
            late = [r for t, r in rss if t > middle] or early
            bounded = max(late) <= max(early) + args.rss_slack_mib
            print(f"RSS peak after round 1, first half {max(early):.0f} MiB, second half "
                  f"{max(late):.0f} MiB: {'bounded' if bounded else 'GROWING'} "
                  f"(slack {args.rss_slack_mib:.0f} MiB)")
            ok &= bounded
    print("\nRESULT:", "PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
