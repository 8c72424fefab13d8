#!/usr/bin/env python3
"""Events: durable publishes with two subscriptions against a synchronous
route, and delivery latency from publish to subscriber, in one run.

1. Throughput, interleaved round by round: `POST /sync` (forwarded to an
   nginx backend) and `POST /events/orders` (a binary-mode CloudEvent, a new
   id per request; two subscriptions, so two deliveries made durable per 202)
   with wrk -t1 at the same connection count; then the wait until every
   delivery of the round has reached nginx. Reports req/s, p99, the ratio and
   deliveries per second end to end.
2. Latency: events published one at a time at a steady rate to a topic whose
   subscriber (a Python server on loopback) notes when each arrives; p50 and
   p99 of arrival minus publish.

    python3 bench/events.py               # 3 rounds x 64 connections x 5 s; 500 events at 100/s
"""

import argparse
import http.client
import http.server
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402

PUBLISH_LUA = """
n = 0
request = function()
  n = n + 1
  return wrk.format("POST", "/events/orders", {
    ["ce-specversion"] = "1.0", ["ce-id"] = "e" .. n, ["ce-source"] = "/bench",
    ["ce-type"] = "com.example.order.created", ["content-type"] = "application/json",
  }, '{"order":17}')
end
"""
SYNC_LUA = 'wrk.method = "POST"\nwrk.body = "{\\"order\\":17}"\nwrk.headers["content-type"] = "application/json"\n'


class Subscriber(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    arrivals = {}

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        Subscriber.arrivals[self.headers["ce-id"]] = time.perf_counter()
        del body
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--conns", type=int, default=64)
    ap.add_argument("--events", type=int, default=500, help="events of the latency phase")
    ap.add_argument("--rate", type=int, default=100, help="events per second in the latency phase")
    ap.add_argument("--no-build", action="store_true")
    args = ap.parse_args()
    run.ensure_tools()
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=run.ROOT, check=True)
    work = tempfile.mkdtemp(prefix="fngate-events-", dir=os.environ.get("BENCH_DIR", "/var/tmp"))
    backend, port, admin = (run.free_port() for _ in range(3))
    sub = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Subscriber)
    threading.Thread(target=sub.serve_forever, daemon=True).start()
    luas = {}
    for name, text in (("publish", PUBLISH_LUA), ("sync", SYNC_LUA)):
        luas[name] = os.path.join(work, f"{name}.lua")
        with open(luas[name], "w") as f:
            f.write(text)
    procs = []
    results = {}
    latencies = []
    try:
        procs.append(run.start_nginx(work, "backend", "  server { listen 127.0.0.1:%d; location / { return 200 '{\"ok\":true}\\n'; } }" % backend))
        procs.append(run.start_fngate(
            work, port, admin,
            '[backends.fn]\nurls = ["http://127.0.0.1:%d"]\n'
            '[backends.timer]\nurls = ["http://127.0.0.1:%d"]\n'
            '[[routes]]\nname = "sync"\npath = "/sync"\nbackend = "fn"\n'
            '[topics.orders]\n[topics.timed]\n'
            '[[subscriptions]]\nname = "billing"\ntopic = "orders"\nbackend = "fn"\npath = "/billing"\n'
            '[subscriptions.delivery]\nconcurrency = 64\n'
            '[[subscriptions]]\nname = "audit"\ntopic = "orders"\nbackend = "fn"\npath = "/audit"\nformat = "structured"\n'
            '[subscriptions.delivery]\nconcurrency = 64\n'
            '[[subscriptions]]\nname = "timer"\ntopic = "timed"\nbackend = "timer"\npath = "/t"\n'
            % (backend, sub.server_address[1])))
        run.wait_port(backend)
        for rnd in range(args.rounds):
            for name in ("sync", "publish"):
                path = "/sync" if name == "sync" else "/events/orders"
                before = run.counter(admin, "deliveries", "subscription", "[a-z]+", "succeeded")
                started = time.monotonic()
                cmd = ["wrk", "-t1", f"-c{args.conns}", f"-d{args.duration}s", "--latency", "-s", luas[name],
                       f"http://127.0.0.1:{port}{path}"]
                r = run.parse_wrk(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
                if name == "publish":
                    # Every accepted event has two deliveries (ids are new each request, within each round).
                    wanted = 2 * run.counter(admin, "events", "topic", "orders", "accepted")
                    deadline = time.monotonic() + 300
                    while run.counter(admin, "deliveries", "subscription", "[a-z]+", "succeeded") < wanted:
                        if time.monotonic() > deadline:
                            sys.exit("deliveries did not finish within 300 s")
                        time.sleep(0.05)
                    delivered = run.counter(admin, "deliveries", "subscription", "[a-z]+", "succeeded") - before
                    r["deliveries_s"] = delivered / (time.monotonic() - started)
                results.setdefault(name, []).append(r)
                extra = f"  {r['deliveries_s']:.0f} deliveries/s end to end" if name == "publish" else ""
                print(f"round {rnd + 1} {name:<7} {r['rps']:>8.0f} req/s  p99 {r['p99']:.3f} ms  non-2xx {r['non2xx']}{extra}",
                      file=sys.stderr, flush=True)
            # The next round's ids repeat this one's: a new source keeps them new.
            with open(luas["publish"], "w") as f:
                f.write(PUBLISH_LUA.replace("/bench", f"/bench/{rnd + 1}"))

        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        published = {}
        gap = 1.0 / args.rate
        next_at = time.perf_counter()
        for i in range(args.events):
            eid = f"t{i}"
            published[eid] = time.perf_counter()
            conn.request("POST", "/events/timed", body=b"{}", headers={
                "ce-specversion": "1.0", "ce-id": eid, "ce-source": "/latency", "ce-type": "tick",
                "content-type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            if resp.status != 202:
                sys.exit(f"publish answered {resp.status}")
            next_at += gap
            time.sleep(max(0.0, next_at - time.perf_counter()))
        deadline = time.monotonic() + 30
        while len(Subscriber.arrivals) < args.events and time.monotonic() < deadline:
            time.sleep(0.05)
        latencies = sorted((Subscriber.arrivals[e] - t) * 1000 for e, t in published.items() if e in Subscriber.arrivals)
    finally:
        run.stop(procs)
        sub.shutdown()
        shutil.rmtree(work, ignore_errors=True)

    med = lambda name, key: statistics.median(r[key] for r in results[name])  # noqa: E731
    sync, pub = med("sync", "rps"), med("publish", "rps")
    print(f"\nfngate, wrk -t1 -c{args.conns}, {args.duration}s runs, medians of {args.rounds} interleaved rounds\n")
    print("| request | req/s | p99 ms | vs sync | deliveries/s end to end |")
    print("|---|---:|---:|---:|---:|")
    print(f"| POST /sync (forwarded, the client waits) | {sync:.0f} | {med('sync', 'p99'):.3f} | 1.00× | — |")
    print(f"| POST /events/orders (2 subscriptions, durable before 202) | {pub:.0f} | {med('publish', 'p99'):.3f} | {pub / sync:.2f}× | {med('publish', 'deliveries_s'):.0f} |")
    print(f"\nnon-2xx answers: sync {sum(r['non2xx'] for r in results['sync'])}, publish {sum(r['non2xx'] for r in results['publish'])}")
    if latencies:
        q = lambda p: latencies[min(len(latencies) - 1, int(p * len(latencies)))]  # noqa: E731
        print(f"\npublish to subscriber, {len(latencies)} of {args.events} events at {args.rate}/s: "
              f"p50 {q(0.5):.2f} ms, p99 {q(0.99):.2f} ms, max {latencies[-1]:.2f} ms")


if __name__ == "__main__":
    main()
