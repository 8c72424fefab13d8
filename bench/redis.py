#!/usr/bin/env python3
"""What sharing state on Redis costs (SPEC §10), in one interleaved run.

One nginx backend, one redis-server (appendonly yes, appendfsync everysec: the
setting Redis recommends; see the README for what it means for a lost job), and
two fngate processes with the same routes (workers = 1 each):

  * local: the embedded SQLite store (fsync per group commit) and local rate limits;
  * redis: [store] url on that redis-server, so jobs and rate-limit buckets live there.

Each round loads, on each fngate in turn, with wrk -t1 at the same connection count:

  * GET /limited: a route under a per-IP limit so large that every request passes,
    so the figure is the cost of the check (a Lua script round trip on Redis);
  * POST /async: a job accepted durably (202), then waits until every job of the
    round has been delivered.

It reports req/s and p99 per variant and the ratios, medians of the rounds.

    python3 bench/redis.py               # 3 rounds x 64 connections x 5 s
    python3 bench/redis.py --rounds 1 --duration 2
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

ROUTES = ('[backends.fn]\nurls = ["http://127.0.0.1:%d"]\n'
          '[rate_limits.wide]\nrequests = 100000000\nper = "1s"\n'
          '[[routes]]\nname = "limited"\npath = "/limited"\nbackend = "fn"\nrate_limit = ["wide"]\n'
          '[[routes]]\nname = "async"\npath = "/async"\nbackend = "fn"\ninvoke = "async"\n'
          '[routes.delivery]\nconcurrency = 64\n')


def start_gateway(work, name, port, admin, store, routes):
    d = os.path.join(work, name)
    os.makedirs(d, exist_ok=True)
    config = os.path.join(d, "routes.toml")
    with open(config, "w") as f:
        f.write('[server]\nlisten = "127.0.0.1:%d"\nworkers = 1\nwatch = false\n[admin]\nlisten = "127.0.0.1:%d"\n'
                % (port, admin) + store + routes)
    p = subprocess.Popen([os.path.join(run.ROOT, "target/release/fngate"), "--config", config],
                         env=dict(os.environ, RUST_LOG="warn"), stdout=subprocess.DEVNULL)
    run.wait_port(port)
    run.wait_port(admin)
    return p


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--conns", type=int, default=64)
    ap.add_argument("--no-build", action="store_true")
    args = ap.parse_args()
    run.ensure_tools({"redis-server": "redis-server"})
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "fngate"], cwd=run.ROOT, check=True)
    work = tempfile.mkdtemp(prefix="fngate-redis-", dir=os.environ.get("BENCH_DIR", "/var/tmp"))
    backend, redis_port = run.free_port(), run.free_port()
    lua = os.path.join(work, "post.lua")
    with open(lua, "w") as f:
        f.write(POST_LUA)
    procs, gateways, results = [], {}, {}
    try:
        procs.append(run.start_nginx(work, "backend",
                                     "  server { listen 127.0.0.1:%d; location / { return 200 '{\"thumbnail\":\"ok\"}\\n'; } }" % backend))
        os.makedirs(os.path.join(work, "redis"))
        procs.append(subprocess.Popen(
            ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes", "--appendfsync", "everysec", "--dir", os.path.join(work, "redis")],
            stdout=subprocess.DEVNULL))
        run.wait_port(backend)
        run.wait_port(redis_port)
        stores = {
            "local": '[store]\npath = "%s/jobs.db"\n' % work,
            "redis": '[store]\nurl = "redis://127.0.0.1:%d/0"\n' % redis_port,
        }
        for name, store in stores.items():
            port, admin = run.free_port(), run.free_port()
            procs.append(start_gateway(work, name, port, admin, store, ROUTES % backend))
            gateways[name] = (port, admin)
        for rnd in range(args.rounds):
            for name, (port, admin) in gateways.items():
                for kind in ("limited", "async"):
                    before = run.counter(admin, "jobs", "route", "async", "accepted")
                    started = time.monotonic()
                    cmd = ["wrk", "-t1", f"-c{args.conns}", f"-d{args.duration}s", "--latency"]
                    if kind == "async":
                        cmd += ["-s", lua]
                    cmd.append(f"http://127.0.0.1:{port}/{kind}")
                    r = run.parse_wrk(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
                    if kind == "async":
                        accepted = run.counter(admin, "jobs", "route", "async", "accepted") - before
                        deadline = time.monotonic() + 300
                        while (run.counter(admin, "jobs", "route", "async", "succeeded")
                               < run.counter(admin, "jobs", "route", "async", "accepted")):
                            if time.monotonic() > deadline:
                                sys.exit("jobs were not delivered within 300 s")
                            time.sleep(0.05)
                        r["jobs_s"] = accepted / (time.monotonic() - started)
                    results.setdefault((name, kind), []).append(r)
                    print(f"round {rnd + 1} {name:<5} {kind:<7} {r['rps']:>8.0f} req/s  p99 {r['p99']:.3f} ms  "
                          f"non-2xx {r['non2xx']}", file=sys.stderr, flush=True)
    finally:
        run.stop(procs)
        shutil.rmtree(work, ignore_errors=True)

    med = lambda name, kind, key: statistics.median(r[key] for r in results[(name, kind)])  # noqa: E731
    print(f"\nfngate with its state local and on one redis-server; wrk -t1 -c{args.conns}, "
          f"{args.duration}s runs, medians of {args.rounds} interleaved rounds\n")
    print("| load | local req/s | local p99 ms | Redis req/s | Redis p99 ms | Redis vs local |")
    print("|---|---:|---:|---:|---:|---:|")
    for kind, label in (("limited", "GET, rate-limited route (every request passes)"),
                        ("async", "POST, async route: durable accept (202)")):
        lo, re_ = med("local", kind, "rps"), med("redis", kind, "rps")
        print(f"| {label} | {lo:.0f} | {med('local', kind, 'p99'):.3f} | {re_:.0f} | "
              f"{med('redis', kind, 'p99'):.3f} | {re_ / lo:.2f}× |")
    lo, re_ = med("local", "async", "jobs_s"), med("redis", "async", "jobs_s")
    print(f"| jobs accepted and delivered per second, end to end | {lo:.0f} | — | {re_:.0f} | — | {re_ / lo:.2f}× |")
    bad = {k: sum(r["non2xx"] for r in v) for k, v in results.items() if sum(r["non2xx"] for r in v)}
    print(f"\nnon-2xx answers: {bad or 'none'}")


if __name__ == "__main__":
    main()
