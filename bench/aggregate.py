#!/usr/bin/env python3
"""Fan-out latency: a route fanning out to 3 backends that each answer after
10 ms, against a single proxied call to one such backend, in one interleaved
run. The backends are examples/delay_backend.rs. Target: p50 of the
aggregate within 1.15x of the single call; fngate's CPU per request shown.

    python3 bench/aggregate.py              # 3 rounds x 16 connections x 5 s
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--conns", type=int, default=16)
    ap.add_argument("--delay-ms", type=int, default=10)
    ap.add_argument("--no-build", action="store_true")
    args = ap.parse_args()
    run.ensure_tools()
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "--quiet", "--example", "delay_backend"], cwd=run.ROOT, check=True)
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=run.ROOT, check=True)
    work = tempfile.mkdtemp(prefix="fngate-aggregate-")
    fns = [run.free_port() for _ in range(3)]
    port, admin = run.free_port(), run.free_port()
    procs = []
    try:
        procs.append(subprocess.Popen([os.path.join(run.ROOT, "target/release/examples/delay_backend"), str(args.delay_ms)]
                                      + [f"127.0.0.1:{p}" for p in fns]))
        config = os.path.join(work, "routes.toml")
        with open(config, "w") as f:
            f.write('[server]\nlisten = "127.0.0.1:%d"\nworkers = 1\nwatch = false\n[admin]\nlisten = "127.0.0.1:%d"\n' % (port, admin))
            for i, p in enumerate(fns):
                f.write('[backends.fn%d]\nurls = ["http://127.0.0.1:%d"]\nmax_in_flight = 0\n' % (i, p))
            f.write('[[routes]]\nname = "single"\npath = "/single"\nbackend = "fn0"\n')
            f.write('[[routes]]\nname = "fanout"\npath = "/fanout"\n[routes.aggregate]\ntimeout = "2s"\n')
            for i in range(3):
                f.write('[[routes.aggregate.calls]]\nname = "c%d"\nbackend = "fn%d"\npath = "/c%d"\n' % (i, i, i))
        gw = subprocess.Popen([os.path.join(run.ROOT, "target/release/fngate"), "--config", config],
                              env=dict(os.environ, RUST_LOG="warn"), stdout=subprocess.DEVNULL)
        procs.append(gw)
        for p in fns + [port]:
            run.wait_port(p)
        results = {}
        for rnd in range(args.rounds):
            for name in ("single", "fanout"):
                cmd = ["wrk", "-t1", f"-c{args.conns}", f"-d{args.duration}s", "--latency", f"http://127.0.0.1:{port}/{name}"]
                before = run.cpu_ticks(gw.pid)
                out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
                ticks = run.cpu_ticks(gw.pid) - before
                r = run.parse_wrk(out)
                r["cpu_us"] = ticks / os.sysconf("SC_CLK_TCK") * 1e6 / max(r["total"], 1)
                results.setdefault(name, []).append(r)
                print(f"round {rnd + 1} {name:<7} {r['rps']:>7.0f} req/s  p50 {r['p50']:.2f} ms  p99 {r['p99']:.2f} ms  "
                      f"{r['cpu_us']:.1f} µs CPU/req  non-2xx {r['non2xx']}", file=sys.stderr, flush=True)
    finally:
        run.stop(procs)
        shutil.rmtree(work, ignore_errors=True)

    med = lambda name, key: statistics.median(r[key] for r in results[name])  # noqa: E731
    print(f"\nfngate; backends answer after {args.delay_ms} ms; wrk -t1 -c{args.conns}, {args.duration}s runs, "
          f"medians of {args.rounds} interleaved rounds\n")
    print("| route | req/s | p50 ms | p99 ms | fngate CPU µs/req | p50 vs single | non-2xx |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, label in (("single", "one proxied call"), ("fanout", "aggregate of 3 calls")):
        bad = sum(r["non2xx"] for r in results[name])
        print(f"| {label} | {med(name, 'rps'):.0f} | {med(name, 'p50'):.2f} | {med(name, 'p99'):.2f} | "
              f"{med(name, 'cpu_us'):.1f} | {med(name, 'p50') / med('single', 'p50'):.2f}× | {bad} |")


if __name__ == "__main__":
    main()
