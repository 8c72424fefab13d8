#!/usr/bin/env python3
"""Load benchmark: fngate against nginx and against the bare backend.

Starts one backend (nginx, 1 worker, a small fixed answer), an nginx reverse
proxy (1 worker, keep-alive upstream) and fngate (workers = 1) on loopback,
then loads each with wrk at every connection count, interleaved round by
round, and reports medians: req/s, p50, p99, each proxy's CPU time per request
(from /proc, the figure the 2-core fight for CPU distorts least) and its RSS
idle and under load. Everything it starts, it stops by pid.

    python3 bench/run.py                      # 3 rounds x 1/64/256 connections x 5 s
    python3 bench/run.py --duration 3 --rounds 1 --conns 64
    python3 bench/run.py --conns 64 --rounds 4 --also before=/tmp/old/target/release/fngate   # A/B in one run
    python3 bench/run.py --workers 2          # nginx worker_processes 2, fngate workers = 2
"""

import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def ensure_tools(extra=None):
    """wrk and nginx, and any `extra` {command: Debian package}, installed when missing (as root)."""
    wanted = {"wrk": "wrk", "nginx": "nginx-light", **(extra or {})}
    missing = list(dict.fromkeys(pkg for cmd, pkg in wanted.items()
                                 if not shutil.which(cmd) and not os.path.exists(f"/usr/sbin/{cmd}")))
    if not missing:
        return
    if os.geteuid() != 0:
        sys.exit(f"missing tools: apt-get install {' '.join(missing)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, env=env)


def nginx_bin():
    return shutil.which("nginx") or "/usr/sbin/nginx"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"nothing listens on {port}")


def pids_of(root_pid):
    """The process and its children (nginx's master and workers)."""
    pids = [root_pid]
    try:
        with open(f"/proc/{root_pid}/task/{root_pid}/children") as f:
            pids += [int(p) for p in f.read().split()]
    except OSError:
        pass
    return pids


def cpu_ticks(root_pid):
    total = 0
    for pid in pids_of(root_pid):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime + stime
        except OSError:
            pass
    return total


def rss_kib(root_pid):
    total = 0
    for pid in pids_of(root_pid):
        try:
            with open(f"/proc/{pid}/statm") as f:
                total += int(f.read().split()[1]) * PAGE // 1024
        except OSError:
            pass
    return total


def start_nginx(workdir, name, body, workers=1):
    os.makedirs(f"{workdir}/{name}/logs", exist_ok=True)
    conf = f"{workdir}/{name}/nginx.conf"
    with open(conf, "w") as f:
        f.write(
            "worker_processes %d;\ndaemon off;\nerror_log stderr warn;\npid %s/%s/nginx.pid;\n"
            "events { worker_connections 4096; }\nhttp {\n  access_log off;\n"
            "  client_body_temp_path %s/%s; proxy_temp_path %s/%s;\n"
            "  fastcgi_temp_path %s/%s; uwsgi_temp_path %s/%s; scgi_temp_path %s/%s;\n  keepalive_requests 1000000;\n%s\n}\n"
            % ((workers,) + (workdir, name) * 6 + (body,))
        )
    return subprocess.Popen([nginx_bin(), "-p", f"{workdir}/{name}", "-c", conf], stderr=subprocess.DEVNULL)


def plain_route_config(path, port, admin, backend, server_extra="", workers=1):
    """Writes the benchmarks' plain fngate config: one route, /{*rest}, to one endpoint."""
    with open(path, "w") as f:
        f.write('[server]\nlisten = "127.0.0.1:%d"\nworkers = %d\nwatch = false\n%s'
                '[admin]\nlisten = "127.0.0.1:%d"\n'
                '[backends.fn]\nurls = ["http://127.0.0.1:%d"]\n'
                '[[routes]]\nname = "fn"\npath = "/{*rest}"\nbackend = "fn"\n' % (port, workers, server_extra, admin, backend))


def proxy_nginx_conf(workdir, backend, port, head="worker_processes 1;\n", connections=1024, http_extra=""):
    """Writes nginx.conf for nginx as a reverse proxy (keep-alive upstream) under workdir/proxy;
    returns its path. `head` goes before the events block (`master_process off;` for callgrind)."""
    os.makedirs(f"{workdir}/proxy/logs", exist_ok=True)
    conf = f"{workdir}/proxy/nginx.conf"
    with open(conf, "w") as f:
        f.write("%sdaemon off;\nerror_log stderr warn;\npid %s/proxy/nginx.pid;\n"
                "events { worker_connections %d; }\nhttp {\n  access_log off;\n%s"
                "  client_body_temp_path %s/proxy; proxy_temp_path %s/proxy;\n"
                "  fastcgi_temp_path %s/proxy; uwsgi_temp_path %s/proxy; scgi_temp_path %s/proxy;\n"
                "  upstream fn { server 127.0.0.1:%d; keepalive 64; }\n"
                "  server { listen 127.0.0.1:%d; location / { proxy_pass http://fn; proxy_http_version 1.1;"
                " proxy_set_header Connection \"\"; } }\n}\n"
                % ((head, workdir, connections, http_extra) + (workdir,) * 5 + (backend, port)))
    return conf


def start_fngate(workdir, port, admin, body):
    """fngate (release build, workers = 1, its store in `workdir`) on `port` and `admin`,
    with `body` (routes.toml sections) after [server], [admin] and [store]; once it listens."""
    config = os.path.join(workdir, "routes.toml")
    with open(config, "w") as f:
        f.write('[server]\nlisten = "127.0.0.1:%d"\nworkers = 1\nwatch = false\n[admin]\nlisten = "127.0.0.1:%d"\n'
                '[store]\npath = "%s/jobs.db"\n' % (port, admin, workdir) + body)
    gw = subprocess.Popen([os.path.join(ROOT, "target/release/fngate"), "--config", config],
                          env=dict(os.environ, RUST_LOG="warn"), stdout=subprocess.DEVNULL)
    wait_port(port)
    wait_port(admin)
    return gw


def counter(admin, family, label, value, outcome):
    """The sum of `fngate_<family>_total{<label>=~value,outcome=...}` (value is a regex)."""
    import urllib.request
    text = urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5).read().decode()
    pattern = r'fngate_%s_total\{%s="%s",outcome="%s"\} (\d+)' % (family, label, value, outcome)
    return sum(int(m.group(1)) for m in re.finditer(pattern, text))


def stop(procs):
    """Stops what a benchmark started, by pid: SIGTERM, then SIGKILL after 10 s."""
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()


def parse_wrk(out):
    def dur(v, unit):
        return float(v) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    lat = dict((p, dur(v, u)) for p, v, u in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": rps, "total": total, "p50": lat.get("50", 0.0), "p99": lat.get("99", 0.0),
            "non2xx": int(errors.group(1)) if errors else 0}


def load(url, conns, duration, pid, headers=()):
    peak = [0]
    stop = threading.Event()

    def sample():
        while not stop.wait(0.1):
            if pid:
                peak[0] = max(peak[0], rss_kib(pid))

    t = threading.Thread(target=sample)
    t.start()
    before = cpu_ticks(pid) if pid else 0
    extra = [a for h in headers for a in ("-H", h)]
    out = subprocess.run(["wrk", "-t1", f"-c{conns}", f"-d{duration}s", "--latency", *extra, url],
                         capture_output=True, text=True, check=True, timeout=duration + 60).stdout
    after = cpu_ticks(pid) if pid else 0
    stop.set()
    t.join()
    r = parse_wrk(out)
    r["cpu_us"] = (after - before) / TICK * 1e6 / max(r["total"], 1) if pid else None
    r["rss_load"] = peak[0] if pid else None
    return r


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=5, help="seconds per wrk run (default 5)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are taken (default 3)")
    ap.add_argument("--conns", default="1,64,256", help="connection counts (default 1,64,256)")
    ap.add_argument("--no-build", action="store_true", help="use the existing target/release/fngate")
    ap.add_argument("--bare", action="store_true",
                    help="also load examples/bare_proxy.rs (hyper alone: the floor fngate's layers add to)")
    ap.add_argument("--workers", type=int, default=1,
                    help="worker processes of the nginx proxy and fngate's workers (default 1; the backend keeps 1)")
    ap.add_argument("--also", action="append", default=[], metavar="NAME=BIN",
                    help="another fngate binary (an older build) loaded in the same rounds, with the same config")
    args = ap.parse_args()
    conns = [int(c) for c in args.conns.split(",")]

    ensure_tools()
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
        if args.bare:
            subprocess.run(["cargo", "build", "--release", "--quiet", "--example", "bare_proxy"], cwd=ROOT, check=True)
    fngate = os.path.join(ROOT, "target/release/fngate")

    work = tempfile.mkdtemp(prefix="fngate-bench-")
    backend_port, nginx_port, fngate_port, admin_port, bare_port = (free_port() for _ in range(5))
    procs = []
    try:
        procs.append(start_nginx(work, "backend",
                                 "  server { listen 127.0.0.1:%d; location / { return 200 'hello from the function\\n'; } }" % backend_port))
        nginx = start_nginx(work, "proxy",
                            "  upstream fn { server 127.0.0.1:%d; keepalive 256; }\n"
                            "  server { listen 127.0.0.1:%d; location / { proxy_pass http://fn;"
                            " proxy_http_version 1.1; proxy_set_header Connection \"\"; } }" % (backend_port, nginx_port),
                            workers=args.workers)
        procs.append(nginx)
        config = os.path.join(work, "routes.toml")
        plain_route_config(config, fngate_port, admin_port, backend_port, workers=args.workers)
        gw = subprocess.Popen([fngate, "--config", config], env=dict(os.environ, RUST_LOG="warn"),
                              stdout=subprocess.DEVNULL)
        procs.append(gw)
        targets = [("direct", backend_port, None), ("nginx", nginx_port, nginx.pid), ("fngate", fngate_port, gw.pid)]
        if args.bare:
            bare = subprocess.Popen([os.path.join(ROOT, "target/release/examples/bare_proxy"),
                                     f"127.0.0.1:{bare_port}", f"127.0.0.1:{backend_port}"])
            procs.append(bare)
            targets.append(("hyper", bare_port, bare.pid))
        for spec in args.also:
            name, _, binary = spec.partition("=")
            port, admin = free_port(), free_port()
            other = os.path.join(work, f"{name}.toml")
            with open(config) as src, open(other, "w") as dst:
                dst.write(src.read().replace(f":{fngate_port}\"", f":{port}\"").replace(f":{admin_port}\"", f":{admin}\""))
            p = subprocess.Popen([binary, "--config", other], env=dict(os.environ, RUST_LOG="warn"),
                                 stdout=subprocess.DEVNULL)
            procs.append(p)
            targets.append((name, port, p.pid))
        for _, port, _ in targets:
            wait_port(port)

        idle = {name: rss_kib(pid) for name, _, pid in targets if pid}  # started, no traffic yet
        for _, port, _ in targets:  # warm pools and caches
            subprocess.run(["wrk", "-t1", "-c64", "-d1s", f"http://127.0.0.1:{port}/bench"], capture_output=True)

        results = {}
        for rnd in range(args.rounds):
            for c in conns:
                for name, port, pid in targets:
                    r = load(f"http://127.0.0.1:{port}/bench", c, args.duration, pid)
                    results.setdefault((name, c), []).append(r)
                    print(f"round {rnd + 1} c={c:<3} {name:<6} {r['rps']:>9.0f} req/s  p50 {r['p50']:.3f} ms  "
                          f"p99 {r['p99']:.3f} ms" + (f"  {r['cpu_us']:.1f} us/req" if r["cpu_us"] else ""),
                          file=sys.stderr, flush=True)
    finally:
        stop(procs)
        shutil.rmtree(work, ignore_errors=True)

    def med(name, c, key):
        values = [r[key] for r in results[(name, c)] if r[key] is not None]
        return statistics.median(values) if values else None

    print(f"\nwrk -t1, {args.duration}s per run, medians of {args.rounds} interleaved rounds; "
          f"{args.workers} worker{'s' if args.workers > 1 else ''} each (the backend 1); {os.cpu_count()} cores shared by wrk, proxy and backend\n")
    print("| conns | target | req/s | p50 ms | p99 ms | CPU µs/req | RSS start / load MiB | req/s vs nginx | req/s vs direct |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for c in conns:
        for name, _, pid in targets:
            rps = med(name, c, "rps")
            cpu = med(name, c, "cpu_us")
            load_rss = med(name, c, "rss_load")
            rss = f"{idle[name] / 1024:.1f} / {load_rss / 1024:.1f}" if name in idle else "–"
            vs_nginx = f"{rps / med('nginx', c, 'rps'):.2f}×" if name not in ("direct", "nginx") else ""
            vs_direct = f"{rps / med('direct', c, 'rps'):.2f}×" if name != "direct" else ""
            bad = sum(r["non2xx"] for r in results[(name, c)])
            note = f" ({bad} non-2xx!)" if bad else ""
            print(f"| {c} | {name}{note} | {rps:.0f} | {med(name, c, 'p50'):.3f} | {med(name, c, 'p99'):.3f} | "
                  f"{f'{cpu:.1f}' if cpu is not None else '–'} | {rss} | {vs_nginx} | {vs_direct} |")


if __name__ == "__main__":
    main()
