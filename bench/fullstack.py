#!/usr/bin/env python3
"""The whole request path against the plain route, in one interleaved run.

Two fngate processes (the same build, workers = 1) in front of one nginx
backend:
  - quiet:  RUST_LOG=warn, no access log (the plain route of bench/run.py);
  - logged: the default level (info) with --log-format json, stdout to a file,
            so every request writes its JSON access-log line.
The logged one serves the plain route and the full-stack route: an ES256 JWT
(one hot token, so the verified-token cache answers), an `ip` rate limit that
every request passes, metrics, and its access-log line. Target (issue 14):
the full stack >= 0.9x the quiet plain route.

    python3 bench/fullstack.py                 # 3 rounds x 64 connections x 5 s
    python3 bench/fullstack.py --before /tmp/old/target/release/fngate   # the logged runs on an older build too
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

ISSUER = "https://demo.fngate.invalid/"
AUDIENCE = "fngate-demo"


def config(port, admin, backend):
    jwks = os.path.join(run.ROOT, "certs/demo-jwks.json")
    return ('[server]\nlisten = "127.0.0.1:%d"\nworkers = 1\nwatch = false\n'
            '[admin]\nlisten = "127.0.0.1:%d"\n'
            '[backends.fn]\nurls = ["http://127.0.0.1:%d"]\n'
            '[auth.jwt]\ntype = "jwt"\nalgorithms = ["ES256"]\njwks_file = "%s"\nissuer = "%s"\naudience = ["%s"]\n'
            '[rate_limits.per_ip]\nrequests = 100000000\nper = "1s"\nkey = "ip"\n'
            '[[routes]]\nname = "plain"\npath = "/plain"\nbackend = "fn"\n'
            '[[routes]]\nname = "full"\npath = "/full"\nbackend = "fn"\nauth = "jwt"\nrate_limit = ["per_ip"]\n'
            % (port, admin, backend, jwks, ISSUER, AUDIENCE))


def start(binary, work, name, backend, logged):
    port, admin = run.free_port(), run.free_port()
    path = os.path.join(work, f"{name}.toml")
    with open(path, "w") as f:
        f.write(config(port, admin, backend))
    log = open(os.path.join(work, f"{name}.log"), "w")
    argv = [binary] + (["--log-format", "json"] if logged else []) + ["--config", path]
    env = dict(os.environ, RUST_LOG="info" if logged else "warn")
    p = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.DEVNULL)
    run.wait_port(port)
    return p, port, os.path.join(work, f"{name}.log")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--conns", type=int, default=64)
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--before", metavar="BIN", help="an older fngate build whose logged runs go in the same rounds")
    args = ap.parse_args()
    run.ensure_tools()
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "fngate"], cwd=run.ROOT, check=True)
    fngate = os.path.join(run.ROOT, "target/release/fngate")
    token = subprocess.run([fngate, "token", "--sub", "bench"], capture_output=True, text=True, check=True).stdout.strip()
    work = tempfile.mkdtemp(prefix="fngate-full-")
    backend = run.free_port()
    procs = []
    results, lines = {}, {}
    try:
        procs.append(run.start_nginx(work, "backend", "  server { listen 127.0.0.1:%d; location / { return 200 'hello from the function\\n'; } }" % backend))
        run.wait_port(backend)
        gateways = {}
        for name, binary, logged in [("quiet", fngate, False), ("logged", fngate, True)] + (
                [("before", args.before, True)] if args.before else []):
            p, port, log = start(binary, work, name, backend, logged)
            procs.append(p)
            gateways[name] = (p, port, log)
        runs = [("plain, no access log", "quiet", "plain"),
                ("plain, JSON access log to a file", "logged", "plain"),
                ("full stack, JSON access log to a file", "logged", "full")]
        if args.before:
            runs += [("plain, access log, the older build", "before", "plain"),
                     ("full stack, the older build", "before", "full")]
        for rnd in range(args.rounds):
            for label, gw, route in runs:
                p, port, _ = gateways[gw]
                r = run.load(f"http://127.0.0.1:{port}/{route}", args.conns, args.duration, p.pid,
                             headers=[f"authorization: Bearer {token}"])
                results.setdefault(label, []).append(r)
                print(f"round {rnd + 1} {label:<40} {r['rps']:>8.0f} req/s  p99 {r['p99']:.3f} ms  "
                      f"{r['cpu_us']:.1f} µs CPU/req  non-2xx {r['non2xx']}", file=sys.stderr, flush=True)
    finally:
        run.stop(procs)
        for name, (_, _, log) in gateways.items():
            with open(log, "rb") as f:
                lines[name] = sum(1 for line in f if b'"fngate::access"' in line)
        shutil.rmtree(work, ignore_errors=True)

    base = statistics.median(r["rps"] for r in results["plain, no access log"])
    print(f"\nfngate, one build; wrk -t1 -c{args.conns}, {args.duration}s runs, medians of {args.rounds} "
          "interleaved rounds; 1 worker; nginx backend\n")
    print("| run | req/s | p99 ms | fngate CPU µs/req | vs plain, no log | non-2xx |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, _, _ in runs:
        rs = results[label]
        rps = statistics.median(r["rps"] for r in rs)
        print(f"| {label} | {rps:.0f} | {statistics.median(r['p99'] for r in rs):.3f} | "
              f"{statistics.median(r['cpu_us'] for r in rs):.1f} | {rps / base:.2f}× | {sum(r['non2xx'] for r in rs)} |")
    served = {gw: sum(r["total"] for label, g, _ in runs if g == gw for r in results[label]) for gw in gateways}
    for gw in gateways:
        if gw != "quiet":
            print(f"\n`{gw}` wrote {lines[gw]:,} access-log lines for {served[gw]:,} requests wrk counted.")


if __name__ == "__main__":
    main()
