#!/usr/bin/env python3
"""Startup time, idle memory and /healthz throughput of `cloudx serve`, next to a bare axum peer.

Builds both in release, then, in one run:
  * starts `cloudx serve` on an empty folder N times: time from spawn to the first 200 from
    /healthz, and resident memory (VmRSS) once idle;
  * runs wrk against cloudx's /healthz and the bare axum hello-world alternately, R rounds each,
    and reports the medians and their ratio.

Usage: python3 benches/serve.py [--starts 20] [--rounds 3] [--duration 10] [--connections 64]
Needs wrk (installed with apt-get when missing and running as root).
"""

import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def target_dir():
    return os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))


def build():
    subprocess.run(["cargo", "build", "--release", "--locked", "-p", "cloudx-cli", "-p", "cloudx-benches"],
                   cwd=ROOT, check=True)
    release = os.path.join(target_dir(), "release")
    return os.path.join(release, "cloudx"), os.path.join(release, "bare-axum")


def ensure_wrk():
    if shutil.which("wrk"):
        return
    if os.geteuid() != 0:
        sys.exit("wrk is not installed: apt-get install wrk")
    subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], check=True, stdout=subprocess.DEVNULL)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def healthz_ok(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            return s.recv(16).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def start(cmd, port, cwd, env=None):
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env or {"PATH": os.environ["PATH"]})
    started = time.perf_counter()
    while not healthz_ok(port):
        if proc.poll() is not None:
            sys.exit(f"{cmd[0]} exited with {proc.returncode}")
        if time.perf_counter() - started > 30:
            proc.kill()
            sys.exit(f"{cmd[0]} did not answer within 30 s")
        time.sleep(0.001)
    return proc, time.perf_counter() - started


def stop(proc):
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk(port, duration, connections, pid=None):
    before = cpu_seconds(pid) if pid else 0.0
    out = subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{duration}s", "--latency",
                          f"http://127.0.0.1:{port}/healthz"], check=True, capture_output=True, text=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p99 = re.search(r"99%\s+([\d.]+)(\w+)", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        sys.exit(f"wrk saw {errors.group(1)} error responses")
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    cpu_us = (cpu_seconds(pid) - before) * 1e6 / requests if pid else 0.0
    return rps, f"{p99.group(1)}{p99.group(2)}", cpu_us


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--starts", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64)
    args = parser.parse_args()
    cloudx, bare = build()
    ensure_wrk()

    ready, idle = [], []
    for _ in range(args.starts):
        with tempfile.TemporaryDirectory() as folder:
            port = free_port()
            proc, elapsed = start([cloudx, "serve", "--bind", f"127.0.0.1:{port}"], port, folder)
            ready.append(elapsed * 1000)
            time.sleep(0.5)
            idle.append(rss_kib(proc.pid) / 1024)
            stop(proc)

    with tempfile.TemporaryDirectory() as folder:
        cx_port, bare_port = free_port(), free_port()
        cx, _ = start([cloudx, "serve", "--bind", f"127.0.0.1:{cx_port}"], cx_port, folder)
        peer, _ = start([bare, f"127.0.0.1:{bare_port}"], bare_port, folder)
        wrk(cx_port, 2, args.connections)  # warm-up
        wrk(bare_port, 2, args.connections)
        cx_runs, bare_runs = [], []
        for _ in range(args.rounds):
            cx_runs.append(wrk(cx_port, args.duration, args.connections, cx.pid))
            bare_runs.append(wrk(bare_port, args.duration, args.connections, peer.pid))
        loaded_rss = rss_kib(cx.pid) / 1024
        stop(cx)
        stop(peer)

    cx_rps = statistics.median(r for r, _, _ in cx_runs)
    bare_rps = statistics.median(r for r, _, _ in bare_runs)
    cx_cpu = statistics.median(c for _, _, c in cx_runs)
    bare_cpu = statistics.median(c for _, _, c in bare_runs)
    print(f"\ncloudx serve, {args.starts} starts on an empty folder:")
    print(f"  ready (spawn to first /healthz 200): median {statistics.median(ready):.1f} ms, max {max(ready):.1f} ms")
    print(f"  idle RSS: median {statistics.median(idle):.1f} MiB, max {max(idle):.1f} MiB")
    print(f"\n/healthz, wrk -t2 -c{args.connections} -d{args.duration}s, {args.rounds} alternating rounds:")
    print("| server | requests/s (median) | server CPU µs/request (median) | runs (req/s) | p99 per run |")
    print("|---|---|---|---|---|")
    for name, rps, cpu, runs in (("cloudx serve", cx_rps, cx_cpu, cx_runs), ("bare axum", bare_rps, bare_cpu, bare_runs)):
        print(f"| {name} | {rps:,.0f} | {cpu:.1f} | {', '.join(f'{r:,.0f}' for r, _, _ in runs)} | {', '.join(p for _, p, _ in runs)} |")
    print(f"\nthroughput ratio cloudx / bare axum: {cx_rps / bare_rps:.2f}; CPU per request ratio: {cx_cpu / bare_cpu:.2f}")
    print(f"cloudx RSS after the load: {loaded_rss:.1f} MiB")


if __name__ == "__main__":
    main()
