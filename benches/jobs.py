#!/usr/bin/env python3
"""The job queue end to end, next to RQ on Redis doing the same work on the same machine.

Throughput: JOBS trivial jobs submitted by SUBMITTERS concurrent clients while two workers
take them (cloudx: two Worker pools of 32 handlers each, in one process with the submitters,
on SQLite and on Postgres; RQ: two `rq worker` processes, SimpleWorker and the default forking
Worker, with the jobs enqueued by as many threads). The clock runs from the first submission
until the last job is recorded as finished. Then the submit-to-start latency on an idle
Postgres queue (a worker with its own connection pool waits on LISTEN; its poll is 10 s, so
only NOTIFY can wake it in time).

Needs Postgres (CLOUDX_TEST_POSTGRES_URL, default postgres://postgres@127.0.0.1:5432/postgres)
and Redis (REDIS_URL, default redis://127.0.0.1:6379/15; the database is flushed); RQ is
installed with pip when missing.

Usage: python3 benches/jobs.py [--jobs 20000] [--rq-jobs 3000] [--submitters 64] [--rounds 200]
"""

import argparse
import json
import os
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serve import ROOT, target_dir  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def cloudx(*args):
    out = subprocess.run([os.path.join(target_dir(), "release", "queue-bench"), *map(str, args)],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def rq_throughput(jobs, submitters, worker_class, redis_url):
    from redis import Redis
    from rq import Queue
    from rq.registry import FinishedJobRegistry

    conn = Redis.from_url(redis_url)
    conn.flushdb()
    env = dict(os.environ, PYTHONPATH=os.path.join(HERE, "rq"))
    workers = [subprocess.Popen(["rq", "worker", "--url", redis_url, "--worker-class", worker_class,
                                 "--logging_level", "WARNING", "bench"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(2)]
    try:
        time.sleep(2)  # both workers up and waiting
        queue = Queue("bench", connection=conn)
        finished = FinishedJobRegistry(queue=queue)
        sys.path.insert(0, os.path.join(HERE, "rq"))
        import rq_jobs

        def submit(first):
            q = Queue("bench", connection=Redis.from_url(redis_url))
            for i in range(first, jobs, submitters):
                q.enqueue(rq_jobs.noop, i)

        start = time.perf_counter()
        threads = [threading.Thread(target=submit, args=(s,)) for s in range(submitters)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        while finished.count < jobs:
            time.sleep(0.005)
        elapsed = time.perf_counter() - start
    finally:
        for w in workers:
            w.terminate()
        for w in workers:
            w.wait()
    return jobs / elapsed


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=20000)
    ap.add_argument("--rq-jobs", type=int, default=3000)
    ap.add_argument("--submitters", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=200)
    args = ap.parse_args()
    os.environ.setdefault("CLOUDX_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/postgres")
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/15")
    try:
        import rq  # noqa: F401
    except ImportError:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "rq"], check=True)
    subprocess.run(["cargo", "build", "--release", "--locked", "-p", "cloudx-benches", "--bin", "queue-bench"],
                   cwd=ROOT, check=True)

    rq_simple = rq_throughput(args.rq_jobs, args.submitters, "rq.worker.SimpleWorker", redis_url)
    rq_fork = rq_throughput(min(args.rq_jobs, 1000), args.submitters, "rq.worker.Worker", redis_url)
    sqlite = cloudx("throughput", "sqlite", args.jobs, 2, 32, args.submitters)
    postgres = cloudx("throughput", "postgres", args.jobs, 2, 32, args.submitters)
    latency = cloudx("latency", args.rounds)

    print(f"\nsubmit -> lease -> complete, trivial job, two workers, {args.submitters} submitting clients (jobs/s):")
    print(f"  RQ + Redis, forking Worker   {rq_fork:8.0f}")
    print(f"  RQ + Redis, SimpleWorker     {rq_simple:8.0f}")
    for name, r in [("SQLite", sqlite), ("Postgres", postgres)]:
        print(f"  cloudx on {name:10}         {r['jobs_per_s']:8.0f}  ({r['jobs_per_s'] / rq_simple:.1f}x RQ SimpleWorker;"
              f" {r['jobs']} jobs, submissions alone {r['submit_per_s']:.0f}/s)")
    print(f"\nsubmit-to-start on an idle Postgres queue ({latency['rounds']} jobs, one at a time):"
          f" p50 {latency['p50_ms']:.2f} ms, p90 {latency['p90_ms']:.2f} ms, p99 {latency['p99_ms']:.2f} ms")


if __name__ == "__main__":
    main()
