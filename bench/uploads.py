#!/usr/bin/env python3
"""A large upload streamed through fngate with its RSS sampled: the body goes
to disk frame by frame, so memory stays flat whatever the size.

fngate (workers = 1, the store and the upload directory in a temporary
directory) takes `curl -T FILE` (a streamed PUT) of a file of random bytes;
every 50 ms the gateway's RSS is read from /proc. Reports the throughput,
RSS before, at peak and after, and checks the SHA-256 fngate answered.

    python3 bench/uploads.py              # 1 GiB
    python3 bench/uploads.py --mib 256
"""

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mib", type=int, default=1024)
    ap.add_argument("--no-build", action="store_true")
    args = ap.parse_args()
    run.ensure_tools({"curl": "curl"})
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=run.ROOT, check=True)
    work = tempfile.mkdtemp(prefix="fngate-uploads-", dir=os.environ.get("BENCH_DIR", "/var/tmp"))
    port, admin, sink = (run.free_port() for _ in range(3))
    procs = []
    try:
        src = os.path.join(work, "source.bin")
        digest = hashlib.sha256()
        with open(src, "wb") as f:
            block = os.urandom(1 << 20)
            for i in range(args.mib):
                # A different MiB each time, cheaply: the index in front.
                chunk = i.to_bytes(8, "little") + block[8:]
                digest.update(chunk)
                f.write(chunk)
        procs.append(run.start_nginx(work, "sink", "  server { listen 127.0.0.1:%d; location / { return 200; } }" % sink))
        gw = run.start_fngate(work, port, admin,
                              '[backends.sink]\nurls = ["http://127.0.0.1:%d"]\n[topics.files]\n'
                              '[[subscriptions]]\nname = "s"\ntopic = "files"\nbackend = "sink"\n'
                              '[[routes]]\nname = "up"\npath = "/uploads/{*key}"\nmethods = ["PUT"]\n'
                              'upload = { topic = "files", dir = "%s/files", max_upload = "%dMiB" }\n'
                              % (sink, work, args.mib + 1))
        procs.append(gw)
        before = run.rss_kib(gw.pid)
        samples = []
        done = threading.Event()

        def sample():
            while not done.is_set():
                samples.append(run.rss_kib(gw.pid))
                time.sleep(0.05)

        t = threading.Thread(target=sample, daemon=True)
        t.start()
        started = time.monotonic()
        out = subprocess.run(["curl", "-s", "-T", src, "-H", "content-type: application/octet-stream",
                              f"http://127.0.0.1:{port}/uploads/big.bin"], capture_output=True, text=True, check=True)
        elapsed = time.monotonic() - started
        done.set()
        t.join()
        after = run.rss_kib(gw.pid)
        answer = json.loads(out.stdout)
        ok = answer.get("sha256") == digest.hexdigest() and answer.get("size") == args.mib << 20
    finally:
        run.stop(procs)
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nfngate, one streamed PUT of {args.mib} MiB (curl -T), RSS sampled every 50 ms\n")
    print("| size | time s | MiB/s | RSS before | RSS peak | RSS after | SHA-256 |")
    print("|---:|---:|---:|---:|---:|---:|---|")
    print(f"| {args.mib} MiB | {elapsed:.1f} | {args.mib / elapsed:.0f} | {before / 1024:.1f} MiB | "
          f"{max(samples) / 1024:.1f} MiB | {after / 1024:.1f} MiB | {'matches' if ok else 'WRONG: ' + out.stdout} |")
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
