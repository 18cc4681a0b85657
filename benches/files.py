#!/usr/bin/env python3
"""File storage figures of `cloudx serve` on the local backend, each next to its peer, in one run.

  * upload: a 1 GiB file PUT through the daemon (durable: fsynced before the reply), sent with
    sendfile(2) so that the client costs almost no CPU, against `cp` of the same file onto the
    same disk followed by `sync`;
  * download: the same 1 GiB file GET from the daemon, against a bare axum file server
    (tower-http's ServeDir, built with the same release profile) serving the very blob file the
    daemon stored, both from a warm page cache;
  * peak resident memory of the daemon (VmHWM) over all of the above;
  * listing a 10,000-file project through HTTP (`/tree?recursive=true`), median of N requests;
  * load: 64 clients, each uploading a fresh 1 MiB file and downloading it back, for 30 s.

Uploads and `cp` take turns going first; downloads use curl (one process per transfer, its own
timing) and alternate between cloudx and the peer, and the report quotes medians and their ratios.

Usage: python3 benches/files.py [--rounds 9] [--size-mib 1024] [--list-files 10000]
                                [--clients 64] [--load-seconds 30]
"""

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import http.client
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serve import ROOT, free_port, healthz_ok, target_dir  # noqa: E402

PASSWORD = "Bench-Admin-Passphrase-2718"


def build():
    subprocess.run(["cargo", "build", "--release", "--locked", "-p", "cloudx-cli", "-p", "cloudx-benches"],
                   cwd=ROOT, check=True)
    release = os.path.join(target_dir(), "release")
    return (os.path.join(release, "cloudx"), os.path.join(release, "bare-files"),
            os.path.join(release, "files-load"))


def wait_port(port, path="/healthz", limit=20.0):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if path == "/healthz" and healthz_ok(port):
            return
        if path != "/healthz":
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=0.5):
                    return
            except OSError:
                pass
        time.sleep(0.05)
    sys.exit(f"nothing answered on port {port}")


def api(port, method, path, token=None, body=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
    conn.request(method, path, body=data, headers=headers)
    r = conn.getresponse()
    payload = r.read()
    if r.status >= 300:
        sys.exit(f"{method} {path}: {r.status} {payload[:300]!r}")
    return json.loads(payload) if payload else None


def curl(args, body_to="/dev/null"):
    """Runs curl; returns the seconds it reports for the whole transfer."""
    out = subprocess.run(["curl", "-sS", "--fail", "-o", body_to, "-w", "%{time_total}"] + args,
                         check=True, capture_output=True, text=True)
    return float(out.stdout)


def put_sendfile(port, path, token, src):
    """PUTs `src` with the kernel's sendfile: a client that costs almost no CPU, so that the
    daemon, not the client, is what is measured (a real client is on another machine).
    Returns (seconds, the JSON answer)."""
    import socket
    size = os.path.getsize(src)
    head = (f"PUT {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n")
    t = time.monotonic()
    with socket.create_connection(("127.0.0.1", port)) as sock, open(src, "rb") as f:
        sock.sendall(head.encode())
        sock.sendfile(f)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    elapsed = time.monotonic() - t
    status = answer.split(b" ", 2)[1]
    if status != b"200":
        sys.exit(f"PUT {path}: {answer[:300]!r}")
    return elapsed, json.loads(answer.split(b"\r\n\r\n", 1)[1])


def vm_hwm_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--list-files", type=int, default=10000)
    ap.add_argument("--list-requests", type=int, default=50)
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--load-seconds", type=int, default=30)
    args = ap.parse_args()
    cloudx, bare_files, files_load = build()
    size = args.size_mib * 1024 * 1024

    # Everything on one disk: the data folder, the source file, cp's target.
    work = tempfile.mkdtemp(prefix="cloudx-files-bench-", dir=os.environ.get("BENCH_DIR", "/var/tmp"))
    data = os.path.join(work, "data")
    src = os.path.join(work, "source.bin")
    with open(src, "wb") as f:
        chunk = os.urandom(1 << 20)
        for i in range(args.size_mib):
            f.write(i.to_bytes(8, "little") + chunk[8:])
    env = dict(os.environ, CLOUDX_DATA_DIR=data, CLOUDX_HTTP__RATE_LIMIT_PER_IP="0",
               CLOUDX_HTTP__RATE_LIMIT_PER_USER="0", CLOUDX_HTTP__AUTH_RATE_LIMIT_PER_IP="0",
               CLOUDX_STORAGE__PROJECT_QUOTA_BYTES="100GiB", CLOUDX_STORAGE__PROJECT_QUOTA_FILES="1000000")
    subprocess.run([cloudx, "user", "add", "bench@example.com", "--admin", "--password-stdin"],
                   input=PASSWORD + "\n", text=True, env=env, check=True, capture_output=True)
    port, peer_port = free_port(), free_port()
    daemon = subprocess.Popen([cloudx, "serve", "--bind", f"127.0.0.1:{port}"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.makedirs(os.path.join(data, "blobs"), exist_ok=True)
    peer = subprocess.Popen([bare_files, f"127.0.0.1:{peer_port}", os.path.join(data, "blobs")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        time.sleep(0.5)
        token = api(port, "POST", "/api/v1/auth/login",
                    body={"email": "bench@example.com", "password": PASSWORD})["access_token"]
        project = api(port, "POST", "/api/v1/projects", token, {"name": "bench"})["id"]
        auth = ["-H", f"Authorization: Bearer {token}"]
        url = f"http://127.0.0.1:{port}/api/v1/projects/{project}/files/big.bin"

        up_cx, up_cp, down_cx, down_peer = [], [], [], []
        for r in range(args.rounds):
            # A different first byte each round: new content, so nothing is deduplicated.
            with open(src, "r+b") as f:
                f.write(bytes([r + 1]))
            subprocess.run(["sync"], check=True)
            # The two writers take turns going first: the disk's write-back state then favours
            # neither.
            for writer in (["cp", "cloudx"] if r % 2 else ["cloudx", "cp"]):
                if writer == "cp":
                    target = os.path.join(work, "copy.bin")
                    t = time.monotonic()
                    subprocess.run(["cp", src, target], check=True)
                    subprocess.run(["sync"], check=True)
                    up_cp.append(time.monotonic() - t)
                    os.remove(target)
                else:
                    seconds, answer = put_sendfile(port, f"/api/v1/projects/{project}/files/big.bin", token, src)
                    up_cx.append(seconds)
                subprocess.run(["sync"], check=True)
            sha = answer["sha256"]
            blob = f"http://127.0.0.1:{peer_port}/blobs/{sha[:2]}/{sha}"
            curl(auth + [url])  # warms the page cache for both: they read the same file
            if r % 2:
                down_peer.append(curl([blob]))
                down_cx.append(curl(auth + [url]))
            else:
                down_cx.append(curl(auth + [url]))
                down_peer.append(curl([blob]))
        hwm = vm_hwm_kib(daemon.pid)

        # A 10,000-file project, uploaded as one archive, listed through HTTP.
        listed = api(port, "POST", "/api/v1/projects", token, {"name": "many files"})["id"]
        archive = io.BytesIO()
        with tarfile.open(fileobj=archive, mode="w:gz") as tar:
            for i in range(args.list_files):
                content = f"file {i}\n".encode()
                info = tarfile.TarInfo(f"src/pkg{i // 100:03d}/module_{i:05d}.py")
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
        api(port, "POST", f"/api/v1/projects/{listed}/archive", token, archive.getvalue())
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        timings = {}
        middle = f"src/pkg{args.list_files // 200:03d}"
        for name, query in [("recursive", "?recursive=true"), ("root", ""), ("folder", f"?prefix={middle}")]:
            samples = []
            for _ in range(args.list_requests):
                t = time.monotonic()
                conn.request("GET", f"/api/v1/projects/{listed}/tree{query}",
                             headers={"Authorization": f"Bearer {token}"})
                r = conn.getresponse()
                body = r.read()
                samples.append(time.monotonic() - t)
                assert r.status == 200, body[:200]
            timings[name] = (statistics.median(samples), len(json.loads(body)["entries"]))

        load = subprocess.run([files_load, f"http://127.0.0.1:{port}", token, project, str(args.clients),
                               str(args.load_seconds), str(1 << 20)], check=True, capture_output=True, text=True)
        load_stats = json.loads(load.stdout.strip().splitlines()[-1])
        hwm_after_load = vm_hwm_kib(daemon.pid)
    finally:
        for p in (daemon, peer):
            p.terminate()
            p.wait(timeout=30)
        subprocess.run(["rm", "-rf", work])

    mib = args.size_mib
    med = statistics.median
    print(f"\n{args.size_mib} MiB file, {args.rounds} rounds, medians (MiB/s):")
    print(f"  upload   cloudx PUT (fsynced) {mib / med(up_cx):7.0f}   cp + sync     {mib / med(up_cp):7.0f}"
          f"   ratio {med(up_cp) / med(up_cx):.2f} (target >= 0.80)")
    paired = sorted(cp / cx for cp, cx in zip(up_cp, up_cx))
    print(f"           cp + sync per round {' '.join(f'{mib / t:.0f}' for t in up_cp)};"
          f" ratios of a round's pair {paired[0]:.2f}..{paired[-1]:.2f}")
    print(f"  download cloudx GET           {mib / med(down_cx):7.0f}   bare axum     {mib / med(down_peer):7.0f}"
          f"   ratio {med(down_peer) / med(down_cx):.2f} (target >= 0.70)")
    print(f"  daemon peak RSS over uploads and downloads: {hwm / 1024:.1f} MiB (target < 64)")
    print(f"\nlisting a {args.list_files}-file project, median of {args.list_requests} requests:")
    for name, (t, n) in timings.items():
        print(f"  {name:9} {t * 1000:6.1f} ms  ({n} entries)")
    s = load_stats
    print(f"\nload: {s['clients']} clients x {s['seconds']:.0f} s, 1 MiB files, upload then download each:")
    print(f"  errors {s['errors']}; {s['put_per_s']:.0f} uploads/s and {s['get_per_s']:.0f} downloads/s"
          f" ({s['mib_per_s']:.0f} MiB/s in all)")
    print(f"  upload p50 {s['put_p50_ms']:.1f} ms, p99 {s['put_p99_ms']:.1f} ms;"
          f" download p50 {s['get_p50_ms']:.1f} ms, p99 {s['get_p99_ms']:.1f} ms")
    print(f"  daemon peak RSS including the load: {hwm_after_load / 1024:.1f} MiB")


if __name__ == "__main__":
    main()
