#!/usr/bin/env python3
"""HTTPS: fngate and nginx terminating TLS with the same certificate
(certs/localhost.pem), one worker each, keep-alive, in front of one backend,
in one interleaved run: HTTP/1.1 with wrk and HTTP/2 with h2load
(nghttp2-client). Target: >= 1.0x nginx.

    python3 bench/tls.py              # 3 rounds x 64 connections x 5 s
"""

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402


def h2load(url, conns, duration):
    # -m: concurrent streams per connection; a fixed total time like wrk's.
    out = subprocess.run(["h2load", "-c", str(conns), "-m", "10", "-t", "1", "-D", str(duration), url],
                         capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out).group(1))
    done = int(re.search(r"requests: \d+ total, \d+ started, (\d+) done", out).group(1))
    ok = int(re.search(r"status codes: (\d+) 2xx", out).group(1))
    return {"rps": rps, "total": done, "non2xx": done - ok}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--conns", type=int, default=64)
    ap.add_argument("--no-build", action="store_true")
    args = ap.parse_args()
    run.ensure_tools({"h2load": "nghttp2-client"})
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=run.ROOT, check=True)
    cert, key = (os.path.join(run.ROOT, "certs", f) for f in ("localhost.pem", "localhost-key.pem"))
    work = tempfile.mkdtemp(prefix="fngate-tls-")
    backend, nginx_port, port, tls_port, admin = (run.free_port() for _ in range(5))
    procs = []
    try:
        procs.append(run.start_nginx(work, "backend", "  server { listen 127.0.0.1:%d; location / { return 200 'hello from the function\\n'; } }" % backend))
        nginx = run.start_nginx(
            work, "proxy",
            "  upstream fn { server 127.0.0.1:%d; keepalive 256; }\n"
            "  server { listen 127.0.0.1:%d ssl http2; ssl_certificate %s; ssl_certificate_key %s;\n"
            "    ssl_protocols TLSv1.2 TLSv1.3; keepalive_requests 1000000; http2_max_requests 1000000;\n"
            "    location / { proxy_pass http://fn; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }"
            % (backend, nginx_port, cert, key))
        procs.append(nginx)
        config = os.path.join(work, "routes.toml")
        with open(config, "w") as f:
            f.write('[server]\nlisten = "127.0.0.1:%d"\nworkers = 1\nwatch = false\n'
                    '[server.tls]\nlisten = "127.0.0.1:%d"\ncerts = [{ cert = "%s", key = "%s" }]\n'
                    '[admin]\nlisten = "127.0.0.1:%d"\n'
                    '[backends.fn]\nurls = ["http://127.0.0.1:%d"]\n'
                    '[[routes]]\nname = "fn"\npath = "/{*rest}"\nbackend = "fn"\n'
                    % (port, tls_port, cert, key, admin, backend))
        gw = subprocess.Popen([os.path.join(run.ROOT, "target/release/fngate"), "--config", config],
                              env=dict(os.environ, RUST_LOG="warn"), stdout=subprocess.DEVNULL)
        procs.append(gw)
        for p in (backend, nginx_port, tls_port):
            run.wait_port(p)
        targets = [("nginx", nginx_port, nginx.pid), ("fngate", tls_port, gw.pid)]
        results = {}
        for rnd in range(args.rounds):
            for proto in ("http/1.1", "h2"):
                for name, p, pid in targets:
                    url = f"https://localhost:{p}/bench"
                    before = run.cpu_ticks(pid)
                    if proto == "h2":
                        r = h2load(url, args.conns, args.duration)
                    else:
                        out = subprocess.run(["wrk", "-t1", f"-c{args.conns}", f"-d{args.duration}s", "--latency", url],
                                             capture_output=True, text=True, check=True).stdout
                        r = run.parse_wrk(out)
                    r["cpu_us"] = (run.cpu_ticks(pid) - before) / os.sysconf("SC_CLK_TCK") * 1e6 / max(r["total"], 1)
                    results.setdefault((proto, name), []).append(r)
                    print(f"round {rnd + 1} {proto:<8} {name:<6} {r['rps']:>8.0f} req/s  {r['cpu_us']:.1f} µs CPU/req  "
                          f"non-2xx {r['non2xx']}", file=sys.stderr, flush=True)
    finally:
        run.stop(procs)
        shutil.rmtree(work, ignore_errors=True)

    print(f"\nHTTPS, 1 worker each, keep-alive, {args.conns} connections (h2: 10 streams each), {args.duration}s runs, "
          f"medians of {args.rounds} interleaved rounds; wrk -t1 for HTTP/1.1, h2load -t1 for h2\n")
    print("| protocol | proxy | req/s | CPU µs/req | vs nginx | non-2xx |")
    print("|---|---|---:|---:|---:|---:|")
    for proto in ("http/1.1", "h2"):
        base = statistics.median(r["rps"] for r in results[(proto, "nginx")])
        for name, _, _ in targets:
            rs = results[(proto, name)]
            rps = statistics.median(r["rps"] for r in rs)
            cpu = statistics.median(r["cpu_us"] for r in rs)
            ratio = "" if name == "nginx" else f"{rps / base:.2f}×"
            print(f"| {proto} | {name} | {rps:.0f} | {cpu:.1f} | {ratio} | {sum(r['non2xx'] for r in rs)} |")


if __name__ == "__main__":
    main()
