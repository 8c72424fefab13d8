#!/usr/bin/env python3
"""Background jobs: durable accepts against the same route synchronous, and
delivery throughput, in one interleaved run.

One nginx backend (1 worker, a small fixed answer) and fngate (workers = 1,
the embedded SQLite store in a temporary directory) on loopback. Each round
loads `POST /sync` (forwarded, the client waits) and `POST /async` (a job:
committed and fsync'd before its 202, group commit) with wrk -t1 at the same
connection count, then waits until every job accepted in that round has been
delivered, and reports: req/s and p99 of both, the ratio, and jobs delivered
per second end to end (accepted in the round / (load time + time to drain)).

    python3 bench/jobs.py                 # 3 rounds x 64 connections x 5 s
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402

POST_LUA = 'wrk.method = "POST"\nwrk.body = "{\\"picture\\":\\"cat.jpg\\"}"\nwrk.headers["content-type"] = "application/json"\n'


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--conns", type=int, default=64)
    ap.add_argument("--no-build", action="store_true")
    args = ap.parse_args()
    run.ensure_tools()
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=run.ROOT, check=True)
    work = tempfile.mkdtemp(prefix="fngate-jobs-", dir=os.environ.get("BENCH_DIR", "/var/tmp"))
    backend, port, admin = (run.free_port() for _ in range(3))
    lua = os.path.join(work, "post.lua")
    with open(lua, "w") as f:
        f.write(POST_LUA)
    procs = []
    results = {}
    try:
        procs.append(run.start_nginx(work, "backend", "  server { listen 127.0.0.1:%d; location / { return 200 '{\"thumbnail\":\"ok\"}\\n'; } }" % backend))
        procs.append(run.start_fngate(work, port, admin,
                                      '[backends.fn]\nurls = ["http://127.0.0.1:%d"]\n'
                                      '[[routes]]\nname = "sync"\npath = "/sync"\nbackend = "fn"\n'
                                      '[[routes]]\nname = "async"\npath = "/async"\nbackend = "fn"\ninvoke = "async"\n'
                                      '[routes.delivery]\nconcurrency = 64\n' % backend))
        run.wait_port(backend)
        for rnd in range(args.rounds):
            for name in ("sync", "async"):
                before = run.counter(admin, "jobs", "route", "async", "accepted")
                started = time.monotonic()
                cmd = ["wrk", "-t1", f"-c{args.conns}", f"-d{args.duration}s", "--latency", "-s", lua,
                       f"http://127.0.0.1:{port}/{name}"]
                r = run.parse_wrk(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
                if name == "async":
                    accepted = run.counter(admin, "jobs", "route", "async", "accepted") - before
                    deadline = time.monotonic() + 300
                    while run.counter(admin, "jobs", "route", "async", "succeeded") < run.counter(admin, "jobs", "route", "async", "accepted"):
                        if time.monotonic() > deadline:
                            sys.exit("jobs were not delivered within 300 s")
                        time.sleep(0.05)
                    r["jobs_s"] = accepted / (time.monotonic() - started)
                    r["accepted"] = accepted
                results.setdefault(name, []).append(r)
                extra = f"  delivered {r['jobs_s']:.0f} jobs/s end to end" if name == "async" else ""
                print(f"round {rnd + 1} {name:<5} {r['rps']:>8.0f} req/s  p99 {r['p99']:.3f} ms  non-2xx {r['non2xx']}{extra}",
                      file=sys.stderr, flush=True)
    finally:
        run.stop(procs)
        shutil.rmtree(work, ignore_errors=True)

    med = lambda name, key: statistics.median(r[key] for r in results[name])  # noqa: E731
    sync, asyn = med("sync", "rps"), med("async", "rps")
    print(f"\nfngate, POST one route two ways; wrk -t1 -c{args.conns}, {args.duration}s runs, medians of {args.rounds} interleaved rounds\n")
    print("| route | req/s | p99 ms | vs sync | jobs delivered/s end to end |")
    print("|---|---:|---:|---:|---:|")
    print(f"| sync (forwarded, the client waits) | {sync:.0f} | {med('sync', 'p99'):.3f} | 1.00× | — |")
    print(f"| async (202 after fsync, group commit) | {asyn:.0f} | {med('async', 'p99'):.3f} | {asyn / sync:.2f}× | {med('async', 'jobs_s'):.0f} |")
    # Only 202s count as accepted: wrk's non-2xx covers every other answer.
    print(f"\nnon-2xx answers: sync {sum(r['non2xx'] for r in results['sync'])}, async {sum(r['non2xx'] for r in results['async'])}")


if __name__ == "__main__":
    main()
