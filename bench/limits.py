#!/usr/bin/env python3
"""Rate-limit overhead: a plain route against the same route with a limit far
above the load (keyed by IP), one limited per header value and one limited per
consumer, each with 10,000 distinct keys, in one interleaved run. The consumer
route authenticates 10,000 API keys first, so a route with that API-key
policy and no limit is measured too, to tell the two costs apart. Every
request carries one of the 10,000 keys (wrk's Lua script), so the runs differ
only in fngate's work. Target: >= 0.95x the plain route.

    python3 bench/limits.py              # 3 rounds x 64 connections x 5 s
"""

import argparse
import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import shutil

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402

# wrk sends one of 10,000 keys per request, in turn.
KEYS_LUA = """
local i = 0
request = function()
  i = (i + 1) % 10000
  return wrk.format(nil, nil, { ["x-api-key"] = "key-" .. i })
end
"""


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
    work = tempfile.mkdtemp(prefix="fngate-limits-")
    backend, port, admin = (run.free_port() for _ in range(3))
    lua = os.path.join(work, "keys.lua")
    with open(lua, "w") as f:
        f.write(KEYS_LUA)
    procs = []
    try:
        procs.append(run.start_nginx(work, "backend", "  server { listen 127.0.0.1:%d; location / { return 200 'hello from the function\\n'; } }" % backend))
        config = os.path.join(work, "routes.toml")
        with open(config, "w") as f:
            f.write('[server]\nlisten = "127.0.0.1:%d"\nworkers = 1\nwatch = false\n[admin]\nlisten = "127.0.0.1:%d"\n'
                    '[backends.fn]\nurls = ["http://127.0.0.1:%d"]\n'
                    '[rate_limits.high]\nrequests = 100000000\nper = "1s"\n'
                    '[rate_limits.per_key]\nrequests = 100000\nper = "1s"\nkey = "header:x-api-key"\n'
                    '[rate_limits.per_consumer]\nrequests = 100000\nper = "1s"\nkey = "consumer"\n'
                    '[auth.keys]\ntype = "api_key"\nkeys = [\n%s]\n'
                    '[[routes]]\nname = "plain"\npath = "/plain"\nbackend = "fn"\n'
                    '[[routes]]\nname = "limited"\npath = "/limited"\nbackend = "fn"\nrate_limit = ["high"]\n'
                    '[[routes]]\nname = "keyed"\npath = "/keyed"\nbackend = "fn"\nrate_limit = ["per_key"]\n'
                    '[[routes]]\nname = "authed"\npath = "/authed"\nbackend = "fn"\nauth = "keys"\n'
                    '[[routes]]\nname = "consumer"\npath = "/consumer"\nbackend = "fn"\nauth = "keys"\nrate_limit = ["per_consumer"]\n'
                    % (port, admin, backend, "".join(
                        '  { id = "c%d", sha256 = "%s" },\n' % (i, hashlib.sha256(b"key-%d" % i).hexdigest())
                        for i in range(10000))))
        gw = subprocess.Popen([os.path.join(run.ROOT, "target/release/fngate"), "--config", config],
                              env=dict(os.environ, RUST_LOG="warn"), stdout=subprocess.DEVNULL)
        procs.append(gw)
        for p in (backend, port):
            run.wait_port(p)
        results = {}
        for rnd in range(args.rounds):
            for name in ("plain", "limited", "keyed", "authed", "consumer"):
                # Every route gets the same script, so wrk's own cost is the same for all three.
                cmd = ["wrk", "-t1", f"-c{args.conns}", f"-d{args.duration}s", "--latency", "-s", lua]
                out = subprocess.run(cmd + [f"http://127.0.0.1:{port}/{name}"], capture_output=True, text=True, check=True).stdout
                r = run.parse_wrk(out)
                results.setdefault(name, []).append(r)
                print(f"round {rnd + 1} {name:<8} {r['rps']:>8.0f} req/s  p99 {r['p99']:.3f} ms  non-2xx {r['non2xx']}",
                      file=sys.stderr, flush=True)
    finally:
        run.stop(procs)
        shutil.rmtree(work, ignore_errors=True)

    plain = statistics.median(r["rps"] for r in results["plain"])
    print(f"\nfngate, one route five ways; wrk -t1 -c{args.conns}, {args.duration}s runs, medians of {args.rounds} interleaved rounds\n")
    print("| route | req/s | p99 ms | vs plain | non-2xx |")
    print("|---|---:|---:|---:|---:|")
    for name, label in (("plain", "no limit"), ("limited", "limit by IP (far above the load)"),
                        ("keyed", "limit per header value, 10,000 values"),
                        ("authed", "API key (10,000 consumers), no limit"),
                        ("consumer", "API key + limit per consumer, 10,000 consumers")):
        rps = statistics.median(r["rps"] for r in results[name])
        p99 = statistics.median(r["p99"] for r in results[name])
        bad = sum(r["non2xx"] for r in results[name])
        print(f"| {label} | {rps:.0f} | {p99:.3f} | {rps / plain:.2f}× | {bad} |")


if __name__ == "__main__":
    main()
