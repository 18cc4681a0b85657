#!/usr/bin/env python3
"""The Python extension against the Rust API, embedded, in one run.

Builds the release wheel (maturin) into a virtualenv beside cargo's target folder, and the
`embedded-baseline` binary, then alternates them ROUNDS times, each on a fresh data folder:
  - a scratch sandboxed run of `true`: `cx.run(["true"])` against `Sandbox::exec` (median ms),
    RUNS back to back (each run's sandbox launched ahead is replaced in the background, beside
    the next runs), then RUNS/4 one at a time, 50 ms apart (the sandboxes launched ahead are
    ready again, as when runs are typed in a notebook);
  - writing and reading a 100 MiB file: `cx.files.write` / `cx.files.read` against
    `Storage::put_file` / `open_file` (median MiB/s, different content each time; the read timed
    is the second, as the first comes from the disk, whose speed varies most on a VM);
  - a run of `true` with 200 MiB more resident in the process (a sandbox is forked from it).
Prints both sides' medians (of the rounds' medians) and their ratios.

Usage: python3 benches/python.py [--rounds 3] [--runs 200] [--mib 100]
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serve import ROOT, target_dir  # noqa: E402

PYTHON_SIDE = r"""
import json, sys, time, statistics, cloudx
data_dir, runs, mib = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
cx = cloudx.open(data_dir, worker=False)
times = []
for i in range(runs + 10):
    began = time.perf_counter()
    r = cx.run(["true"])
    assert r.ok
    if i >= 10:
        times.append((time.perf_counter() - began) * 1000)
single, inside = [], []
for i in range(runs // 4):  # one at a time, as typed in a notebook: the warm pool is ready again
    time.sleep(0.05)
    began = time.perf_counter()
    r = cx.run(["true"])
    single.append((time.perf_counter() - began) * 1000)
    assert r.ok
    inside.append(r.wall_time.total_seconds() * 1000)
cx.users.create("bench@example.com", "correct horse battery staple", role="admin")
p = cx.projects.create("bench", owner="bench@example.com")
size = mib << 20
writes, reads = [], []
for round in range(5):
    content = bytes([(round * 37 + 1) % 256]) * size
    began = time.perf_counter()
    cx.files.write(p, "big.bin", content)
    writes.append(mib / (time.perf_counter() - began))
    del content
    for timed in (False, True):  # the first read is from the disk, untimed (as in Rust)
        began = time.perf_counter()
        read = cx.files.read(p, "big.bin")
        if timed:
            reads.append(mib / (time.perf_counter() - began))
        assert len(read) == size
        del read
ballast = bytearray(b"\x01") * (200 << 20)
heavy = []
for i in range(runs // 4):
    began = time.perf_counter()
    assert cx.run(["true"]).ok
    heavy.append((time.perf_counter() - began) * 1000)
del ballast
cx.close()
print(json.dumps({"true_ms": statistics.median(times), "true_single_ms": statistics.median(single),
                  "true_single_wall_ms": statistics.median(inside),
                  "true_200mib_ms": statistics.median(heavy),
                  "write_mib_s": statistics.median(writes), "read_mib_s": statistics.median(reads)}))
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--mib", type=int, default=100)
    args = ap.parse_args()
    target = target_dir()
    venv = os.path.join(target, "py-bench-venv")
    if not os.path.exists(os.path.join(venv, "bin", "python")):
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    python = os.path.join(venv, "bin", "python")
    subprocess.run([python, "-m", "pip", "install", "--quiet", "maturin>=1.9,<2"], check=True)
    subprocess.run(["cargo", "build", "--release", "--locked", "-p", "cloudx-benches", "--bin", "embedded-baseline"],
                   cwd=ROOT, check=True)
    wheels = os.path.join(target, "wheels-release")
    shutil.rmtree(wheels, ignore_errors=True)
    subprocess.run([os.path.join(venv, "bin", "maturin"), "build", "--release", "--locked", "-m", "cloudx-py/Cargo.toml",
                    "-o", wheels, "--interpreter", python], cwd=ROOT, check=True)
    [wheel] = [os.path.join(wheels, w) for w in os.listdir(wheels) if w.endswith(".whl")]
    subprocess.run([python, "-m", "pip", "install", "--quiet", "--force-reinstall", "--no-deps", wheel], check=True)
    baseline = os.path.join(target, "release", "embedded-baseline")
    sides = {"rust": [], "python": []}
    for _ in range(args.rounds):
        for side in ("rust", "python"):
            with tempfile.TemporaryDirectory(prefix="cloudx-bench-") as tmp:
                data = os.path.join(tmp, "data")
                argv = ([baseline] if side == "rust" else [python, "-c", PYTHON_SIDE]) + [data, str(args.runs), str(args.mib)]
                out = subprocess.run(argv, capture_output=True, text=True, cwd=tmp)
                if out.returncode != 0:
                    sys.exit(f"the {side} side failed (exit {out.returncode}):\n{out.stderr}")
                sides[side].append(json.loads(out.stdout.strip().splitlines()[-1]))
    med = {s: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for s, rs in sides.items()}
    rust, py = med["rust"], med["python"]
    print(f"\n{args.rounds} alternating rounds; medians:")
    print(f"  run, one at a time  Rust {rust['true_single_ms']:7.2f} ms   Python {py['true_single_ms']:7.2f} ms"
          f"   Python/Rust {py['true_single_ms'] / rust['true_single_ms']:.3f}")
    print(f"    the sandbox's own wall_time  {rust['true_single_wall_ms']:5.2f} ms          {py['true_single_wall_ms']:5.2f} ms"
          f"   Python/Rust {py['true_single_wall_ms'] / rust['true_single_wall_ms']:.3f}")
    print(f"  run, back to back   Rust {rust['true_ms']:7.2f} ms   Python {py['true_ms']:7.2f} ms"
          f"   Python/Rust {py['true_ms'] / rust['true_ms']:.3f}")
    print(f"  run, 200 MiB more   Rust {rust['true_200mib_ms']:7.2f} ms   Python {py['true_200mib_ms']:7.2f} ms"
          f"   Python/Rust {py['true_200mib_ms'] / rust['true_200mib_ms']:.3f}")
    print(f"  write {args.mib} MiB       Rust {rust['write_mib_s']:7.0f} MiB/s Python {py['write_mib_s']:7.0f} MiB/s"
          f" Python/Rust {py['write_mib_s'] / rust['write_mib_s']:.3f}")
    print(f"  read {args.mib} MiB        Rust {rust['read_mib_s']:7.0f} MiB/s Python {py['read_mib_s']:7.0f} MiB/s"
          f" Python/Rust {py['read_mib_s'] / rust['read_mib_s']:.3f}")


if __name__ == "__main__":
    main()
