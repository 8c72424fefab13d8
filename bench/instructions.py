#!/usr/bin/env python3
"""Instructions per proxied request, counted by valgrind's callgrind.

Wall-clock figures on this shared 2-core machine move by 10% between runs; an
instruction count does not. Each proxy (fngate, hyper alone from
examples/bare_proxy.rs, nginx) runs under callgrind in front of one nginx
backend; after a warm-up its counters are zeroed, a fixed number of
keep-alive requests is sent with h2load, and the counters are dumped. The
figure is user-space instructions per request: it leaves out the kernel's
share, which is the same for every proxy making the same system calls.

    python3 bench/instructions.py                 # 5,000 requests, 16 connections
    python3 bench/instructions.py --requests 2000
    python3 bench/instructions.py --also before=/tmp/old/target/release/fngate   # A/B in one run
    python3 bench/instructions.py --keep /tmp/cg  # then: callgrind_annotate --inclusive=yes /tmp/cg/fngate.cg
    python3 bench/instructions.py --full-stack    # also the full stack (bench/fullstack.py's route)

With --full-stack, each fngate build is counted a second time on the full-stack
route of bench/fullstack.py: a cached ES256 JWT, an `ip` rate limit, metrics,
and the JSON access-log line of every request written to a file (RUST_LOG=info).
Its ratio to the same build's plain route is what the full stack costs.

With --h2c, clients speak HTTP/2 with prior knowledge (h2load -m 10: ten
streams in flight per connection) to nginx and fngate; the bare hyper proxy
serves HTTP/1.1 only and is left out. Upstreams stay HTTP/1.1.

    python3 bench/instructions.py --h2c --keep /tmp/cg-h2
"""

import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402


# h2load's protocol arguments: HTTP/1.1 keep-alive, or h2c with ten streams per connection.
PROTOCOL = ["--h1"]


def h2load(port, n, conns, path="/bench", headers=()):
    extra = [a for h in headers for a in ("-H", h)]
    out = subprocess.run(["h2load"] + PROTOCOL + ["-n", str(n), "-c", str(conns), "-t", "1"] + extra +
                         [f"http://127.0.0.1:{port}{path}"], capture_output=True, text=True, check=True).stdout
    ok = int(re.search(r"status codes: (\d+) 2xx", out).group(1))
    if ok != n:
        sys.exit(f"port {port}: {ok} of {n} requests answered 2xx\n{out}")


def counted(name, argv, port, work, n, conns, settle=0.0, path="/bench", headers=(), log=None):
    """Runs argv under callgrind; returns instructions per request. `settle` seconds pass
    before the count is taken, for work a request leaves behind (a span's export). With
    `log` (a file), the process logs at info and its stdout goes there."""
    out = os.path.join(work, f"{name}.cg")
    stdout = open(log, "w") if log else subprocess.DEVNULL
    p = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"] + argv,
                         stdout=stdout, stderr=subprocess.DEVNULL,
                         env=dict(os.environ, RUST_LOG="info" if log else "warn"))
    try:
        run.wait_port(port, timeout=60)
        h2load(port, 500, conns, path, headers)  # warm: connections pooled, caches filled
        subprocess.run(["callgrind_control", "-z", str(p.pid)], check=True, capture_output=True)
        h2load(port, n, conns, path, headers)
        time.sleep(settle)
        subprocess.run(["callgrind_control", "-d", str(p.pid)], check=True, capture_output=True)
    finally:
        run.stop([p])
    # The dump after zeroing is the newest numbered file.
    dumps = sorted(glob.glob(out + ".*"), key=os.path.getmtime)
    with open(dumps[-1]) as f:
        total = int(re.search(r"^summary: (\d+)", f.read(), re.M).group(1))
    return total / n


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=5000)
    ap.add_argument("--conns", type=int, default=16)
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--keep", metavar="DIR",
                    help="copy each proxy's callgrind dump to DIR/NAME.cg (for callgrind_annotate --inclusive=yes)")
    ap.add_argument("--also", action="append", default=[], metavar="NAME=BIN",
                    help="another fngate binary (an older build) counted in the same run, with the same config")
    ap.add_argument("--full-stack", action="store_true",
                    help="count each fngate build on the full-stack route too (JWT, rate limit, access log to a file)")
    ap.add_argument("--h2c", action="store_true",
                    help="clients speak h2c (prior knowledge, -m 10) to nginx and fngate; no bare hyper row")
    args = ap.parse_args()
    if args.h2c:
        PROTOCOL[:] = ["-m", "10"]
    run.ensure_tools({"valgrind": "valgrind", "callgrind_control": "valgrind", "h2load": "nghttp2-client"})
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "fngate", "--example", "bare_proxy"],
                       cwd=run.ROOT, check=True)

    work = tempfile.mkdtemp(prefix="fngate-instr-")
    backend, nginx_port, port, admin, bare = (run.free_port() for _ in range(5))
    procs = []
    try:
        procs.append(run.start_nginx(work, "backend",
                                     "  server { listen 127.0.0.1:%d; location / { return 200 'hello from the function\\n'; } }" % backend))
        run.wait_port(backend)
        config = os.path.join(work, "routes.toml")
        run.plain_route_config(config, port, admin, backend)
        # One process (no master) so callgrind sees the worker's work.
        nginx_conf = run.proxy_nginx_conf(work, backend, nginx_port, head="master_process off;\n")
        if args.h2c:
            with open(nginx_conf) as f:
                text = f.read()
            with open(nginx_conf, "w") as f:
                f.write(text.replace(f"listen 127.0.0.1:{nginx_port};", f"listen 127.0.0.1:{nginx_port} http2;"))
        targets = [
            ("nginx", [run.nginx_bin(), "-p", f"{work}/proxy", "-c", nginx_conf], nginx_port),
            ("hyper", [os.path.join(run.ROOT, "target/release/examples/bare_proxy"),
                       f"127.0.0.1:{bare}", f"127.0.0.1:{backend}"], bare),
            ("fngate", [os.path.join(run.ROOT, "target/release/fngate"), "--config", config], port),
        ]
        # Each other build on its own ports (one proxy runs at a time; the config is rewritten for it).
        also = []
        for spec in args.also:
            name, _, binary = spec.partition("=")
            other = os.path.join(work, f"{name}.toml")
            with open(config) as src, open(other, "w") as dst:
                dst.write(src.read())
            also.append((name, [binary, "--config", other], port))
        if args.h2c:
            del targets[1]
        targets += also
        full = []
        if args.full_stack:
            import fullstack  # noqa: E402
            token = subprocess.run([targets[-1 - len(also)][1][0], "token", "--sub", "bench"], capture_output=True,
                                   text=True, check=True).stdout.strip()
            for name, argv, _ in [targets[-1 - len(also)]] + also:
                fport, fadmin = run.free_port(), run.free_port()
                fconf = os.path.join(work, f"{name}-full.toml")
                with open(fconf, "w") as f:
                    f.write(fullstack.config(fport, fadmin, backend))
                full.append((f"{name} full stack", [argv[0], "--log-format", "json", "--config", fconf], fport))
        results = {}
        for name, argv, p in targets + full:
            file = name.replace(" ", "-")
            if name.endswith(" full stack"):
                results[name] = counted(file, argv, p, work, args.requests, args.conns, path="/full",
                                        headers=[f"authorization: Bearer {token}"],
                                        log=os.path.join(work, f"{file}.log"))
            else:
                results[name] = counted(file, argv, p, work, args.requests, args.conns)
            if args.keep:
                os.makedirs(args.keep, exist_ok=True)
                dumps = sorted(glob.glob(os.path.join(work, f"{file}.cg.*")), key=os.path.getmtime)
                shutil.copy(dumps[-1], os.path.join(args.keep, f"{file}.cg"))
            print(f"{name:<7} {results[name]:>9,.0f} instructions/request", file=sys.stderr, flush=True)
    finally:
        run.stop(procs)
        time.sleep(0.2)
        shutil.rmtree(work, ignore_errors=True)

    how = "h2c, 10 streams each (h2load -m 10)" if args.h2c else "h2load --h1"
    print(f"\ncallgrind, user-space instructions per request; {args.requests} keep-alive requests over "
          f"{args.conns} connections ({how}) after 500 to warm up\n")
    hyper = results.get("hyper")
    print("| proxy | instructions/request | vs nginx |" + (" vs hyper alone |" if hyper else ""))
    print("|---|---:|---:|" + ("---:|" if hyper else ""))
    for name in [t[0] for t in targets]:
        v = results[name]
        print(f"| {name} | {v:,.0f} | {v / results['nginx']:.2f}× |" + (f" {v / hyper:.2f}× |" if hyper else ""))
    if full:
        print("\nThe full stack (a cached ES256 JWT, an `ip` rate limit, metrics, the JSON access log "
              "to a file) against the same build's plain route:\n")
        print("| build | plain | full stack | full / plain |")
        print("|---|---:|---:|---:|")
        for name, _, _ in full:
            build = name[: -len(" full stack")]
            v, plain = results[name], results[build]
            print(f"| {build} | {plain:,.0f} | {v:,.0f} | {v / plain:.2f}× |")


if __name__ == "__main__":
    main()
