#!/usr/bin/env python3
"""Launch cost of the sandbox next to a bare fork+exec and bubblewrap, in one run.

Builds `sandbox-bench` in release and runs it: ROUNDS interleaved rounds of each runner for
`/bin/true` and for `python3 -c 'print(1)'`, medians in milliseconds, then 100 sandboxes at
once. bwrap runs with comparable isolation (every namespace, read-only /usr, fresh /proc, /dev
and /tmp, a workspace, no capabilities, a clean environment); it is installed with apt-get for
the benchmark when missing (as root), and only here.

Usage: python3 benches/sandbox.py [--rounds 200]
"""

import argparse
import json
import os
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serve import ROOT, target_dir  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=200)
    args = ap.parse_args()
    if shutil.which("bwrap") is None and os.geteuid() == 0:
        subprocess.run(["apt-get", "install", "-y", "-q", "bubblewrap"], check=False,
                       stdout=subprocess.DEVNULL)
    subprocess.run(["cargo", "build", "--release", "--locked", "-p", "cloudx-benches", "--bin", "sandbox-bench"],
                   cwd=ROOT, check=True)
    out = subprocess.run([os.path.join(target_dir(), "release", "sandbox-bench"), str(args.rounds)],
                         check=True, capture_output=True, text=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"\n{args.rounds} interleaved rounds, medians (ms):")
    for name, label in [("true", "/bin/true"), ("python", "python3 -c 'print(1)'")]:
        w = r[name]
        line = f"  {label:24} bare {w['bare_ms']:6.2f}   cloudx {w['sandbox_ms']:6.2f} ({w['sandbox_ms'] / w['bare_ms']:.2f}x bare)"
        if "bwrap_ms" in w:
            line += f"   bwrap {w['bwrap_ms']:6.2f} (cloudx/bwrap {w['sandbox_ms'] / w['bwrap_ms']:.2f})"
        print(line)
    print(f"  100 sandboxes at once: {r['concurrent_100_ms']:.0f} ms in all")


if __name__ == "__main__":
    main()
