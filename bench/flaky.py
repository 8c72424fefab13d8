#!/usr/bin/env python3
"""Resilience benchmark: a pool of two endpoints, one answering 503 to every
second request. fngate (retries = 1, passive ejection on) against nginx with
proxy_next_upstream on 503, in one interleaved run: success rate and p99.

    python3 bench/flaky.py                 # 3 rounds x 64 connections x 5 s
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402  (shares the process, port and wrk helpers)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--conns", type=int, default=64)
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--budget", type=int, default=20, help="fngate's retry_budget_percent (default 20, its default)")
    args = ap.parse_args()
    run.ensure_tools()
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "--quiet", "--example", "flaky_backend"], cwd=run.ROOT, check=True)
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=run.ROOT, check=True)

    work = tempfile.mkdtemp(prefix="fngate-flaky-")
    flaky, good, nginx_port, fngate_port, admin_port = (run.free_port() for _ in range(5))
    procs = []
    try:
        procs.append(subprocess.Popen([os.path.join(run.ROOT, "target/release/examples/flaky_backend"), f"127.0.0.1:{flaky}"]))
        procs.append(run.start_nginx(work, "good", "  server { listen 127.0.0.1:%d; location / { return 200 'hello from the function\\n'; } }" % good))
        nginx = run.start_nginx(
            work, "proxy",
            "  upstream fn { server 127.0.0.1:%d; server 127.0.0.1:%d; keepalive 256; }\n"
            "  server { listen 127.0.0.1:%d; location / { proxy_pass http://fn; proxy_http_version 1.1;"
            " proxy_set_header Connection \"\"; proxy_next_upstream error timeout http_503; proxy_next_upstream_tries 2; } }"
            % (flaky, good, nginx_port))
        procs.append(nginx)
        config = os.path.join(work, "routes.toml")
        with open(config, "w") as f:
            f.write('[server]\nlisten = "127.0.0.1:%d"\nworkers = 1\nwatch = false\n[admin]\nlisten = "127.0.0.1:%d"\n'
                    '[backends.fn]\nurls = ["http://127.0.0.1:%d", "http://127.0.0.1:%d"]\nretries = 1\nretry_budget_percent = %d\n'
                    '[[routes]]\nname = "fn"\npath = "/{*rest}"\nbackend = "fn"\n' % (fngate_port, admin_port, flaky, good, args.budget))
        gw = subprocess.Popen([os.path.join(run.ROOT, "target/release/fngate"), "--config", config],
                              env=dict(os.environ, RUST_LOG="warn"), stdout=subprocess.DEVNULL)
        procs.append(gw)
        for port in (flaky, good, nginx_port, fngate_port):
            run.wait_port(port)
        results = {}
        for rnd in range(args.rounds):
            for name, port, pid in (("nginx", nginx_port, nginx.pid), ("fngate", fngate_port, gw.pid)):
                r = run.load(f"http://127.0.0.1:{port}/bench", args.conns, args.duration, pid)
                r["success"] = 100.0 * (r["total"] - r["non2xx"]) / max(r["total"], 1)
                results.setdefault(name, []).append(r)
                print(f"round {rnd + 1} {name:<6} {r['rps']:>8.0f} req/s  success {r['success']:.2f}%  p99 {r['p99']:.3f} ms",
                      file=sys.stderr, flush=True)
    finally:
        run.stop(procs)
        shutil.rmtree(work, ignore_errors=True)

    print(f"\nOne endpoint answers 503 to every second request; wrk -t1 -c{args.conns}, {args.duration}s runs, "
          f"medians of {args.rounds} interleaved rounds\n")
    print("| proxy | req/s | success % | p50 ms | p99 ms | CPU µs/req |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in ("nginx", "fngate"):
        m = lambda k: statistics.median(r[k] for r in results[name])  # noqa: E731
        print(f"| {name} | {m('rps'):.0f} | {m('success'):.2f} | {m('p50'):.3f} | {m('p99'):.3f} | {m('cpu_us'):.1f} |")


if __name__ == "__main__":
    main()
