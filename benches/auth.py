#!/usr/bin/env python3
"""Authenticated requests through `cloudx serve`, next to /healthz of the same daemon.

In one run, against one daemon (release build, embedded SQLite, rate limits off so that the
limiter does not decide the figure):
  * throughput of `GET /api/v1/auth/me` with a bearer access token (token check, revocation
    set, the account from the one-second account cache), with an API key (one database read for
    the key), and of `GET /healthz`, alternating, R rounds each, `wrk -t2 -c64`; medians and the
    ratio of the access-token figure to /healthz;
  * `/healthz` latency while 64 clients sign in at once, over and over, each as one of 64
    accounts (`POST /api/v1/auth/login`: argon2id on the blocking pool, a session and an audit
    row written; one account each, because parallel sign-ins to one account are throttled):
    p50/p99 of /healthz meanwhile, next to its p50/p99 with no logins.

Usage: python3 benches/auth.py [--rounds 5] [--duration 8]
Needs wrk (installed with apt-get when missing and running as root).
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serve import build, ensure_wrk, free_port, start, stop, cpu_seconds  # noqa: E402

EMAIL = "bench@example.com"
PASSWORD = "Bench-Passphrase-4242"
NO_LIMITS = {
    "CLOUDX_HTTP__RATE_LIMIT_PER_IP": "0",
    "CLOUDX_HTTP__RATE_LIMIT_PER_USER": "0",
    "CLOUDX_HTTP__AUTH_RATE_LIMIT_PER_IP": "0",
}


def wrk(url, duration, connections, threads=2, script=None, pid=None):
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency"]
    if script:
        cmd += ["-s", script]
    before = cpu_seconds(pid) if pid else 0.0
    out = subprocess.run(cmd + [url], check=True, capture_output=True, text=True).stdout
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        sys.exit(f"wrk saw {errors.group(1)} error responses for {url}:\n{out}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    cpu_us = (cpu_seconds(pid) - before) * 1e6 / requests if pid else 0.0

    def pct(p):
        m = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)\b", out)
        value, unit = float(m.group(1)), m.group(2)
        return value * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    return {"rps": rps, "cpu_us": cpu_us, "p50": pct(50), "p99": pct(99), "requests": requests}


def write_lua(folder, name, text):
    path = os.path.join(folder, name)
    with open(path, "w") as f:
        f.write(text)
    return path


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=int, default=8)
    parser.add_argument("--connections", type=int, default=64)
    args = parser.parse_args()
    cloudx, _ = build()
    ensure_wrk()

    with tempfile.TemporaryDirectory() as folder:
        env = {"PATH": os.environ["PATH"], **NO_LIMITS}
        add = subprocess.run([cloudx, "user", "add", EMAIL, "--admin", "--password-stdin"], cwd=folder, env=env,
                             input=PASSWORD + "\n", capture_output=True, text=True)
        if add.returncode != 0:
            sys.exit(f"cloudx user add failed: {add.stderr}")
        # The accounts the sign-in storm uses, made through the API (one argon2 hash each).
        port = free_port()
        daemon, _ = start([cloudx, "serve", "--bind", f"127.0.0.1:{port}"], port, folder, env)
        base = f"http://127.0.0.1:{port}"
        request = urllib.request.Request(f"{base}/api/v1/auth/login", method="POST",
                                         data=json.dumps({"email": EMAIL, "password": PASSWORD}).encode(),
                                         headers={"Content-Type": "application/json"})
        access = json.load(urllib.request.urlopen(request))["access_token"]
        for n in range(64):
            body = json.dumps({"email": f"storm{n}@example.com", "password": PASSWORD, "display_name": f"Storm {n}"})
            add = urllib.request.Request(f"{base}/api/v1/users", method="POST", data=body.encode(),
                                         headers={"Content-Type": "application/json",
                                                  "Authorization": f"Bearer {access}"})
            urllib.request.urlopen(add).read()
        me_lua = write_lua(folder, "me.lua", f'wrk.headers["Authorization"] = "Bearer {access}"\n')
        create_key = urllib.request.Request(f"{base}/api/v1/api-keys", method="POST",
                                            data=json.dumps({"name": "bench", "scopes": ["read"]}).encode(),
                                            headers={"Content-Type": "application/json",
                                                     "Authorization": f"Bearer {access}"})
        key = json.load(urllib.request.urlopen(create_key))["secret"]
        key_lua = write_lua(folder, "key.lua", f'wrk.headers["Authorization"] = "Bearer {key}"\n')
        login_lua = write_lua(folder, "login.lua", (
            'counter = 0\n'
            'request = function()\n'
            '  counter = counter + 1\n'
            f'  local body = string.format(\'{{"email": "storm%d@example.com", "password": "{PASSWORD}"}}\', counter % 64)\n'
            '  return wrk.format("POST", "/api/v1/auth/login", {["Content-Type"] = "application/json"}, body)\n'
            'end\n'))

        # 1. Authenticated GET next to /healthz, alternating.
        wrk(f"{base}/healthz", 2, args.connections)
        wrk(f"{base}/api/v1/auth/me", 2, args.connections, script=me_lua)
        health_runs, me_runs, key_runs = [], [], []
        for _ in range(args.rounds):
            health_runs.append(wrk(f"{base}/healthz", args.duration, args.connections, pid=daemon.pid))
            me_runs.append(wrk(f"{base}/api/v1/auth/me", args.duration, args.connections, script=me_lua,
                               pid=daemon.pid))
            key_runs.append(wrk(f"{base}/api/v1/auth/me", args.duration, args.connections, script=key_lua,
                                pid=daemon.pid))

        # 2. /healthz latency with and without 64 clients signing in.
        quiet = [wrk(f"{base}/healthz", args.duration, 4, threads=1) for _ in range(3)]
        busy, logins = [], []
        for _ in range(3):
            result = {}
            storm = threading.Thread(target=lambda: result.update(
                wrk(f"{base}/api/v1/auth/login", args.duration + 2, 64, threads=1, script=login_lua)))
            storm.start()
            busy.append(wrk(f"{base}/healthz", args.duration, 4, threads=1))
            storm.join()
            logins.append(result)
        stop(daemon)

    def med(runs, key):
        return statistics.median(r[key] for r in runs)

    def joined(runs, key, fmt):
        return ", ".join(format(r[key], fmt) for r in runs)

    print(f"\nthroughput, wrk -t2 -c{args.connections} -d{args.duration}s, {args.rounds} alternating rounds:")
    print("| request | requests/s (median) | server CPU µs/request (median) | runs (req/s) |")
    print("|---|---|---|---|")
    for name, runs in (("GET /healthz", health_runs), ("GET /api/v1/auth/me (access token)", me_runs),
                       ("GET /api/v1/auth/me (API key)", key_runs)):
        print(f"| {name} | {med(runs, 'rps'):,.0f} | {med(runs, 'cpu_us'):.1f} | {joined(runs, 'rps', ',.0f')} |")
    print(f"\nauthenticated GET / healthz throughput: {med(me_runs, 'rps') / med(health_runs, 'rps'):.2f}")
    print(f"\n/healthz latency, wrk -t1 -c4 -d{args.duration}s, 3 runs each:")
    print("| while | p50 (median) | p99 (median) | p99 per run (ms) | logins/s (median) |")
    print("|---|---|---|---|---|")
    print(f"| nothing else | {med(quiet, 'p50'):.2f} ms | {med(quiet, 'p99'):.2f} ms | {joined(quiet, 'p99', '.2f')} | - |")
    print(f"| 64 clients sign in | {med(busy, 'p50'):.2f} ms | {med(busy, 'p99'):.2f} ms | {joined(busy, 'p99', '.2f')} "
          f"| {med(logins, 'rps'):.1f} |")


if __name__ == "__main__":
    main()
