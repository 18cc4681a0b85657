#!/usr/bin/env python3
"""Concurrent agent chats streaming through `cloudx serve`: how late token deltas reach
WebSocket clients, next to the same model streamed straight to SSE clients, and the daemon's RSS.

Builds in release `cloudx`, `cloudx-scripted-llm` and `agent-load`, then, in one run:
  * starts `cloudx-scripted-llm` (every completion streams TOKENS timestamped tokens
    INTERVAL ms apart, each stamped `t:<nanos>` when sent);
  * baseline: CHATS concurrent streamed completions read straight from it as SSE
    (`agent-load baseline`): the delay of each token from its stamp to its arrival;
  * starts `cloudx serve` on an empty folder with the model at that server, the embedded worker
    at CONCURRENCY, rate limits off; `agent-load daemon` opens CHATS conversations, follows each
    over its WebSocket, posts one message to each and times every `delta` the same way, until
    every task has succeeded. The daemon's VmRSS is sampled every 50 ms meanwhile (and VmHWM,
    the kernel's peak, read at the end).
The added latency is the difference of the percentiles, daemon minus baseline.

Usage: python3 benches/agent.py [--chats 200] [--tokens 50] [--interval-ms 20] [--concurrency 256]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serve import ROOT, free_port, start, stop, target_dir  # noqa: E402


def build():
    subprocess.run(["cargo", "build", "--release", "--locked", "-p", "cloudx-cli", "-p", "cloudx-testkit",
                    "-p", "cloudx-benches", "--bin", "cloudx", "--bin", "cloudx-scripted-llm", "--bin", "agent-load"],
                   cwd=ROOT, check=True)
    release = os.path.join(target_dir(), "release")
    return (os.path.join(release, "cloudx"), os.path.join(release, "cloudx-scripted-llm"),
            os.path.join(release, "agent-load"))


def status_kib(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def load(agent_load, *args):
    out = subprocess.run([agent_load, *map(str, args)], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chats", type=int, default=200)
    ap.add_argument("--tokens", type=int, default=50)
    ap.add_argument("--interval-ms", type=int, default=20)
    ap.add_argument("--concurrency", type=int, default=256)
    args = ap.parse_args()
    cloudx, scripted, agent_load = build()

    llm = subprocess.Popen([scripted, "--tokens", str(args.tokens), "--interval-ms", str(args.interval_ms)],
                           stdout=subprocess.PIPE, text=True)
    try:
        base_url = llm.stdout.readline().strip()
        if not base_url.startswith("http://"):
            sys.exit(f"cloudx-scripted-llm printed {base_url!r}, not its base URL")
        baseline = load(agent_load, "baseline", base_url, args.chats)

        with tempfile.TemporaryDirectory() as folder:
            port = free_port()
            env = {
                "PATH": os.environ["PATH"],
                "CLOUDX_LLM__BASE_URL": base_url,
                "CLOUDX_LLM__MODEL": "scripted-model",
                "CLOUDX_LLM__API_KEY": "sk-bench",
                "CLOUDX_WORKER__CONCURRENCY": str(args.concurrency),
                "CLOUDX_HTTP__RATE_LIMIT_PER_IP": "0",
                "CLOUDX_HTTP__RATE_LIMIT_PER_USER": "0",
            }
            daemon, _ = start([cloudx, "serve", "--bind", f"127.0.0.1:{port}"], port, folder, env)
            samples, done = [], threading.Event()

            def sample():
                while not done.is_set():
                    samples.append(status_kib(daemon.pid, "VmRSS"))
                    time.sleep(0.05)

            sampler = threading.Thread(target=sample)
            sampler.start()
            try:
                idle_mib = status_kib(daemon.pid, "VmRSS") / 1024
                through = load(agent_load, "daemon", f"http://127.0.0.1:{port}", args.chats)
            finally:
                done.set()
                sampler.join()
                hwm_mib = status_kib(daemon.pid, "VmHWM") / 1024
                stop(daemon)
    finally:
        llm.terminate()
        llm.wait()

    b, d = baseline["deltas"], through["deltas"]
    print(f"\n{args.chats} chats at once, {args.tokens} tokens {args.interval_ms} ms apart each"
          f" (worker concurrency {args.concurrency}); token send stamp -> arrival, ms:")
    print("| path | tokens timed | p50 | p90 | p99 | max |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in (("model -> SSE client (baseline)", b), ("model -> cloudx serve -> WebSocket", d)):
        print(f"| {name} | {r['count']:,} | {r['p50_ms']:.2f} | {r['p90_ms']:.2f} | {r['p99_ms']:.2f} | {r['max_ms']:.2f} |")
    print(f"| added by cloudx | | {d['p50_ms'] - b['p50_ms']:.2f} | {d['p90_ms'] - b['p90_ms']:.2f}"
          f" | {d['p99_ms'] - b['p99_ms']:.2f} | |")
    print(f"\ntasks: {through['statuses']} in {through['seconds']:.1f} s (posting took {through['posting_seconds']:.2f} s)")
    print(f"daemon RSS: idle {idle_mib:.1f} MiB, peak sampled {max(samples, default=0) / 1024:.1f} MiB,"
          f" VmHWM {hwm_mib:.1f} MiB")
    expected = args.chats * args.tokens
    if d["count"] != expected or through["statuses"] != {"succeeded": args.chats}:
        sys.exit(f"incomplete: {d['count']} of {expected} tokens timed, statuses {through['statuses']}")


if __name__ == "__main__":
    main()
