#!/usr/bin/env python3
"""Soak: fngate for 30 minutes under mixed load while things go wrong around it.

Load, each class at a fixed rate from a few keep-alive clients: a plain route, a
JWT route, a rate-limited route (429s are answers, not failures), an aggregate of
two calls, an async route (every 202 must be delivered by the end), WebSocket
echo sessions, and a route on a pool of two endpoints, one of which is killed.
Meanwhile: the config is rewritten and reloaded (SIGHUP) every 5 s, every sixth
time with an error that must leave the old config serving; one endpoint of the
pool is `kill -9`ed every 30 s and restarted 10 s later; and a client opens
connections and abandons them (half a request head, or a whole request and no
reading the answer, then a close; or half a head and silence, which fngate must
end itself).

A failure is any other status, a connection error or a timeout. Only the `only_k`
route, which has no endpoint but the killed one, may fail; its failures are counted
apart. Every 5 s: fngate's RSS, open fds and connections, and req/s; the end
report gives them after warm-up, and a PNG plots them over time.

    python3 bench/soak.py                          # 30 minutes
    python3 bench/soak.py --duration 120 --out /tmp/soak   # a short run
"""

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402

SECRET = "soak-secret-0123456789abcdef0123"
# Requests (or WebSocket sessions) per second, per class.
RATES = {"plain": 120, "jwt": 80, "limited": 80, "aggregate": 60, "async": 60,
         "websocket": 10, "pool": 80, "only_k": 20}
CLIENTS = 4


def ensure_python():
    try:
        import aiohttp  # noqa: F401
        import matplotlib  # noqa: F401
    except ImportError:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "aiohttp", "matplotlib"], check=True)


def token():
    b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()  # noqa: E731
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps({"sub": "soak", "exp": int(time.time()) + 7 * 86400}).encode())
    sig = hmac.new(SECRET.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(sig)}"


def config(ports, generation, broken=False):
    text = f"""[server]
listen = "127.0.0.1:{ports['gw']}"
watch = false
header_read_timeout = "5s"
idle_timeout = "20s"
[admin]
listen = "127.0.0.1:{ports['admin']}"
[store]
path = "{ports['work']}/soak.db"

[backends.steady]
urls = ["http://127.0.0.1:{ports['steady']}"]
[backends.pool]
urls = ["http://127.0.0.1:{ports['steady2']}", "http://127.0.0.1:{ports['killed']}"]
retries = 1
eject_after = 2
eject_for = "5s"
[backends.only_k]
urls = ["http://127.0.0.1:{ports['killed']}"]
retries = 0
[backends.ws]
urls = ["http://127.0.0.1:{ports['ws']}"]

[auth.soak]
type = "jwt"
algorithms = ["HS256"]
secret_env = "SOAK_SECRET"

[rate_limits.soak]
requests = 50
per = "1s"
key = "global"

[[routes]]
name = "plain"
path = "/plain"
backend = "steady"
response_headers = {{ set = {{ "x-soak-generation" = "{generation}" }} }}

[[routes]]
name = "jwt"
path = "/jwt"
backend = "steady"
auth = "soak"

[[routes]]
name = "limited"
path = "/limited"
backend = "steady"
rate_limit = ["soak"]

[[routes]]
name = "aggregate"
path = "/aggregate/{{id}}"
methods = ["GET"]
[routes.aggregate]
timeout = "2s"
[[routes.aggregate.calls]]
name = "a"
backend = "steady"
path = "/a/{{id}}"
[[routes.aggregate.calls]]
name = "b"
backend = "pool"
path = "/b/{{a.seg}}"

[[routes]]
name = "async"
path = "/async"
methods = ["POST"]
backend = "steady"
invoke = "async"
[routes.delivery]
result_ttl = "60s"               # finished jobs are swept after a minute: the store stays small

[[routes]]
name = "websocket"
path = "/ws"
backend = "ws"

[[routes]]
name = "pool"
path = "/pool"
backend = "pool"

[[routes]]
name = "only_k"
path = "/only-k"
backend = "only_k"
"""
    if broken:
        text += '\n[[routes]]\nname = "broken"\npath = "/broken"\nbackend = "nowhere"\n'
    return text


def write_config(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def metric(admin, pattern):
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5).read().decode()
    except OSError:
        return None
    return sum(float(m.group(1)) for m in re.finditer(pattern + r" ([\d.e+]+)$", text, re.M))


class Stats:
    def __init__(self):
        self.ok = dict.fromkeys(RATES, 0)
        self.failed = dict.fromkeys(RATES, 0)
        self.limited = 0
        self.reasons = {}
        self.accepted = 0

    def fail(self, cls, why):
        self.failed[cls] += 1
        key = f"{cls}: {why}"
        self.reasons[key] = self.reasons.get(key, 0) + 1


async def one(cls, session, base, auth, stats, n):
    import aiohttp
    if cls == "websocket":
        async with session.ws_connect(f"{base}/ws") as ws:
            for i in range(5):
                await ws.send_str(f"soak {n} {i}")
                msg = await ws.receive(timeout=10)
                if msg.type != aiohttp.WSMsgType.TEXT or msg.data != f"soak {n} {i}":
                    return f"echo {msg.type}"
        return None
    if cls == "async":
        async with session.post(f"{base}/async", data=b'{"n":%d}' % n) as r:
            await r.read()
            if r.status == 202:
                stats.accepted += 1
                return None
            return f"status {r.status}"
    path = {"plain": "/plain", "jwt": "/jwt", "limited": "/limited", "aggregate": f"/aggregate/{n % 100}",
            "pool": "/pool", "only_k": "/only-k"}[cls]
    headers = {"authorization": f"Bearer {auth}"} if cls == "jwt" else {}
    async with session.get(base + path, headers=headers) as r:
        await r.read()
        if cls == "limited" and r.status == 429:
            stats.limited += 1
            return None
        if r.status != 200:
            return f"status {r.status}"
        if cls == "aggregate" and r.headers.get("x-fngate-completed") != "true":
            return "incomplete aggregate"
    return None


async def client(cls, base, auth, stats, stop, interval):
    import aiohttp
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        n = 0
        next_at = time.monotonic()
        while not stop.is_set():
            n += 1
            try:
                why = await one(cls, session, base, auth, stats, n)
            except asyncio.TimeoutError:
                why = "timeout"
            except Exception as e:  # a connection error is a failed request
                why = type(e).__name__
            if why is None:
                stats.ok[cls] += 1
            else:
                stats.fail(cls, why)
            next_at += interval
            delay = next_at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                next_at = time.monotonic()


async def held(reader, writer, counts):
    """A connection left open mid-head: fngate must close it (header_read_timeout)."""
    started = time.monotonic()
    try:
        while await asyncio.wait_for(reader.read(4096), 60):
            pass
        counts["held_closed"] += 1
        counts["held_max_s"] = max(counts["held_max_s"], time.monotonic() - started)
    except (asyncio.TimeoutError, OSError):
        counts["held_not_closed"] += 1
    finally:
        writer.close()


async def abandoner(port, stop, counts, holders):
    """Opens connections and walks away from them, 20 a second: half a request
    head then a close, a whole request and a close before the answer, or (one
    in five) half a head and silence, the connection left open."""
    n = 0
    while not stop.is_set():
        n += 1
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            if n % 2 or n % 5 == 1:
                writer.write(b"GET /plain HTTP/1.1\r\nHost: soak\r\nx-half: ")
            else:
                writer.write(b"GET /plain HTTP/1.1\r\nHost: soak\r\n\r\n")
            await writer.drain()
            if n % 5 == 1:
                counts["held"] += 1
                holders.append(asyncio.create_task(held(reader, writer, counts)))
            else:
                writer.close()
                counts["abandoned"] += 1
        except OSError:
            counts["abandon_errors"] += 1
        await asyncio.sleep(0.05)


async def ws_backend(port):
    from aiohttp import web

    async def echo(request):
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            await ws.send_str(msg.data)
        return ws

    app = web.Application()
    app.router.add_get("/ws", echo)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await asyncio.Event().wait()


def nginx_steady(work, name, port):
    return run.start_nginx(work, name, "  server { listen 127.0.0.1:%d; location / { default_type application/json; "
                           "return 200 '{\"ok\":true,\"seg\":\"s1\"}\\n'; } }" % port)


async def soak(args, ports, procs, gw, cfg_path):
    stats = Stats()
    stop = asyncio.Event()
    counts = {"abandoned": 0, "abandon_errors": 0, "reloads": 0, "bad_reloads": 0, "kills": 0,
              "held": 0, "held_closed": 0, "held_not_closed": 0, "held_max_s": 0.0}
    holders = []
    base = f"http://127.0.0.1:{ports['gw']}"
    auth = token()
    tasks = [asyncio.create_task(client(cls, base, auth, stats, stop, CLIENTS / rate))
             for cls, rate in RATES.items() for _ in range(CLIENTS)]
    tasks.append(asyncio.create_task(abandoner(ports["gw"], stop, counts, holders)))
    samples = []
    started = time.monotonic()
    killed = {"proc": procs["killed"], "down_since": None}
    generation = 0
    last_reload = last_kill = started
    last_sample, last_total = started, 0
    while time.monotonic() - started < args.duration:
        await asyncio.sleep(0.5)
        now = time.monotonic()
        if now - last_reload >= 5:
            last_reload = now
            generation += 1
            broken = generation % 6 == 0
            write_config(cfg_path, config(ports, generation, broken))
            gw.send_signal(signal.SIGHUP)
            counts["bad_reloads" if broken else "reloads"] += 1
        if killed["down_since"] is None and now - last_kill >= 30:
            for pid in run.pids_of(killed["proc"].pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            killed["proc"].wait()
            killed["down_since"] = now
            counts["kills"] += 1
        elif killed["down_since"] is not None and now - killed["down_since"] >= 10:
            killed["proc"] = nginx_steady(ports["work"], "killed", ports["killed"])
            procs["killed"] = killed["proc"]
            killed["down_since"] = None
            last_kill = now
        if now - last_sample >= 5:
            total = sum(stats.ok.values()) + sum(stats.failed.values()) + stats.limited
            samples.append({
                "t": now - started,
                "rss_mib": run.rss_kib(gw.pid) / 1024,
                "fds": len(os.listdir(f"/proc/{gw.pid}/fd")),
                "conns": metric(ports["admin"], r"fngate_open_connections(?:\{[^}]*\})?"),
                "rps": (total - last_total) / (now - last_sample),
                "failed": sum(v for k, v in stats.failed.items() if k != "only_k"),
            })
            last_sample, last_total = now, total
            s = samples[-1]
            print(f"{s['t']:6.0f}s  {s['rps']:6.0f} req/s  rss {s['rss_mib']:6.1f} MiB  fds {s['fds']:4d}  "
                  f"conns {s['conns']}  failed {s['failed']}", file=sys.stderr, flush=True)
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.gather(*holders, return_exceptions=True)
    # Every accepted job delivered: what a 202 promised.
    deadline = time.monotonic() + 120
    delivered = 0
    while time.monotonic() < deadline:
        delivered = metric(ports["admin"], r'fngate_jobs_total\{route="async",outcome="succeeded"\}') or 0
        if delivered >= stats.accepted:
            break
        await asyncio.sleep(0.5)
    # Abandoned connections time out (header_read_timeout 5 s, idle_timeout 20 s).
    await asyncio.sleep(25)
    end = {"rss_mib": run.rss_kib(gw.pid) / 1024, "fds": len(os.listdir(f"/proc/{gw.pid}/fd")),
           "conns": metric(ports["admin"], r"fngate_open_connections(?:\{[^}]*\})?")}
    reload_ok = metric(ports["admin"], r'fngate_config_reloads_total\{result="ok"\}')
    reload_err = metric(ports["admin"], r'fngate_config_reloads_total\{result="error"\}')
    return stats, counts, samples, end, delivered, reload_ok, reload_err


def plot(samples, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    t = [s["t"] / 60 for s in samples]
    fig, (ax1, ax3) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    ax1.plot(t, [s["rss_mib"] for s in samples], color="tab:blue", label="RSS (MiB)")
    ax1.set_ylabel("RSS (MiB)", color="tab:blue")
    ax1.set_ylim(bottom=0)
    ax2 = ax1.twinx()
    ax2.plot(t, [s["rps"] for s in samples], color="tab:orange", label="req/s", linewidth=0.8)
    ax2.set_ylabel("req/s", color="tab:orange")
    ax2.set_ylim(0, 1.3 * max(s["rps"] for s in samples))
    ax1.set_title("fngate soak: mixed load, reloads every 5 s, an endpoint killed every 30 s")
    ax3.plot(t, [s["fds"] for s in samples], label="open fds")
    ax3.plot(t, [s["conns"] or 0 for s in samples], label="open connections")
    ax3.set_ylabel("count")
    ax3.set_xlabel("minutes")
    ax3.set_ylim(bottom=0)
    ax3.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=1800, help="seconds of load (default 1800)")
    ap.add_argument("--out", default=os.path.join(run.ROOT, "bench"), help="where soak-results.md and soak.png go")
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--ws-backend", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.ws_backend:
        asyncio.run(ws_backend(args.ws_backend))
        return
    run.ensure_tools()
    ensure_python()
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=run.ROOT, check=True)
    work = tempfile.mkdtemp(prefix="fngate-soak-", dir=os.environ.get("BENCH_DIR", "/var/tmp"))
    ports = {k: run.free_port() for k in ("gw", "admin", "steady", "steady2", "killed", "ws")}
    ports["work"] = work
    procs = {}
    gw = None
    try:
        procs["steady"] = nginx_steady(work, "steady", ports["steady"])
        procs["steady2"] = nginx_steady(work, "steady2", ports["steady2"])
        procs["killed"] = nginx_steady(work, "killed", ports["killed"])
        procs["ws"] = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--ws-backend", str(ports["ws"])])
        for k in ("steady", "steady2", "killed", "ws"):
            run.wait_port(ports[k])
        cfg_path = os.path.join(work, "routes.toml")
        write_config(cfg_path, config(ports, 0))
        gw = subprocess.Popen([os.path.join(run.ROOT, "target/release/fngate"), "--config", cfg_path],
                              env=dict(os.environ, RUST_LOG="warn", SOAK_SECRET=SECRET), stdout=subprocess.DEVNULL)
        run.wait_port(ports["gw"])
        run.wait_port(ports["admin"])
        stats, counts, samples, end, delivered, reload_ok, reload_err = asyncio.run(
            soak(args, ports, procs, gw, cfg_path))
        alive = gw.poll() is None
    finally:
        run.stop([p for p in [gw, *procs.values()] if p is not None])
        shutil.rmtree(work, ignore_errors=True)

    warm = [s for s in samples if s["t"] >= max(60, args.duration * 0.1)] or samples
    first, last = warm[: max(1, len(warm) // 4)], warm[-max(1, len(warm) // 4):]
    med = lambda xs, k: statistics.median(x[k] for x in xs)  # noqa: E731
    failed = sum(v for k, v in stats.failed.items() if k != "only_k")
    rows = "\n".join(f"| {cls} | {RATES[cls]} | {stats.ok[cls]} | {stats.failed[cls]} |" for cls in RATES)
    reasons = "\n".join(f"- {k}: {v}" for k, v in sorted(stats.reasons.items())) or "- none"
    report = f"""# Soak: {args.duration / 60:.0f} minutes

`python3 bench/soak.py --duration {args.duration}` on {time.strftime('%Y-%m-%d')}, fngate release build, 2 workers.

| class | target /s | answered as expected | failed |
|---|---:|---:|---:|
{rows}

- **Failed requests not caused by the killed endpoint: {failed}** (the `only_k` route, served by
  the killed endpoint alone, failed {stats.failed['only_k']} times over {counts['kills']} kills).
- Of the `limited` answers, {stats.limited} were 429 (the limit is 50/s, the load 80/s). Async jobs accepted {stats.accepted},
  delivered {delivered:.0f}.
- Reloads: {counts['reloads']} good and {counts['bad_reloads']} broken configs sent; fngate counted
  {reload_ok:.0f} ok and {reload_err:.0f} refused.
- Abandoned connections: {counts['abandoned']} closed by the client mid-head or before the answer;
  {counts['held']} left open mid-head, of which fngate closed {counts['held_closed']} (the slowest after
  {counts['held_max_s']:.1f} s; header_read_timeout is 5 s) and {counts['held_not_closed']} were still open after 60 s.
- After warm-up, first quarter → last quarter (medians): RSS {med(first, 'rss_mib'):.1f} →
  {med(last, 'rss_mib'):.1f} MiB; open fds {med(first, 'fds'):.0f} → {med(last, 'fds'):.0f};
  {med(first, 'rps'):.0f} → {med(last, 'rps'):.0f} req/s. Peak RSS {max(s['rss_mib'] for s in samples):.1f} MiB.
- At the end, 25 s after the load stopped: RSS {end['rss_mib']:.1f} MiB, {end['fds']} fds,
  {end['conns']:.0f} open connections. fngate {'still running' if alive else 'DIED'}.

Failure reasons:
{reasons}

![RSS, req/s, fds and connections over time](soak.png)
"""
    os.makedirs(args.out, exist_ok=True)
    plot(samples, os.path.join(args.out, "soak.png"))
    with open(os.path.join(args.out, "soak-results.md"), "w") as f:
        f.write(report)
    print(report)
    sys.exit(0 if failed == 0 and alive and delivered >= stats.accepted and counts["held_not_closed"] == 0 else 1)


if __name__ == "__main__":
    main()
