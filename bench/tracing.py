#!/usr/bin/env python3
"""What trace export costs a plain proxied route.

One nginx backend, one nginx standing in for the OpenTelemetry Collector (it
answers 200 to every POST /v1/traces), and fngate three times over the same
route: without [telemetry], at sample_ratio = 0.01 and at 1.0 (every request a
server and a client span, batched and exported). Two figures:

  * wall clock: wrk against each, interleaved round by round, medians of the
    rounds (req/s, p99, CPU µs per request from /proc), with nginx as a proxy
    and the backend called directly beside them;
  * callgrind: user-space instructions per request of each fngate (every
    thread: the export thread and the exporting tasks are counted too).

It checks that nothing was dropped (fngate_spans_dropped_total stays 0) and
counts the OTLP requests the collector took, so the 1.0 figure is one that exported.

    python3 bench/tracing.py                  # 3 rounds x 64 connections x 5 s, 5,000 requests under callgrind
    python3 bench/tracing.py --rounds 1 --duration 3 --no-instructions
"""

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402
import instructions  # noqa: E402

VARIANTS = [("off", None), ("0.01", 0.01), ("1.0", 1.0)]


def config(port, admin, backend, collector, ratio):
    text = ('[server]\nlisten = "127.0.0.1:%d"\nworkers = 1\nwatch = false\n'
            '[admin]\nlisten = "127.0.0.1:%d"\n'
            '[backends.fn]\nurls = ["http://127.0.0.1:%d"]\n'
            '[[routes]]\nname = "fn"\npath = "/{*rest}"\nbackend = "fn"\n' % (port, admin, backend))
    if ratio is not None:
        text += '[telemetry]\notlp_endpoint = "http://127.0.0.1:%d"\nsample_ratio = %s\n' % (collector, ratio)
    return text


def dropped(admin):
    text = urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5).read().decode()
    m = re.search(r"^fngate_spans_dropped_total (\d+)", text, re.M)
    return int(m.group(1)) if m else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--conns", type=int, default=64)
    ap.add_argument("--requests", type=int, default=5000, help="requests under callgrind")
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--no-instructions", action="store_true")
    args = ap.parse_args()
    run.ensure_tools({} if args.no_instructions else
                     {"valgrind": "valgrind", "callgrind_control": "valgrind", "h2load": "nghttp2-client"})
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "fngate"], cwd=run.ROOT, check=True)
    fngate = os.path.join(run.ROOT, "target/release/fngate")

    work = tempfile.mkdtemp(prefix="fngate-tracing-")
    backend, collector, nginx_port = (run.free_port() for _ in range(3))
    procs, results, exported = [], {}, {}
    # The collector counts what it took in its access log.
    collector_log = os.path.join(work, "collector.log")
    try:
        procs.append(run.start_nginx(work, "backend",
                                     "  server { listen 127.0.0.1:%d; location / { return 200 'hello from the function\\n'; } }" % backend))
        procs.append(run.start_nginx(work, "collector",
                                     "  log_format posts '$request_method $uri $status';\n"
                                     "  server { listen 127.0.0.1:%d; client_max_body_size 64m;\n"
                                     "    location /v1/traces { access_log %s posts; return 200; } }" % (collector, collector_log)))
        nginx = run.start_nginx(work, "proxy",
                                "  upstream fn { server 127.0.0.1:%d; keepalive 256; }\n"
                                "  server { listen 127.0.0.1:%d; location / { proxy_pass http://fn;"
                                " proxy_http_version 1.1; proxy_set_header Connection \"\"; } }" % (backend, nginx_port))
        procs.append(nginx)
        targets = [("direct", backend, None, None), ("nginx", nginx_port, nginx.pid, None)]
        for name, ratio in VARIANTS:
            port, admin = run.free_port(), run.free_port()
            os.makedirs(f"{work}/{name}", exist_ok=True)
            cfg = os.path.join(work, name, "routes.toml")
            with open(cfg, "w") as f:
                f.write(config(port, admin, backend, collector, ratio))
            gw = subprocess.Popen([fngate, "--config", cfg], env=dict(os.environ, RUST_LOG="warn"),
                                  stdout=subprocess.DEVNULL)
            procs.append(gw)
            targets.append((f"fngate {name}", port, gw.pid, admin))
        for _, port, _, _ in targets:
            run.wait_port(port)
        for _, port, _, _ in targets:
            subprocess.run(["wrk", "-t1", "-c64", "-d1s", f"http://127.0.0.1:{port}/bench"], capture_output=True)
        for rnd in range(args.rounds):
            for name, port, pid, _ in targets:
                r = run.load(f"http://127.0.0.1:{port}/bench", args.conns, args.duration, pid)
                results.setdefault(name, []).append(r)
                print(f"round {rnd + 1} {name:<12} {r['rps']:>9.0f} req/s  p99 {r['p99']:.3f} ms"
                      + (f"  {r['cpu_us']:.1f} us/req" if r["cpu_us"] else ""), file=sys.stderr, flush=True)
        time.sleep(2)  # the last batches leave within the 1 s batch delay
        drops = {name: dropped(admin) for name, _, _, admin in targets if admin}
        with open(collector_log) as f:
            posts = [line.split() for line in f]
        exported["posts"] = len(posts)
        exported["statuses"] = sorted({p[2] for p in posts})
    finally:
        run.stop(procs)

    counts = {}
    if not args.no_instructions:
        procs = []
        try:
            procs.append(run.start_nginx(work, "backend2",
                                         "  server { listen 127.0.0.1:%d; location / { return 200 'hello from the function\\n'; } }" % backend))
            procs.append(run.start_nginx(work, "collector2",
                                         "  server { listen 127.0.0.1:%d; client_max_body_size 64m;\n"
                                         "    location /v1/traces { access_log off; return 200; } }" % collector))
            run.wait_port(backend)
            run.wait_port(collector)
            for name, ratio in VARIANTS:
                port, admin = run.free_port(), run.free_port()
                cfg = os.path.join(work, name, "callgrind.toml")
                with open(cfg, "w") as f:
                    f.write(config(port, admin, backend, collector, ratio))
                counts[name] = instructions.counted(name.replace(".", "_"), [fngate, "--config", cfg], port, work,
                                                    args.requests, 16, settle=3.0)
                print(f"fngate {name:<5} {counts[name]:>9,.0f} instructions/request", file=sys.stderr, flush=True)
        finally:
            run.stop(procs)
    shutil.rmtree(work, ignore_errors=True)

    def med(name, key):
        return statistics.median(r[key] for r in results[name])

    print(f"\nwrk -t1 -c{args.conns}, {args.duration}s per run, medians of {args.rounds} interleaved rounds; "
          f"1 worker each; the collector is an nginx answering 200\n")
    print("| target | req/s | p99 ms | CPU µs/req | req/s vs untraced | CPU vs untraced | spans dropped |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    base_rps, base_cpu = med("fngate off", "rps"), med("fngate off", "cpu_us")
    for name, _, pid, admin in targets:
        cpu = med(name, "cpu_us") if pid else None
        vs = f"{med(name, 'rps') / base_rps:.2f}×" if name.startswith("fngate") else ""
        vs_cpu = f"{cpu / base_cpu:.2f}×" if name.startswith("fngate") else ""
        print(f"| {name} | {med(name, 'rps'):.0f} | {med(name, 'p99'):.3f} | "
              f"{f'{cpu:.1f}' if cpu is not None else '–'} | {vs} | {vs_cpu} | {drops.get(name, '') if admin else ''} |")
    print(f"\nThe collector took {exported['posts']} OTLP requests, answered {', '.join(exported['statuses'])}.")
    if counts:
        print(f"\ncallgrind, user-space instructions per request (all threads), {args.requests} keep-alive "
              "requests over 16 connections (h2load --h1) after 500 to warm up\n")
        print("| fngate | instructions/request | vs untraced |")
        print("|---|---:|---:|")
        for name, _ in VARIANTS:
            print(f"| {name} | {counts[name]:,.0f} | {counts[name] / counts['off']:.2f}× |")


if __name__ == "__main__":
    main()
