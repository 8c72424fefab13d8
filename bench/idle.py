#!/usr/bin/env python3
"""What an idle keep-alive client connection costs in RSS.

nginx (1 worker), the bare hyper proxy (examples/bare_proxy.rs) and fngate
(workers = 1) each run in front of one nginx backend. For each proxy in turn:
RSS before, then N client connections are opened and each sends one GET
(one at a time, so each has served a request and sits idle in keep-alive,
the common state), then RSS again once all N answers are in; the connections close and
the proxy stops before the next starts. The figure is the RSS growth divided
by N. Everything it starts, it stops by pid.

    python3 bench/idle.py                  # 10,000 connections
    python3 bench/idle.py --conns 2000 --no-build
    python3 bench/idle.py --also before=/tmp/old/target/release/fngate   # A/B in one run
"""

import argparse
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
import shutil

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402

REQUEST = b"GET /bench HTTP/1.1\r\nHost: bench\r\n\r\n"


def open_idle(port, n, timeout=5):
    """n connections, each with one answered request; returns the sockets. One
    exchange at a time, so the proxy needs one upstream connection, not n."""
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        s.sendall(REQUEST)
        buf = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                sys.exit(f"port {port}: a connection closed before its answer")
            buf += chunk
            head, sep, body = buf.partition(b"\r\n\r\n")
            if not sep:
                continue
            length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            if len(body) >= length:
                break
        if not head.startswith(b"HTTP/1.1 200"):
            sys.exit(f"port {port}: {head.splitlines()[0]!r}")
        socks.append(s)
    return socks


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--conns", type=int, default=10000)
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--also", action="append", default=[], metavar="NAME=BIN",
                    help="another fngate binary (an older build) measured in the same run, with the same config")
    args = ap.parse_args()
    run.ensure_tools()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = args.conns + 1000  # per process: the client here, each proxy there
    if hard < need:
        sys.exit(f"the open-file limit ({hard}) is below the {need} this run needs")
    resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))  # inherited by the proxies
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "fngate", "--example", "bare_proxy"],
                       cwd=run.ROOT, check=True)

    work = tempfile.mkdtemp(prefix="fngate-idle-")
    backend, nginx_port, port, admin, bare = (run.free_port() for _ in range(5))
    procs = []
    results = {}
    try:
        procs.append(run.start_nginx(work, "backend",
                                     "  server { listen 127.0.0.1:%d; location / { return 200 'hello from the function\\n'; } }" % backend))
        run.wait_port(backend)
        config = os.path.join(work, "routes.toml")
        run.plain_route_config(config, port, admin, backend, server_extra='idle_timeout = "5m"\n')
        # Room for every connection; keep-alive longer than the run.
        nginx_conf = run.proxy_nginx_conf(work, backend, nginx_port, connections=need,
                                          head="worker_processes 1;\nworker_rlimit_nofile %d;\n" % need,
                                          http_extra="  keepalive_timeout 5m;\n")
        targets = [
            ("nginx", [run.nginx_bin(), "-p", f"{work}/proxy", "-c", nginx_conf], nginx_port),
            ("hyper", [os.path.join(run.ROOT, "target/release/examples/bare_proxy"),
                       f"127.0.0.1:{bare}", f"127.0.0.1:{backend}"], bare),
            ("fngate", [os.path.join(run.ROOT, "target/release/fngate"), "--config", config], port),
        ]
        for spec in args.also:
            name, _, binary = spec.partition("=")
            targets.append((name, [binary, "--config", config], port))
        for name, argv, p in targets:
            proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                    env=dict(os.environ, RUST_LOG="warn"))
            try:
                run.wait_port(p)
                open_idle(p, 10)  # one warm-up exchange: upstream connection pooled, lazy state built
                time.sleep(0.5)
                before = run.rss_kib(proc.pid)
                socks = open_idle(p, args.conns)
                time.sleep(1)
                after = run.rss_kib(proc.pid)
                results[name] = (before, after)
                print(f"{name:<7} {before / 1024:6.1f} -> {after / 1024:6.1f} MiB with {args.conns} idle connections",
                      file=sys.stderr, flush=True)
                for s in socks:
                    s.close()
            finally:
                run.stop([proc])
    finally:
        run.stop(procs)
        time.sleep(0.2)
        shutil.rmtree(work, ignore_errors=True)

    print(f"\n{args.conns} idle keep-alive client connections, each after one answered GET; "
          "RSS of the proxy's process tree; 1 worker each\n")
    print("| proxy | RSS before MiB | RSS with the connections MiB | KiB per connection | vs nginx |")
    print("|---|---:|---:|---:|---:|")
    per = {n: (a - b) / args.conns for n, (b, a) in results.items()}
    for name, (b, a) in results.items():
        print(f"| {name} | {b / 1024:.1f} | {a / 1024:.1f} | {per[name]:.1f} | {per[name] / per['nginx']:.2f}× |")


if __name__ == "__main__":
    main()
